"""Reading texts: arguments, -i FILE, stdin, JSON lines, CSV/TSV, --documents, and every
way input can be wrong (one line naming the file and line, exit 3, no model loaded)."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_error

from modernbert_cli import inputs
from modernbert_cli.errors import ExitStatus, InputError, UsageError
from modernbert_cli.inputs import InputSpec, Stdin, Text, read_texts

HOW = ("argument", "file", "stdin")


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture
def embed(cli, tiny_model):
    """Run `embed` with the tiny model; returns (records, result) and checks success."""

    def run(*args: str, input: str | bytes | None = None):
        result = cli("embed", "-m", tiny_model, *args, input=input)
        assert result.code == ExitStatus.OK, result.stderr
        records = [json.loads(line) for line in result.stdout.splitlines()]
        return records, result

    return run


@pytest.fixture
def fails(cli, tiny_model, no_model):
    """Run `embed` expecting a one-line error; returns stderr."""

    def run(*args: str, input: str | bytes | None = None, status=ExitStatus.INPUT) -> str:
        result = cli("embed", "-m", tiny_model, *args, input=input)
        assert result.code == status, result.stderr
        assert result.stdout == ""
        assert_one_line_error(result.stderr)
        return result.stderr

    return run


def assert_one_line_error(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert "model loaded" not in stderr
    assert "internal error" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "error:" in stderr


def given(how: str, lines: list[str], tmp_path: Path) -> tuple[list[str], str | None, str]:
    """CLI arguments and stdin that give ``lines`` as arguments, a file or stdin.

    Returns (args, stdin, source prefix).
    """
    if how == "argument":
        return list(lines), None, "<arg>"
    text = "".join(line + "\n" for line in lines)
    if how == "file":
        path = tmp_path / "texts.txt"
        path.write_text(text, encoding="utf-8")
        return ["-i", str(path)], None, str(path)
    return [], text, "<stdin>"


def pairs(records: list[dict]) -> list[tuple[str, str]]:
    return [(r["text"], r["source"]) for r in records]


def read(spec: InputSpec, stdin: bytes | None = None) -> list[tuple[str, str]]:
    """``read_texts`` directly, stdin piped when given."""
    pipe = Stdin(io.BytesIO(stdin), is_tty=False) if stdin is not None else None
    return [(t.text, t.source) for t in read_texts(spec, pipe).texts]


# --- texts from arguments, files and stdin -----------------------------------------------


@pytest.mark.parametrize("how", HOW)
def test_each_text_keeps_its_source(embed, tmp_path, how):
    args, stdin, prefix = given(how, ["a cat sat", "a dog ran", "the sea"], tmp_path)
    records, result = embed(*args, input=stdin)
    assert pairs(records) == [
        ("a cat sat", f"{prefix}:1"),
        ("a dog ran", f"{prefix}:2"),
        ("the sea", f"{prefix}:3"),
    ]
    assert result.stderr == ""


@pytest.mark.parametrize("how", HOW)
def test_non_ascii_text_round_trips(embed, tmp_path, how):
    args, stdin, _ = given(how, ["café crème", "日本語のテキスト", "emoji 🐝"], tmp_path)
    records, _ = embed(*args, input=stdin)
    assert [r["text"] for r in records] == ["café crème", "日本語のテキスト", "emoji 🐝"]


@pytest.mark.parametrize("how", ("file", "stdin"))
def test_blank_lines_are_skipped_and_line_numbers_kept(embed, tmp_path, how):
    args, stdin, prefix = given(how, ["", "first", "   ", "", "\tsecond  ", ""], tmp_path)
    records, _ = embed(*args, input=stdin)
    assert pairs(records) == [("first", f"{prefix}:2"), ("second", f"{prefix}:5")]


@pytest.mark.parametrize("how", ("file", "stdin"))
def test_crlf_and_bom_are_handled(embed, tmp_path, how):
    data = "\ufeffone\r\n\r\ntwo\r\nthree".encode()
    if how == "file":
        path = tmp_path / "windows.txt"
        path.write_bytes(data)
        records, _ = embed("-i", str(path))
        prefix = str(path)
    else:
        records, _ = embed(input=data)
        prefix = "<stdin>"
    assert pairs(records) == [
        ("one", f"{prefix}:1"),
        ("two", f"{prefix}:3"),
        ("three", f"{prefix}:4"),
    ]
    assert all("\r" not in r["text"] and "\ufeff" not in r["text"] for r in records)


def test_input_option_is_repeatable_and_keeps_order(embed, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("a1\na2\n")
    b.write_text("b1\n")
    records, _ = embed("-i", str(b), "--input", str(a))
    assert pairs(records) == [("b1", f"{b}:1"), ("a1", f"{a}:1"), ("a2", f"{a}:2")]


def test_arguments_and_files_together(embed, tmp_path):
    path = tmp_path / "more.txt"
    path.write_text("from the file\n")
    records, _ = embed("first", "second", "-i", str(path))
    assert pairs(records) == [
        ("first", "<arg>:1"),
        ("second", "<arg>:2"),
        ("from the file", f"{path}:1"),
    ]


def test_dash_argument_reads_stdin_in_place(embed):
    records, _ = embed("before", "-", "after", input="x\n\ny\n")
    assert pairs(records) == [
        ("before", "<arg>:1"),
        ("x", "<stdin>:1"),
        ("y", "<stdin>:3"),
        ("after", "<arg>:3"),
    ]


def test_dash_input_reads_stdin(embed, tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("file text\n")
    records, _ = embed("-i", "-", "-i", str(path), input="piped text\n")
    assert pairs(records) == [("piped text", "<stdin>:1"), ("file text", f"{path}:1")]


def test_piped_stdin_is_ignored_when_texts_are_given(embed):
    records, _ = embed("only this", input="not this\n")
    assert pairs(records) == [("only this", "<arg>:1")]


def test_stdin_cannot_be_read_twice(fails):
    stderr = fails("-i", "-", "-", input="x\n", status=ExitStatus.USAGE)
    assert "stdin" in stderr


# --- JSON lines --------------------------------------------------------------------------


def test_jsonl_default_field_and_plain_strings(embed, tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(
        '{"id": 1, "text": "first record"}\n'
        "\n"
        '"a bare JSON string"\n'
        '{"text": "  padded  ", "other": 3}\n'
    )
    records, _ = embed("-i", str(path))
    assert pairs(records) == [
        ("first record", f"{path}:1"),
        ("a bare JSON string", f"{path}:3"),
        ("padded", f"{path}:4"),
    ]


def test_jsonl_field_option(embed, tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "no", "body": "yes one"}\n{"body": "yes two"}\n')
    records, _ = embed("-i", str(path), "--field", "body")
    assert pairs(records) == [("yes one", f"{path}:1"), ("yes two", f"{path}:2")]


def test_jsonl_with_crlf_and_bom(tmp_path):
    path = tmp_path / "win.jsonl"
    path.write_bytes('\ufeff{"text": "one"}\r\n\r\n{"text": "two"}\r\n'.encode())
    assert read(InputSpec(files=[str(path)])) == [("one", f"{path}:1"), ("two", f"{path}:3")]


def test_ndjson_suffix_is_json_lines(tmp_path):
    path = tmp_path / "x.ndjson"
    path.write_text('{"text": "one"}\n')
    assert read(InputSpec(files=[str(path)])) == [("one", f"{path}:1")]


def test_stdin_with_field_is_json_lines(embed):
    records, _ = embed("--field", "q", input='{"q": "from stdin"}\n{"q": "again"}\n')
    assert pairs(records) == [("from stdin", "<stdin>:1"), ("again", "<stdin>:2")]


# --- CSV / TSV ---------------------------------------------------------------------------


def test_csv_picks_the_text_column(embed, tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('id,text,label\n1,"hello, world",a\n\n2,"say ""hi""",b\n')
    records, _ = embed("-i", str(path))
    assert pairs(records) == [("hello, world", f"{path}:2"), ('say "hi"', f"{path}:4")]


def test_csv_with_one_column_needs_no_option(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("sentence\nalpha\nbeta\n")
    assert read(InputSpec(files=[str(path)])) == [("alpha", f"{path}:2"), ("beta", f"{path}:3")]


@pytest.mark.parametrize("column", ["label", "3"])
def test_csv_column_by_name_or_one_based_index(embed, tmp_path, column):
    path = tmp_path / "data.csv"
    path.write_text("id,text,label\n1,hello,first label\n2,bye,second label\n")
    records, _ = embed("-i", str(path), "--column", column)
    assert pairs(records) == [("first label", f"{path}:2"), ("second label", f"{path}:3")]


def test_csv_column_index_one_is_the_first_column(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\nleft,right\n")
    assert read(InputSpec(files=[str(path)], column="1")) == [("left", f"{path}:2")]


def test_tsv_column(embed, tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("id\tbody\n1\tfirst, with a comma\n2\tsecond\n")
    records, _ = embed("-i", str(path), "--column", "body")
    assert pairs(records) == [("first, with a comma", f"{path}:2"), ("second", f"{path}:3")]


def test_csv_with_crlf_and_bom(tmp_path):
    path = tmp_path / "win.csv"
    path.write_bytes("\ufefftext,id\r\none,1\r\n\r\ntwo,2\r\n".encode())
    assert read(InputSpec(files=[str(path)])) == [("one", f"{path}:2"), ("two", f"{path}:4")]


def test_csv_multiline_record_points_at_its_first_line(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text('text\n"two\nlines"\nafter\n')
    assert read(InputSpec(files=[str(path)])) == [
        ("two\nlines", f"{path}:2"),
        ("after", f"{path}:4"),
    ]


@pytest.mark.parametrize(
    ("data", "column"),
    [("id,text\n1,from csv\n", "text"), ("id\ttext\n1\tfrom csv\n", "2")],
    ids=["csv", "tsv"],
)
def test_stdin_with_column_is_a_table(embed, data, column):
    records, _ = embed("--column", column, input=data)
    assert pairs(records) == [("from csv", "<stdin>:2")]


# --- --documents -------------------------------------------------------------------------


def test_documents_each_file_is_one_text(embed, tmp_path):
    a, b = tmp_path / "a.md", tmp_path / "b.txt"
    a.write_text("# Title\n\nFirst paragraph.\nSecond line.\n")
    b.write_text("\ufeffjust one line\r\n")
    records, result = embed("--documents", "-i", str(a), "-i", str(b))
    assert pairs(records) == [
        ("# Title\n\nFirst paragraph.\nSecond line.", str(a)),
        ("just one line", str(b)),
    ]
    assert result.stderr == ""


def test_documents_from_stdin_is_one_text(embed):
    records, _ = embed("--documents", input="line one\nline two\n")
    assert pairs(records) == [("line one\nline two", "<stdin>")]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """notes/: two text files, one in a subfolder, one binary file, one hidden folder."""
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "bees.md").write_text("Bees make honey.\nThey dance.\n")
    (root / "sub" / "tides.txt").write_text("The moon pulls the tides.\n")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


def test_documents_folder_reads_every_text_file(embed, folder, monkeypatch):
    monkeypatch.chdir(folder.parent)
    records, result = embed("--documents", "-i", "notes")
    assert pairs(records) == [
        ("Bees make honey.\nThey dance.", os.path.join("notes", "bees.md")),
        ("The moon pulls the tides.", os.path.join("notes", "sub", "tides.txt")),
    ]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "skipped 2" in result.stderr
    assert "1 binary" in result.stderr
    assert "1 hidden folder" in result.stderr


def test_documents_folder_skipped_note_is_silenced_by_quiet(embed, folder):
    records, result = embed("--documents", "-q", "-i", str(folder))
    assert len(records) == 2
    assert result.stderr == ""


def test_documents_folder_and_file_together(embed, folder, tmp_path):
    extra = tmp_path / "extra.txt"
    extra.write_text("an extra document\n")
    records, _ = embed("--documents", "-i", str(extra), "-i", str(folder))
    assert [r["source"] for r in records] == [
        str(extra),
        str(folder / "bees.md"),
        str(folder / "sub" / "tides.txt"),
    ]


@pytest.mark.parametrize("work_tree", [True, False], ids=["git", "plain"])
def test_documents_folder_honours_gitignore_in_a_work_tree(embed, tmp_path, work_tree):
    """As ripgrep: .gitignore counts inside a git work tree; elsewhere it is a hidden file."""
    root = tmp_path / "repo"
    (root / "build").mkdir(parents=True)
    if work_tree:
        (root / ".git").mkdir()
    (root / ".gitignore").write_text("build/\n*.log\n")
    (root / "keep.md").write_text("kept\n")
    (root / "debug.log").write_text("a log\n")
    (root / "build" / "out.txt").write_text("built\n")
    records, result = embed("--documents", "-i", str(root))
    sources = [r["source"] for r in records]
    if work_tree:
        assert sources == [str(root / "keep.md")]
        assert "2 ignored by .gitignore" in result.stderr
    else:
        assert sources == [str(root / n) for n in ("debug.log", "keep.md", "build/out.txt")]
        assert "ignored" not in result.stderr


def test_documents_folder_skips_symbolic_links(embed, tmp_path):
    """A link is not followed (as ripgrep without -L): it may loop or leave the folder."""
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside.txt").write_text("outside the folder\n")
    (root / "a.md").write_text("inside\n")
    (root / "link.md").symlink_to(tmp_path / "outside.txt")
    (root / "loop").symlink_to(root, target_is_directory=True)
    records, result = embed("--documents", "-i", str(root))
    assert [r["source"] for r in records] == [str(root / "a.md")]
    assert "2 symbolic link" in result.stderr


def test_folder_without_documents_is_an_input_error(fails, folder):
    stderr = fails("-i", str(folder))
    assert str(folder) in stderr
    assert "directory" in stderr
    assert "--documents" in stderr


def test_documents_folder_with_no_text_files_is_an_input_error(fails, tmp_path):
    root = tmp_path / "blobs"
    root.mkdir()
    (root / "a.bin").write_bytes(b"\x00\x01")
    stderr = fails("--documents", "-i", str(root))
    assert str(root) in stderr


# --- input errors: one line, the file (and line), exit 3, no model -------------------------


def test_missing_file(fails, tmp_path):
    path = tmp_path / "nope.txt"
    stderr = fails("-i", str(path))
    assert f"{path}: no such file" in stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_unreadable_file(fails, tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("hidden\n")
    path.chmod(0)
    try:
        stderr = fails("-i", str(path))
    finally:
        path.chmod(0o644)
    assert f"{path}: permission denied" in stderr


def test_unreadable_file_simulated(fails, tmp_path, monkeypatch):
    """The same error path as chmod 000, also when the tests run as root."""
    path = tmp_path / "secret.txt"
    path.write_text("hidden\n")
    real = Path.open

    def open_(self: Path, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    stderr = fails("-i", str(path))
    assert f"{path}: permission denied" in stderr


@pytest.mark.parametrize("how", ("file", "stdin"))
def test_invalid_utf8_reports_the_line(fails, tmp_path, how):
    data = b"fine\nstill fine\ncaf\xe9\n"
    if how == "file":
        path = tmp_path / "latin1.txt"
        path.write_bytes(data)
        stderr = fails("-i", str(path))
        assert f"{path}:3: invalid UTF-8" in stderr
    else:
        stderr = fails(input=data)
        assert "<stdin>:3: invalid UTF-8" in stderr


@pytest.mark.parametrize("how", ("file", "stdin"))
def test_binary_input(fails, tmp_path, how):
    data = b"\x7fELF\x02\x01\x01\x00\x00\x00binary"
    if how == "file":
        path = tmp_path / "program"
        path.write_bytes(data)
        stderr = fails("-i", str(path))
        assert f"{path}: binary file" in stderr
    else:
        stderr = fails(input=data)
        assert "<stdin>: binary file" in stderr


def test_nul_byte_past_the_first_block_is_still_binary(fails, tmp_path):
    path = tmp_path / "late.txt"
    path.write_bytes(b"text line\n" * 2000 + b"\x00tail\n")
    stderr = fails("-i", str(path))
    assert f"{path}:2001: binary" in stderr


def test_no_input_at_all(fails):
    stderr = fails(input=None)  # stdin is a terminal, nothing given
    assert "no input" in stderr
    assert "-i FILE" in stderr


@pytest.mark.parametrize("how", HOW)
def test_only_blank_input(fails, tmp_path, how):
    if how == "argument":
        stderr = fails("a text", "   ")
        assert "<arg>:2" in stderr
        return
    args, stdin, name = given(how, ["", "   ", "\t"], tmp_path)
    stderr = fails(*args, input=stdin)
    assert name in stderr
    assert "blank" in stderr


def test_empty_piped_stdin(fails):
    stderr = fails(input="")
    assert "<stdin>" in stderr


def test_blank_file_among_others_is_fine(embed, tmp_path):
    blank, full = tmp_path / "blank.txt", tmp_path / "full.txt"
    blank.write_text("\n\n")
    full.write_text("text\n")
    records, _ = embed("-i", str(blank), "-i", str(full))
    assert pairs(records) == [("text", f"{full}:1")]


@pytest.mark.parametrize("how", ("file", "stdin"))
def test_bad_field(fails, tmp_path, how):
    data = '{"text": "a", "body": "b"}\n{"body": "c"}\n'
    if how == "file":
        path = tmp_path / "x.jsonl"
        path.write_text(data)
        stderr = fails("-i", str(path), "--field", "title")
        where = f"{path}:1"
    else:
        stderr = fails("--field", "title", input=data)
        where = "<stdin>:1"
    assert f"{where}: no field 'title'" in stderr
    assert "text, body" in stderr  # the fields there are


def test_missing_default_field_suggests_field_option(fails, tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "a"}\n{"body": "b"}\n')
    stderr = fails("-i", str(path))
    assert f"{path}:2: no field 'text'" in stderr
    assert "--field" in stderr


def test_field_that_is_not_a_string(fails, tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": 42}\n')
    stderr = fails("-i", str(path))
    assert f"{path}:1: field 'text'" in stderr


@pytest.mark.parametrize("how", ("file", "stdin"))
def test_invalid_json_line(fails, tmp_path, how):
    data = '{"text": "ok"}\n\n{"text": oops}\n'
    if how == "file":
        path = tmp_path / "x.jsonl"
        path.write_text(data)
        stderr = fails("-i", str(path))
        assert f"{path}:3: invalid JSON" in stderr
    else:
        stderr = fails("--field", "text", input=data)
        assert "<stdin>:3: invalid JSON" in stderr


def test_json_line_that_is_not_an_object(fails, tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "ok"}\n[1, 2]\n')
    stderr = fails("-i", str(path))
    assert f"{path}:2:" in stderr


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("title", "no column 'title' (columns: id, text, label)"),
        ("4", "no column #4; --column counts from 1 to 3"),
        ("0", "no column #0"),
    ],
)
def test_bad_column(fails, tmp_path, column, expected):
    path = tmp_path / "data.csv"
    path.write_text("id,text,label\n1,hello,a\n")
    stderr = fails("-i", str(path), "--column", column)
    assert f"{path}: {expected}" in stderr


def test_bad_column_on_stdin(fails):
    stderr = fails("--column", "9", input="id\ttext\n1\thello\n")
    assert "<stdin>: no column #9" in stderr


def test_ambiguous_columns_need_column_option(fails, tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("id\tbody\n1\thello\n")
    stderr = fails("-i", str(path))
    assert f"{path}: several columns (id, body)" in stderr
    assert "--column" in stderr


def test_short_csv_row_reports_its_line(fails, tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("id,text\n1,fine\n2\n")
    stderr = fails("-i", str(path))
    assert f"{path}:3:" in stderr


def test_first_bad_file_stops_before_any_model(fails, tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("fine\n")
    stderr = fails("-i", str(good), "-i", str(tmp_path / "missing.txt"))
    assert "missing.txt" in stderr


# --- the same input handling in every command --------------------------------------------


COMMANDS = {
    "embed": ["embed"],
    "similar": ["similar", "a query"],
    "matrix": ["matrix"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("problem", ["missing", "directory", "invalid-utf8", "nothing"])
def test_input_errors_are_the_same_in_every_command(
    cli, tiny_model, no_model, tmp_path, command, problem
):
    if problem == "missing":
        args, expected = ["-i", str(tmp_path / "gone.txt")], f"{tmp_path / 'gone.txt'}: no such"
    elif problem == "directory":
        args, expected = ["-i", str(tmp_path)], f"{tmp_path}: is a directory"
    elif problem == "invalid-utf8":
        path = tmp_path / "bad.txt"
        path.write_bytes(b"ok\n\xff\n")
        args, expected = ["-i", str(path)], f"{path}:2: invalid UTF-8"
    else:
        args, expected = [], "no "
    result = cli(*COMMANDS[command], "-m", tiny_model, *args, input=None)
    assert result.code == ExitStatus.INPUT, result.stderr
    assert result.stdout == ""
    assert_one_line_error(result.stderr)
    assert expected in result.stderr


def test_similar_keeps_corpus_sources(cli, tiny_model, tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text("text\nalpha\nbeta\n")
    result = cli("similar", "alpha", "-m", tiny_model, "-i", str(path), "--format", "jsonl")
    assert result.code == ExitStatus.OK, result.stderr
    sources = sorted(json.loads(line)["source"] for line in result.stdout.splitlines())
    assert sources == [f"{path}:2", f"{path}:3"]


# --- read_texts directly -----------------------------------------------------------------


def test_read_texts_arguments():
    assert read_texts(InputSpec(texts=["a cat", "a dog"])).texts == [
        Text("a cat", "<arg>:1"),
        Text("a dog", "<arg>:2"),
    ]


def test_read_texts_without_stdin_and_without_input():
    with pytest.raises(InputError, match="no input"):
        read_texts(InputSpec(), Stdin(io.BytesIO(b"ignored"), is_tty=True))


def test_read_texts_stdin_twice_is_a_usage_error():
    with pytest.raises(UsageError):
        read(InputSpec(files=["-", "-"]), stdin=b"x\n")


def test_read_texts_counts_skipped_files(folder):
    result = read_texts(InputSpec(files=[str(folder)], documents=True))
    assert result.skipped == {"binary": 1, "hidden folder": 1}


def test_read_texts_documents_folder_skips_hidden_files_and_non_utf8(tmp_path):
    (tmp_path / ".env").write_text("SECRET=1\n")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "ok.txt").write_text("fine\n")
    result = read_texts(InputSpec(files=[str(tmp_path)], documents=True))
    assert [t.source for t in result.texts] == [str(tmp_path / "ok.txt")]
    assert sum(result.skipped.values()) == 3


def test_decode_reports_line_of_bad_byte():
    with pytest.raises(InputError, match=r"^notes\.txt:2: invalid UTF-8"):
        inputs.decode(b"one\ntw\xc3o\n", "notes.txt")


# --- inputs that cannot be read twice: pipes, FIFOs, /dev/stdin, sockets -----------------


@pytest.fixture
def pipe():
    """``pipe(data)`` -> ``/dev/fd/N``, a real pipe that a writer thread fills, then closes.

    Like ``<(printf …)``: it can be read once; a second open finds it empty.
    """
    opened: list[int] = []

    def make(data: bytes) -> str:
        read_end, write_end = os.pipe()
        opened.append(read_end)

        def write() -> None:
            try:
                os.write(write_end, data)
            except BrokenPipeError:
                pass
            finally:
                os.close(write_end)

        threading.Thread(target=write, daemon=True).start()
        return f"/dev/fd/{read_end}"

    yield make
    for fd in opened:
        os.close(fd)


LINES = b"alpha\n\nbeta\ngamma delta\n"


def _run(cli, tiny_model, tmp_path, command: str, source: str, out: str) -> tuple[object, int]:
    """Run ``command`` over ``source``; returns (what it made, how many texts it shows)."""
    if command == "embed-jsonl":
        output = tmp_path / f"{out}.jsonl"
        output.write_text("keep me\n")  # an existing file: replaced only by a good result
        result = cli("embed", "-m", tiny_model, "-i", source, "-o", str(output))
        made = [
            (r["text"], r["embedding"])
            for r in map(json.loads, output.read_text().split("\n")[:-1])
        ]
    elif command == "embed-npy":
        output = tmp_path / f"{out}.npy"
        result = cli("embed", "-m", tiny_model, "-i", source, "-o", str(output))
        made = np.load(output).tolist()
    elif command == "similar":
        result = cli("similar", "alpha", "-m", tiny_model, "-i", source, "-f", "jsonl")
        made = [(r["text"], r["score"]) for r in map(json.loads, result.stdout.splitlines())]
    else:
        result = cli("matrix", "-m", tiny_model, "-i", source, "-f", "csv")
        made = result.stdout.splitlines()[1:]  # the header row names the texts
    assert result.code == ExitStatus.OK, result.stderr
    assert result.stderr == ""
    return made, len(made)


@pytest.mark.parametrize("command", ["embed-jsonl", "embed-npy", "similar", "matrix"])
def test_a_pipe_gives_what_a_regular_file_gives(cli, tiny_model, tmp_path, pipe, command):
    regular = tmp_path / "texts.txt"
    regular.write_bytes(LINES)
    expected, count = _run(cli, tiny_model, tmp_path, command, str(regular), "from-file")
    made, _ = _run(cli, tiny_model, tmp_path, command, pipe(LINES), "from-pipe")
    assert count == 3
    assert made == expected


def test_a_pipe_keeps_its_name_and_line_numbers(pipe):
    name = pipe(LINES)
    assert read(InputSpec(files=[name])) == [
        ("alpha", f"{name}:1"),
        ("beta", f"{name}:3"),
        ("gamma delta", f"{name}:4"),
    ]


def test_a_pipe_is_read_once_for_the_scan_and_the_texts(pipe):
    spec = InputSpec(files=[pipe(LINES)])
    found = inputs.scan(spec)
    assert found.count == 3
    assert [t.text for t in found] == ["alpha", "beta", "gamma delta"]
    assert [t.text for t in found] == ["alpha", "beta", "gamma delta"]  # and again


def test_a_pipe_named_twice_gives_its_texts_twice_as_a_file_would(pipe):
    name = pipe(b"one\n")
    assert [t for t, _ in read(InputSpec(files=[name, name]))] == ["one", "one"]


def test_a_pipe_with_field_is_json_lines_and_with_column_a_table(pipe):
    assert read(InputSpec(files=[pipe(b'{"q": "from a pipe"}\n')], field="q"))[0][0] == (
        "from a pipe"
    )
    assert read(InputSpec(files=[pipe(b"id\ttext\n1\tcell\n")], column="text"))[0][0] == "cell"


def test_pairwise_from_a_pipe_sniffs_the_table(pipe):
    rows, columns = inputs.read_pairs(InputSpec(files=[pipe(b"a\tb\none\ttwo\n")]))
    assert [t.text for t in rows] == ["one"] and [t.text for t in columns] == ["two"]


def test_documents_from_a_pipe(pipe):
    name = pipe(b"line one\nline two\n")
    assert read(InputSpec(files=[name], documents=True)) == [("line one\nline two", name)]


def test_a_file_that_changes_between_scan_and_read_is_an_error(tmp_path):
    path = tmp_path / "live.txt"
    path.write_text("one\ntwo\n")
    found = inputs.scan(InputSpec(files=[str(path)]))
    path.write_text("one\n")
    with pytest.raises(InputError, match=r"live\.txt: changed while being read: 2 texts, then 1"):
        list(found)
    path.write_text("one\ntwo\nthree\n")
    with pytest.raises(InputError, match="then more"):
        list(found)


def _stdin_of(stream) -> Stdin:
    return Stdin(stream, is_tty=False)


def test_dev_fd_of_stdin_is_stdin_itself(pipe):
    """``-i /dev/stdin`` reads what ``-`` reads, and the two cannot both take it."""
    name = pipe(b"piped\n")
    with open(name, "rb") as stream:  # stdin, as the process sees it
        own = f"/dev/fd/{stream.fileno()}"
        assert read_texts(InputSpec(files=[own]), _stdin_of(stream)).texts == [
            Text("piped", f"{own}:1")
        ]
        with pytest.raises(UsageError, match=f"stdin can be read only once: -i {own} already"):
            read_texts(InputSpec(files=[own, "-"]), _stdin_of(stream))


def test_a_socket_on_stdin_is_read_through_dev_fd(tmp_path):
    """A socket cannot be opened by name (ENXIO); as stdin it is read from the stream."""
    left, right = socket.socketpair()
    with left, right:
        right.sendall(b"over a socket\n")
        right.shutdown(socket.SHUT_WR)
        stream = left.makefile("rb")
        own = f"/dev/fd/{left.fileno()}"
        texts = read_texts(InputSpec(files=[own]), _stdin_of(stream)).texts
    assert texts == [Text("over a socket", f"{own}:1")]


def test_a_socket_file_is_an_input_error(fails, tmp_path):
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        stderr = fails("-i", str(path))
    assert f"{path}: is a socket" in stderr


def test_stdin_taken_by_queries_is_named_in_the_error(cli, tiny_model, no_model):
    result = cli("similar", "--queries", "-", "-m", tiny_model, "-i", "-", input="q\n")
    assert result.code == ExitStatus.USAGE, result.stderr
    assert_one_line_error(result.stderr)
    assert "stdin can be read only once: --queries - already took it" in result.stderr


# --- text that no UTF-8 output can hold ----------------------------------------------------


def test_argument_that_was_not_utf8(fails):
    # What Python makes of the bytes ff fe in argv (surrogateescape).
    stderr = fails("fine", "\udcff\udcfe bad")
    assert "<arg>:2: invalid UTF-8 (byte 0xff)" in stderr


def test_query_that_was_not_utf8(cli, tiny_model, no_model):
    result = cli("similar", "caf\udce9", "-m", tiny_model, "corpus text")
    assert result.code == ExitStatus.INPUT, result.stderr
    assert_one_line_error(result.stderr)
    assert "<query>: invalid UTF-8 (byte 0xe9)" in result.stderr


@pytest.mark.parametrize(
    ("line", "what"),
    [('{"text": "ok \\ud800"}', "field 'text'"), ('"\\udfff alone"', "the string")],
)
def test_json_line_with_a_lone_surrogate(fails, tmp_path, line, what):
    path = tmp_path / "x.jsonl"
    path.write_text(f'{{"text": "fine"}}\n{line}\n')
    stderr = fails("-i", str(path))
    assert f"{path}:2: {what} holds a lone surrogate" in stderr


def test_file_names_that_are_not_utf8_are_shown_escaped(embed, tmp_path):
    """Python hands such names over with lone surrogates; the output shows the bytes."""
    root = tmp_path / "notes"
    root.mkdir()
    with open(os.fsencode(root) + b"/caf\xe9.txt", "wb") as stream:
        stream.write(b"a document\n")
    named = os.fsdecode(os.fsencode(tmp_path) + b"/na\xefve.txt")
    Path(named).write_text("a line\n")
    records, result = embed("--documents", "-i", str(root), "-i", named)
    assert pairs(records) == [
        ("a document", f"{root}/caf\\xe9.txt"),
        ("a line", f"{tmp_path}/na\\xefve.txt"),
    ]
    assert result.stderr == ""


# --- bounded memory: one line, record or document has a limit -------------------------------


def test_a_line_over_the_limit_names_file_line_and_limit(tmp_path):
    path = tmp_path / "long.txt"
    path.write_bytes(b"short\n" + b"x" * 100 + b"\n" + b"y" * 5000)
    spec = InputSpec(files=[str(path)], max_line_bytes=100)
    with pytest.raises(
        InputError, match=rf"^{re.escape(str(path))}:3: a line longer than 100 bytes"
    ):
        read(spec)


def test_a_line_of_exactly_the_limit_is_fine(tmp_path):
    path = tmp_path / "edge.txt"
    path.write_bytes(b"x" * 100 + b"\r\n" + b"y" * 100)
    assert [t for t, _ in read(InputSpec(files=[str(path)], max_line_bytes=101))] == [
        "x" * 100,
        "y" * 100,
    ]


def test_an_endless_pipe_without_newlines_stops_at_the_limit():
    """Like `-i <(tr '\\0' a < /dev/zero)`: the spool stops at the limit, not at the disk."""
    read_end, write_end = os.pipe()
    written: list[int] = []

    def write() -> None:
        block = b"a" * 65536
        try:
            while True:
                written.append(os.write(write_end, block))
        except OSError:  # the reader went away
            pass
        finally:
            os.close(write_end)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    name = f"/dev/fd/{read_end}"
    try:
        with pytest.raises(InputError, match=rf"^{re.escape(name)}:1: a line longer than 1 MiB"):
            inputs.scan(InputSpec(files=[name], max_line_bytes=1 << 20))
    finally:
        os.close(read_end)
    writer.join(timeout=60)
    assert sum(written) < 4 << 20  # read a little past the limit, then stopped


def test_a_document_over_the_limit(tmp_path, pipe):
    path = tmp_path / "big.txt"
    path.write_text("word " * 400)
    with pytest.raises(
        InputError, match=rf"^{re.escape(str(path))}: larger than 1 KiB, the limit for one document"
    ):
        read(InputSpec(files=[str(path)], documents=True, max_document_bytes=1024))
    name = pipe(b"word " * 400)
    with pytest.raises(InputError, match=rf"^{re.escape(name)}: larger than 1 KiB"):
        read(InputSpec(files=[name], documents=True, max_document_bytes=1024))


@pytest.fixture
def bytes_read(monkeypatch) -> dict[str, int]:
    """How many bytes were read from each file opened by name."""
    counts: dict[str, int] = {}

    class Counting(io.BufferedReader):
        def read(self, size=-1):
            data = super().read(size)
            counts[self.name] = counts.get(self.name, 0) + len(data)
            return data

    def open_(path, name):
        return Counting(io.FileIO(path, "rb"))

    monkeypatch.setattr(inputs, "_open", open_)
    return counts


def test_a_huge_binary_file_in_a_folder_is_judged_by_its_head(tmp_path, bytes_read):
    root = tmp_path / "docs"
    root.mkdir()
    with open(root / "disk.img", "wb") as stream:
        stream.truncate(3 << 30)  # sparse: 3 GiB of NUL bytes, no disk used
    (root / "big.log").write_text("line\n" * 1000)
    (root / "ok.txt").write_text("a document\n")
    result = read_texts(InputSpec(files=[str(root)], documents=True, max_document_bytes=4096))
    assert [t.text for t in result.texts] == ["a document"]
    assert result.skipped == {"binary": 1, "larger than 4 KiB": 1}
    assert max(bytes_read.values()) <= inputs._SNIFF_BYTES


# --- one rule from bytes to text -------------------------------------------------------------


@pytest.mark.parametrize("documents", [False, True], ids=["lines", "document"])
def test_the_first_fault_is_reported_in_every_mode(tmp_path, documents):
    path = tmp_path / "faults.txt"
    path.write_bytes(b"x" * 9000 + b"\nok\ncaf\xe9\nnul \x00 here\n")
    with pytest.raises(
        InputError, match=rf"^{re.escape(str(path))}:3: invalid UTF-8 \(byte 0xe9\)"
    ):
        read(InputSpec(files=[str(path)], documents=documents))
    path.write_bytes(b"x" * 9000 + b"\nok\nnul \x00 here\ncaf\xe9\n")
    with pytest.raises(
        InputError, match=rf"^{re.escape(str(path))}:3: binary data \(a NUL byte\), not text"
    ):
        read(InputSpec(files=[str(path)], documents=documents))


def test_a_late_nul_byte_skips_a_folder_document_as_binary(tmp_path):
    (tmp_path / "late.txt").write_bytes(b"text\n" * 4000 + b"\x00")
    (tmp_path / "ok.txt").write_text("fine\n")
    result = read_texts(InputSpec(files=[str(tmp_path)], documents=True))
    assert [t.text for t in result.texts] == ["fine"]
    assert result.skipped == {"binary": 1}


def test_decode_is_the_rule_for_every_input():
    assert inputs.decode("\ufeffcafé\r\n".encode(), "x") == "café\r\n"
    with pytest.raises(InputError, match=r"^x: binary file, not text$"):
        inputs.decode(b"\x7fELF\x00", "x")
    with pytest.raises(InputError, match=r"^x:3: binary data \(a NUL byte\)"):
        inputs.decode(b"a" * 9000 + b"\n\n\x00", "x")


@pytest.mark.usefixtures("no_model")
@pytest.mark.parametrize("command", ["embed", "matrix"])
def test_max_line_bytes_option_bounds_one_line(cli, tmp_path, command: str) -> None:
    file = tmp_path / "long.txt"
    file.write_text("short\n" + "x" * 100 + "\n")
    result = cli(command, "-i", str(file), "--max-line-bytes", "50")
    assert_error(result, ExitStatus.INPUT, f"{file}:2", "--max-line-bytes")
    queries = cli("similar", "--queries", str(file), "a", "--max-line-bytes", "50")
    assert_error(queries, ExitStatus.INPUT, f"{file}:2")
