"""`embed`: output formats, files written atomically, the encode options, numbers equal
to sentence-transformers' own, and the truncation note."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from modernbert_cli import render
from modernbert_cli.errors import ExitStatus

TEXTS = ["A man is eating food.", "A woman plays the violin.", "The new movie is awesome."]
TINY_DIMS = 32
MINILM_DIMS = 384


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture
def embed(cli, tiny_model):
    """Run `embed -m <tiny>` and check it succeeded; returns the Result."""

    def run(*args: str, input: str | bytes | None = None, model_name: str = tiny_model):
        result = cli("embed", "-m", model_name, *args, input=input)
        assert result.code == ExitStatus.OK, result.stderr
        return result

    return run


@pytest.fixture
def embed_fails(cli, tiny_model):
    """Run `embed -m <tiny>` expecting a one-line error with ``status``; returns stderr."""

    def run(*args: str, status: ExitStatus, input: str | bytes | None = None) -> str:
        result = cli("embed", "-m", tiny_model, *args, input=input)
        assert result.code == status, result.stderr
        assert result.stdout == ""
        assert "Traceback" not in result.stderr
        assert "model loaded" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        return result.stderr

    return run


def jsonl(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def vectors(records: list[dict]) -> np.ndarray:
    return np.array([r["embedding"] for r in records])


@pytest.fixture(scope="module")
def prompted_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random ModernBERT that defines named prompts."""
    from modernbert_cli.testing import build_modernbert

    path = tmp_path_factory.mktemp("models") / "tiny-prompted"
    prompts = {"query": "query: ", "passage": "passage: "}
    return str(build_modernbert(path, max_seq_length=128, prompts=prompts))


# --- formats on stdout -------------------------------------------------------------------


def test_default_when_piped_is_jsonl(embed, tiny_model):
    result = embed(*TEXTS)
    records = jsonl(result.stdout)
    assert [list(r) for r in records] == [["text", "source", "model", "embedding", "meta"]] * 3
    # Every record says what its vector is, so a file cut with head or joined with cat does.
    meta = records[0]["meta"]
    assert meta["version"] == 1 and meta["precision"] == "float32"
    assert meta["dimensions"] == TINY_DIMS and meta["normalized"] is False
    assert [r["meta"] for r in records] == [meta] * 3
    assert [r["text"] for r in records] == TEXTS
    assert [r["source"] for r in records] == ["<arg>:1", "<arg>:2", "<arg>:3"]
    assert {r["model"] for r in records} == {str(Path(tiny_model).resolve())}
    assert all(len(r["embedding"]) == TINY_DIMS for r in records)
    assert all(isinstance(v, float) for r in records for v in r["embedding"])
    assert result.stderr == ""


def test_json_format_is_a_list_of_the_same_records(embed):
    lines = jsonl(embed(*TEXTS).stdout)
    result = embed(*TEXTS, "--format", "json")
    assert json.loads(result.stdout) == lines
    assert result.stderr == ""


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_csv_and_tsv_formats(embed, fmt):
    texts = ["plain", "with, a comma", 'with "quotes"']
    expected = vectors(jsonl(embed(*texts).stdout))
    result = embed(*texts, "--format", fmt)
    rows = list(csv.reader(io.StringIO(result.stdout), delimiter="," if fmt == "csv" else "\t"))
    assert rows[0] == ["text", "source", *(f"dim_{i}" for i in range(TINY_DIMS))]
    assert [row[:2] for row in rows[1:]] == [[t, f"<arg>:{i}"] for i, t in enumerate(texts, 1)]
    assert_allclose(np.array([[float(v) for v in row[2:]] for row in rows[1:]]), expected)
    assert result.stderr == ""


def test_tsv_escapes_tabs_and_newlines(embed, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("line one\tcell\nline two\n")
    result = embed("--documents", "-i", str(doc), "--format", "tsv")
    row = result.stdout.splitlines()[1].split("\t")
    assert row[0] == "line one\\tcell\\nline two"
    assert len(row) == 2 + TINY_DIMS


def test_table_format(embed, monkeypatch):
    monkeypatch.delenv("NO_COLOR")  # no escape codes because stdout is not a terminal
    norms = np.linalg.norm(vectors(jsonl(embed(*TEXTS).stdout)), axis=1)
    result = embed(*TEXTS, "--format", "table")
    out = result.stdout
    assert "\x1b" not in out
    for heading in ("text", "dims", "norm", "first values"):
        assert heading in out
    for text in TEXTS:
        assert text in out
    for norm in norms:
        assert f"{norm:.4f}" in out
    assert out.count(f" {TINY_DIMS} ") >= len(TEXTS)
    assert result.stderr == ""


def test_table_shows_unit_norms_with_normalize(embed):
    out = embed(*TEXTS, "--format", "table", "--normalize").stdout
    assert out.count("1.0000") == len(TEXTS)


def test_npy_needs_an_output_file(embed_fails, no_model):
    stderr = embed_fails(*TEXTS, "--format", "npy", status=ExitStatus.USAGE)
    assert "-o" in stderr


def test_unknown_format_is_a_usage_error(embed_fails, no_model):
    stderr = embed_fails(*TEXTS, "--format", "xml", status=ExitStatus.USAGE)
    assert "xml" in stderr


# --- -o FILE -----------------------------------------------------------------------------


def _read_output(path: Path, fmt: str) -> np.ndarray:
    if fmt == "npy":
        return np.load(path)
    text = path.read_text(encoding="utf-8")
    if fmt == "jsonl":
        return vectors(jsonl(text))
    if fmt == "json":
        return vectors(json.loads(text))
    rows = list(csv.reader(io.StringIO(text), delimiter="," if fmt == "csv" else "\t"))
    return np.array([[float(v) for v in row[2:]] for row in rows[1:]])


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("out.jsonl", "jsonl"),
        ("out.ndjson", "jsonl"),
        ("out.json", "json"),
        ("out.csv", "csv"),
        ("out.TSV", "tsv"),
        ("out.npy", "npy"),
    ],
)
def test_output_format_follows_the_extension(embed, tmp_path, name, fmt):
    expected = vectors(jsonl(embed(*TEXTS).stdout))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    path = out_dir / name
    result = embed(*TEXTS, "-o", str(path))
    assert result.stdout == ""
    assert result.stderr == ""
    # No temporary files left; an array has its description beside it.
    described = [f"{name}.json"] if fmt == "npy" else []
    assert sorted(p.name for p in out_dir.iterdir()) == [name, *described]
    assert_allclose(_read_output(path, fmt), expected, rtol=1e-6)


def test_txt_output_is_a_table(embed, tmp_path):
    path = tmp_path / "table.txt"
    embed(*TEXTS, "-o", str(path))
    text = path.read_text(encoding="utf-8")
    assert "\x1b" not in text
    assert "first values" in text
    assert TEXTS[0] in text


def test_format_option_wins_over_the_extension(embed, tmp_path):
    path = tmp_path / "vectors.data"
    embed(*TEXTS, "-o", str(path), "--format", "jsonl")
    assert len(jsonl(path.read_text())) == len(TEXTS)


def test_output_replaces_an_existing_file(embed, tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old content\n")
    embed(*TEXTS, "-o", str(path))
    assert len(jsonl(path.read_text())) == len(TEXTS)
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_unknown_output_extension_is_a_usage_error(embed_fails, no_model, tmp_path):
    path = tmp_path / "out.xyz"
    stderr = embed_fails(*TEXTS, "-o", str(path), status=ExitStatus.USAGE)
    assert str(path) in stderr
    assert "--format" in stderr
    assert list(tmp_path.iterdir()) == []


def test_output_to_a_directory_is_an_output_error(embed_fails, tmp_path):
    folder = tmp_path / "dir.jsonl"
    folder.mkdir()
    stderr = embed_fails(*TEXTS, "-o", str(folder), status=ExitStatus.OUTPUT)
    assert str(folder) in stderr


def test_output_in_a_missing_folder_is_an_output_error(embed_fails, tmp_path):
    path = tmp_path / "no" / "such" / "out.jsonl"
    stderr = embed_fails(*TEXTS, "-o", str(path), status=ExitStatus.OUTPUT)
    assert str(path) in stderr
    assert not path.parent.exists()


@pytest.mark.parametrize("name", ["out.jsonl", "out.npy"])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_a_failure_half_way_leaves_no_partial_file(
    embed_fails, monkeypatch, tmp_path, name, existing
):
    """A bug half-way (a full disk is tested for real in test_output_files.py)."""

    def write_some_then_fail(self, texts, embeddings):
        self.stream.write(b"partial" if name.endswith(".npy") else "partial")
        self.stream.flush()
        raise RuntimeError("renderer bug")

    monkeypatch.setattr(render.EmbeddingsWriter, "write", write_some_then_fail)
    path = tmp_path / name
    if existing:
        path.write_bytes(b"old content\n")
    embed_fails(*TEXTS, "-o", str(path), status=ExitStatus.ERROR)
    if existing:
        assert path.read_bytes() == b"old content\n"
        assert [p.name for p in tmp_path.iterdir()] == [name]
    else:
        assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


# --- encode options ----------------------------------------------------------------------


def test_normalize(embed):
    plain = vectors(jsonl(embed(*TEXTS, "--no-normalize").stdout))
    unit = vectors(jsonl(embed(*TEXTS, "--normalize").stdout))
    norms = np.linalg.norm(plain, axis=1)
    assert not np.allclose(norms, 1.0)  # the random tiny model does not normalise itself
    assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    assert_allclose(unit, plain / norms[:, None], rtol=1e-5, atol=1e-6)


def test_truncate_dim_keeps_the_first_dimensions(embed):
    full = vectors(jsonl(embed(*TEXTS).stdout))
    cut = vectors(jsonl(embed(*TEXTS, "--truncate-dim", "8").stdout))
    assert cut.shape == (len(TEXTS), 8)
    assert_allclose(cut, full[:, :8], rtol=1e-6)


@pytest.mark.parametrize("value", [str(TINY_DIMS + 1), "0"])
def test_truncate_dim_out_of_range_is_a_usage_error(embed_fails, value):
    stderr = embed_fails(*TEXTS, "--truncate-dim", value, status=ExitStatus.USAGE)
    assert "--truncate-dim" in stderr


def test_precision_in_jsonl_gives_integers(embed):
    records = jsonl(embed(*TEXTS, "--precision", "ubinary").stdout)
    assert all(len(r["embedding"]) == TINY_DIMS // 8 for r in records)
    assert all(isinstance(v, int) and 0 <= v <= 255 for r in records for v in r["embedding"])


def test_unknown_precision_is_a_usage_error(embed_fails, no_model):
    embed_fails(*TEXTS, "--precision", "float16", status=ExitStatus.USAGE)


def test_prompt_changes_the_embedding(embed):
    plain = vectors(jsonl(embed(*TEXTS).stdout))
    prompted = vectors(jsonl(embed(*TEXTS, "--prompt", "query: ").stdout))
    assert not np.allclose(plain, prompted)
    # the prompt is not part of the text reported
    assert [r["text"] for r in jsonl(embed(*TEXTS, "--prompt", "query: ").stdout)] == TEXTS


def test_prompt_name_uses_the_models_prompt(embed, prompted_model):
    named = vectors(
        jsonl(embed(*TEXTS, "--prompt-name", "query", model_name=prompted_model).stdout)
    )
    literal = vectors(jsonl(embed(*TEXTS, "--prompt", "query: ", model_name=prompted_model).stdout))
    plain = vectors(jsonl(embed(*TEXTS, model_name=prompted_model).stdout))
    assert_allclose(named, literal, rtol=1e-6)
    assert not np.allclose(named, plain)


def test_unknown_prompt_name_is_a_usage_error(cli, prompted_model):
    result = cli("embed", "-m", prompted_model, "--prompt-name", "search", *TEXTS)
    assert result.code == ExitStatus.USAGE
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--prompt-name search:" in result.stderr
    assert "passage, query" in result.stderr  # the prompts it does define


def test_prompt_name_on_a_model_without_prompts(embed_fails):
    stderr = embed_fails(*TEXTS, "--prompt-name", "query", status=ExitStatus.USAGE)
    assert "no prompts" in stderr


def test_prompt_and_prompt_name_exclude_each_other(cli, prompted_model):
    result = cli("embed", "-m", prompted_model, "--prompt", "q: ", "--prompt-name", "query", *TEXTS)
    assert result.code == ExitStatus.USAGE
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--prompt" in result.stderr and "--prompt-name" in result.stderr


# --- the numbers are sentence-transformers' own -------------------------------------------


def test_jsonl_equals_sentence_transformers(cli, st_minilm):
    result = cli("embed", "-m", "minilm", *TEXTS)
    assert result.code == ExitStatus.OK, result.stderr
    records = jsonl(result.stdout)
    assert {r["model"] for r in records} == {"minilm"}
    assert_allclose(vectors(records), st_minilm.encode(TEXTS), atol=1e-5)


def test_npy_equals_sentence_transformers(cli, st_minilm, tmp_path):
    path = tmp_path / "out.npy"
    result = cli("embed", "-m", "minilm", "-o", str(path), input="\n".join(TEXTS) + "\n")
    assert result.code == ExitStatus.OK, result.stderr
    saved = np.load(path)
    assert saved.dtype == np.float32
    assert saved.shape == (len(TEXTS), MINILM_DIMS)
    assert_allclose(saved, st_minilm.encode(TEXTS), atol=1e-5)


def test_normalize_equals_sentence_transformers(cli, st_minilm):
    result = cli("embed", "-m", "minilm", "--normalize", *TEXTS)
    assert result.code == ExitStatus.OK, result.stderr
    expected = st_minilm.encode(TEXTS, normalize_embeddings=True)
    assert_allclose(vectors(jsonl(result.stdout)), expected, atol=1e-5)


def test_prompt_equals_sentence_transformers(cli, st_minilm):
    result = cli("embed", "-m", "minilm", "--prompt", "query: ", *TEXTS)
    assert result.code == ExitStatus.OK, result.stderr
    expected = st_minilm.encode(TEXTS, prompt="query: ")
    assert_allclose(vectors(jsonl(result.stdout)), expected, atol=1e-5)
    assert not np.allclose(expected, st_minilm.encode(TEXTS), atol=1e-3)


@pytest.mark.parametrize(
    ("precision", "dtype", "dims"),
    [
        ("int8", np.int8, MINILM_DIMS),
        ("uint8", np.uint8, MINILM_DIMS),
        ("binary", np.int8, MINILM_DIMS // 8),
        ("ubinary", np.uint8, MINILM_DIMS // 8),
    ],
)
def test_precision_in_npy(cli, st_minilm, tmp_path, precision, dtype, dims):
    path = tmp_path / "out.npy"
    result = cli("embed", "-m", "minilm", "--precision", precision, "-o", str(path), *TEXTS)
    assert result.code == ExitStatus.OK, result.stderr
    assert result.stderr == ""  # no calibration chatter from the library
    saved = np.load(path)
    assert saved.dtype == dtype
    assert saved.shape == (len(TEXTS), dims)
    np.testing.assert_array_equal(saved, st_minilm.encode(TEXTS, precision=precision))


# --- truncation at the token limit -------------------------------------------------------

LONG = "word " * 500  # ~500 tokens: past the tiny model's 128


def test_truncation_note_counts_the_long_texts(embed):
    result = embed(LONG, "short text")
    assert len(jsonl(result.stdout)) == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "1 of 2" in result.stderr
    assert "128 tokens" in result.stderr
    assert "truncated" in result.stderr


def test_truncation_note_is_silenced_by_quiet(embed):
    result = embed(LONG, "short text", "-q")
    assert len(jsonl(result.stdout)) == 2
    assert result.stderr == ""


def test_truncation_happens_at_the_limit(embed):
    # 126 words + [CLS] + [SEP] is exactly 128 tokens: the long text is cut to the same.
    at_limit = ("word " * 126).strip()
    result = embed(LONG, at_limit)
    long_vector, limit_vector = vectors(jsonl(result.stdout))
    assert_allclose(long_vector, limit_vector, rtol=1e-5, atol=1e-6)
    assert "1 of 2" in result.stderr


def test_no_note_when_nothing_is_truncated(embed):
    medium = "a few words " * 8  # ~26 tokens
    assert embed(medium, "short text").stderr == ""


def test_max_seq_length_truncates_shorter_texts(embed):
    medium = "a few words " * 8  # ~26 tokens
    plain = vectors(jsonl(embed(medium, "short text").stdout))
    result = embed(medium, "short text", "--max-seq-length", "16")
    assert "1 of 2" in result.stderr
    assert "16 tokens" in result.stderr
    cut = vectors(jsonl(result.stdout))
    assert not np.allclose(plain[0], cut[0])
    assert_allclose(plain[1], cut[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", ["8193", "100000"])
def test_max_seq_length_beyond_the_position_limit_is_a_usage_error(embed_fails, value):
    stderr = embed_fails(*TEXTS, "--max-seq-length", value, status=ExitStatus.USAGE)
    assert "--max-seq-length" in stderr
    assert "8192" in stderr


def test_max_seq_length_zero_is_a_usage_error(embed_fails, no_model):
    embed_fails(*TEXTS, "--max-seq-length", "0", status=ExitStatus.USAGE)


def test_table_gives_the_text_room_and_keeps_file_names(embed, tmp_path):
    """At 100 columns the text is not squeezed by the values, and a long source keeps its
    file name (cut in the middle, not at the end)."""
    folder = tmp_path / "a-folder-with-a-rather-long-name" / "and-another-one-below-it"
    folder.mkdir(parents=True)
    source = folder / "volcanoes.txt"
    text = "Volcanoes erupt when magma rises through the crust to the surface"
    source.write_text(text + "\n")

    out = embed("-i", str(source), "--format", "table").stdout

    (row,) = [line for line in out.splitlines() if "volcanoes.txt:1" in line]
    shown = re.search(r"│ 1 │ (.*?)…? +│", row)[1]
    assert text.startswith(shown) and len(shown) >= 30, row
    assert re.search(r"│ /\S*…/volcanoes\.txt:1 +│", row), row
    assert all(len(line) <= 100 for line in out.splitlines())
