"""Help, version and the top-level usage errors: all answered without loading a model."""

from __future__ import annotations

import re

import pytest

from modernbert_cli import __version__
from modernbert_cli.errors import ExitStatus

COMMANDS = {
    "embed": "Embed texts: one vector per text, as a table, JSON lines, CSV/TSV or .npy.",
    "similar": "Rank texts by similarity to a query: the best matches first.",
    "matrix": "Score texts against each other: an N×N matrix, N×M with --against, or pairs.",
}


# Nothing here may load a model.
pytestmark = pytest.mark.usefixtures("no_model")


def lines(text: str) -> list[str]:
    """The help's lines without Rich's box drawing, stripped."""
    return [re.sub(r"[│╭╮╰╯─]", " ", line).strip() for line in text.splitlines()]


def flat(text: str) -> str:
    """The help as one line: wrapped cells joined back together."""
    return " ".join(" ".join(lines(text)).split())


def paragraphs(text: list[str]) -> list[str]:
    """Blocks of lines between blank lines, each joined into one line (undoing the wrap)."""
    blocks = "\n".join(text).split("\n\n")
    return [" ".join(block.split()) for block in blocks if block.strip()]


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_help(cli, command: str, flag: str) -> None:
    result = cli(command, flag)
    assert result.code == 0, result.stderr
    assert result.stderr == ""
    text = lines(result.stdout)
    usage = next(i for i, line in enumerate(text) if line.startswith("Usage:"))
    assert text[usage].startswith(f"Usage: modernbert-cli {command} ")
    # The description: one line, right after the usage line.
    rest = text[usage + 1 :]
    first = next(i for i, line in enumerate(rest) if line)
    assert rest[first] == COMMANDS[command]
    assert rest[first + 1] == ""
    # An Examples section at the end, each example a command line of this command.
    assert text.count("Examples:") == 1
    examples = paragraphs(text[text.index("Examples:") + 1 :])
    assert len(examples) >= 2
    assert all(f"modernbert-cli {command}" in line for line in examples), examples
    assert examples[0].startswith(f"modernbert-cli {command} ")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_help_lists_the_shared_options(cli, command: str) -> None:
    help_text = flat(cli(command, "--help").stdout)
    for option in ("--model", "-m", "--device", "--trust-remote-code", "--quiet", "-q"):
        assert f" {option} " in f" {help_text} ", option
    assert "MODERNBERT_CLI_MODEL" in help_text
    assert "[default: joe32140/ModernBERT-base-msmarco]" in help_text
    assert "modernbert-base" in help_text
    assert "modernbert-large" in help_text
    assert "minilm" in help_text


@pytest.mark.parametrize(
    ("command", "defaults"),
    [
        ("embed", ["Output format [default: table on a terminal, jsonl when piped]."]),
        (
            "similar",
            [
                "Output format [default: table on a terminal, jsonl when piped].",
                "Similarity function [default: the model's own, usually cosine].",
            ],
        ),
        (
            "matrix",
            [
                "Output format [default: table on a terminal; csv when piped, tsv with "
                "--pairwise].",
                "Similarity function [default: the model's own, usually cosine].",
            ],
        ),
    ],
)
def test_defaults_written_in_help_text_are_shown(
    cli, monkeypatch: pytest.MonkeyPatch, command: str, defaults: list[str]
) -> None:
    """ "[default: …]" in a help string is text, not Rich markup to be swallowed."""
    monkeypatch.setenv("COLUMNS", "250")  # no wrapping: each option on one line
    help_text = flat(cli(command, "--help").stdout)
    for default in [*defaults, "JSON-lines field holding the text [default: text]."]:
        assert default in help_text


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_top_level_help_lists_the_commands(cli, flag: str) -> None:
    result = cli(flag)
    assert result.code == 0, result.stderr
    assert result.stderr == ""
    text = lines(result.stdout)
    assert text[next(i for i, line in enumerate(text) if line)].startswith(
        "Usage: modernbert-cli [OPTIONS] COMMAND [ARGS]..."
    )
    commands = text[text.index("Commands") + 1 :]
    for command, description in COMMANDS.items():
        assert f"{command} {description}" in [" ".join(line.split()) for line in commands]
    assert "--version" in result.stdout
    assert "Examples:" in text


def test_version(cli) -> None:
    result = cli("--version")
    assert result.code == 0
    assert result.stdout == f"modernbert-cli {__version__}\n"
    assert result.stderr == ""


def test_version_wins_over_a_command(cli) -> None:
    result = cli("--version", "embed", "hello")
    assert result.code == 0
    assert result.stdout == f"modernbert-cli {__version__}\n"


def test_no_arguments_shows_help_and_exits_2(cli) -> None:
    """As click (>= 8.2) does for no_args_is_help: the help, and the usage exit code 2."""
    result = cli()
    assert result.code == ExitStatus.USAGE == 2
    text = lines(result.stdout)
    assert any(line.startswith("Usage: modernbert-cli [OPTIONS] COMMAND") for line in text)
    for command in COMMANDS:
        assert any(line.startswith(f"{command} ") for line in text)
    assert result.stderr == ""  # no empty "error:" line after the help


def test_unknown_command(cli) -> None:
    result = cli("frobnicate", "hello")
    assert result.code == ExitStatus.USAGE
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("modernbert-cli: error: ")
    assert "frobnicate" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", list(COMMANDS))
def test_unknown_option(cli, command: str) -> None:
    result = cli(command, "--frobnicate", "hello")
    assert result.code == ExitStatus.USAGE
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("modernbert-cli: error: ")
    assert "--frobnicate" in result.stderr
    assert f"modernbert-cli {command} --help" in result.stderr
