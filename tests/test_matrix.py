"""`matrix`: all-pairs scores (N×N, N×M with --against) and --pairwise, through the real CLI.

Numbers are checked against sentence-transformers' own to 1e-5; minilm where the
numbers mean something, the fast tiny model for plumbing and formats.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_error
from numpy.testing import assert_allclose

from modernbert_cli.errors import ExitStatus

SAMPLES = Path(__file__).resolve().parent.parent / "sample_inputs"
HAYDEN = SAMPLES / "hayden.txt"
HAYDEN_LINES = HAYDEN.read_text(encoding="utf-8").splitlines()
QUERIES = SAMPLES / "queries.txt"
QUERY_LINES = [line for line in QUERIES.read_text(encoding="utf-8").splitlines() if line.strip()]
PAIRS = SAMPLES / "pairs.tsv"
PAIR_ROWS = [line.split("\t") for line in PAIRS.read_text(encoding="utf-8").splitlines()[1:]]
BOX_EDGES = "│┃┓┐┤┩┘"  # what the right-hand end of a whole table line is


@pytest.fixture(scope="module")
def st_minilm_hayden(st_minilm):
    """sentence-transformers' own all-pairs scores of hayden.txt."""
    embeddings = st_minilm.encode(HAYDEN_LINES)
    return st_minilm.similarity(embeddings, embeddings).numpy()


@pytest.fixture(scope="module")
def st_tiny(tiny_model):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_model, device="cpu")


def lines_file(path: Path, texts: list[str]) -> str:
    path.write_text("".join(f"{t}\n" for t in texts), encoding="utf-8")
    return str(path)


# --- N×N ---------------------------------------------------------------------------------


def test_all_pairs_csv_is_the_default_when_piped(cli, st_minilm_hayden):
    result = cli("matrix", "-m", "minilm", "-i", str(HAYDEN))

    assert result.code == ExitStatus.OK
    assert result.stderr == ""
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["", *HAYDEN_LINES]  # header: the column texts
    assert [row[0] for row in rows[1:]] == HAYDEN_LINES  # first column: the row text
    scores = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
    assert scores.shape == (4, 4)
    assert_allclose(scores, st_minilm_hayden, atol=1e-5)
    assert_allclose(scores, scores.T, atol=1e-5)
    assert_allclose(np.diag(scores), np.ones(4), atol=1e-5)


def test_all_pairs_json(cli, st_minilm_hayden):
    result = cli("matrix", "-m", "minilm", "-i", str(HAYDEN), "--format", "json")

    assert result.code == ExitStatus.OK
    assert result.stderr == ""
    data = json.loads(result.stdout)
    assert list(data) == ["rows", "columns", "scores"]
    assert data["rows"] == data["columns"] == HAYDEN_LINES
    scores = np.array(data["scores"])
    assert scores.shape == (4, 4)
    assert_allclose(scores, st_minilm_hayden, atol=1e-5)
    assert_allclose(scores, scores.T, atol=1e-5)
    assert_allclose(np.diag(scores), np.ones(4), atol=1e-5)
    # the query is much closer to the Kootenai County passage than to "organization name"
    assert scores[0, 1] > scores[0, 2] > scores[0, 3]


def test_all_pairs_of_arguments_and_piped_stdin(cli, tiny_model):
    from_args = cli("matrix", "-m", tiny_model, "a cat", "a dog", "-f", "json")
    piped = cli("matrix", "-m", tiny_model, "-f", "json", input="a cat\n\na dog\n")

    assert from_args.code == piped.code == ExitStatus.OK
    a, b = json.loads(from_args.stdout), json.loads(piped.stdout)
    assert a["rows"] == b["rows"] == ["a cat", "a dog"]
    assert_allclose(a["scores"], b["scores"], atol=1e-6)


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean", "manhattan"])
def test_metric_scores_equal_sentence_transformers(cli, tiny_model, st_tiny, metric):
    from sentence_transformers import SimilarityFunction

    texts = ["a cat sat", "dogs bark loudly", "the stock market"]
    result = cli("matrix", "-m", tiny_model, *texts, "--metric", metric, "-f", "json")

    assert result.code == ExitStatus.OK
    embeddings = st_tiny.encode(texts)
    expected = SimilarityFunction.to_similarity_fn(metric)(embeddings, embeddings).numpy()
    assert_allclose(json.loads(result.stdout)["scores"], expected, rtol=1e-5, atol=1e-5)


def test_no_input_is_an_input_error(cli, tiny_model, no_model):
    result = cli("matrix", "-m", tiny_model)

    assert_error(result, ExitStatus.INPUT, "no input")


# --- N×M with --against ------------------------------------------------------------------


def test_against_scores_every_input_with_every_text_of_the_file(cli, st_minilm):
    queries = QUERY_LINES[:3]
    result = cli("matrix", "-m", "minilm", *queries, "--against", str(HAYDEN), "-f", "json")

    assert result.code == ExitStatus.OK
    assert result.stderr == ""
    data = json.loads(result.stdout)
    assert data["rows"] == queries
    assert data["columns"] == HAYDEN_LINES
    scores = np.array(data["scores"])
    assert scores.shape == (3, 4)
    expected = st_minilm.similarity(st_minilm.encode(queries), st_minilm.encode(HAYDEN_LINES))
    assert_allclose(scores, expected.numpy(), atol=1e-5)


def test_against_csv_has_column_texts_in_the_header(cli, tiny_model):
    result = cli("matrix", "-m", tiny_model, "x", "y", "--against", str(HAYDEN), "-q")

    assert result.code == ExitStatus.OK
    assert result.stderr == ""
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["", *HAYDEN_LINES]
    assert [row[0] for row in rows[1:]] == ["x", "y"]
    assert all(len(row) == 5 for row in rows[1:])


def test_missing_against_file_is_an_input_error(cli, tiny_model, tmp_path, no_model):
    result = cli("matrix", "-m", tiny_model, "x", "--against", str(tmp_path / "nope.txt"))

    assert_error(result, ExitStatus.INPUT, "nope.txt")


# --- formats -----------------------------------------------------------------------------


def test_list_format(cli, st_minilm_hayden):
    """The notes' layout: each text, then every text (itself too) in input order, each cut
    at 100 characters and followed by "..." however short."""
    result = cli("matrix", "-m", "minilm", "-i", str(HAYDEN), "--format", "list")

    assert result.code == ExitStatus.OK
    assert result.stderr == ""
    assert result.stdout.endswith("\n\n")
    blocks = result.stdout[:-2].split("\n\n")
    assert len(blocks) == 4
    for i, block in enumerate(blocks):
        head, *items = block.split("\n")
        assert head == HAYDEN_LINES[i]  # each sentence, in full
        assert len(items) == 4  # one line per sentence, itself included, in input order
        for j, item in enumerate(items):
            match = re.fullmatch(r" - (-?\d\.\d{4}): (.*)", item)
            assert match, item
            assert match[2] == HAYDEN_LINES[j][:100] + "..."
            assert abs(float(match[1]) - st_minilm_hayden[i, j]) <= 5e-5 + 1e-5
        assert items[i].startswith(" - 1.0000: ")
    assert "what county is hayden in\n - 1.0000: what county is hayden in...\n" in result.stdout
    assert "\n - 0.8454: Hayden is a city in Kootenai County" in result.stdout
    assert " - -0.0394: organization name...\n" in result.stdout  # short: "..." all the same
    long = HAYDEN_LINES[2]
    assert len(long) > 100 and f": {long[:100]}...\n" in result.stdout


def test_list_format_with_against_lists_every_column(cli, tiny_model):
    result = cli(
        "matrix", "-m", tiny_model, "one", "two", "--against", str(HAYDEN), "-f", "list", "-q"
    )

    assert result.code == ExitStatus.OK
    blocks = result.stdout[:-2].split("\n\n")
    assert [block.split("\n")[0] for block in blocks] == ["one", "two"]
    for block in blocks:
        items = block.split("\n")[1:]
        assert len(items) == 4
        assert items[0].endswith(": what county is hayden in...")
        assert items[3].endswith(": organization name...")


def test_tsv_format(cli, tiny_model):
    result = cli("matrix", "-m", tiny_model, "a, b", "c", "--format", "tsv")

    assert result.code == ExitStatus.OK
    lines = result.stdout.splitlines()
    assert lines[0] == "\ta, b\tc"
    assert [line.split("\t")[0] for line in lines[1:]] == ["a, b", "c"]
    scores = np.array([[float(v) for v in line.split("\t")[1:]] for line in lines[1:]])
    assert scores.shape == (2, 2)
    assert_allclose(np.diag(scores), np.ones(2), atol=1e-5)


def test_npy_needs_an_output_file(cli, tiny_model, no_model):
    result = cli("matrix", "-m", tiny_model, "-i", str(HAYDEN), "--format", "npy")

    assert_error(result, ExitStatus.USAGE, "-o")


def test_npy_output_file_holds_the_matrix(cli, tiny_model, st_tiny, tmp_path):
    out = tmp_path / "scores.npy"

    result = cli("matrix", "-m", tiny_model, "-i", str(HAYDEN), "-o", str(out), "-q")

    assert result.code == ExitStatus.OK
    assert result.stdout == result.stderr == ""
    scores = np.load(out)
    assert scores.shape == (4, 4)
    embeddings = st_tiny.encode(HAYDEN_LINES)
    assert_allclose(scores, st_tiny.similarity(embeddings, embeddings).numpy(), atol=1e-5)


def test_npy_with_against_is_n_by_m(cli, tiny_model, tmp_path):
    out = tmp_path / "scores.npy"

    result = cli("matrix", "-m", tiny_model, "a", "b", "--against", str(QUERIES), "-o", str(out))

    assert result.code == ExitStatus.OK
    assert np.load(out).shape == (2, 12)


def test_table_format(cli, tiny_model, monkeypatch):
    # no colour because stdout is not a terminal, not because of NO_COLOR
    monkeypatch.delenv("NO_COLOR")

    result = cli("matrix", "-m", tiny_model, "-i", str(HAYDEN), "--format", "table", "-q")

    assert result.code == ExitStatus.OK
    assert result.stderr == ""
    assert "\x1b" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].strip() == "similarity, 4×4"
    body = [line for line in lines if line.startswith("│")]
    assert len(body) == 4
    assert all(len(line) <= 100 and line[-1] in BOX_EDGES for line in lines[1:])
    assert re.match(r"│ 1 what county is hayden in\s+│", body[0])
    # long rows are shortened to one line, not wrapped
    assert re.match(r"│ 2 Hayden is a city in Kootenai County.*… │", body[1])
    assert HAYDEN_LINES[1] not in result.stdout
    for line in body:
        assert len(re.findall(r"-?\d\.\d{3}", line)) == 4


def test_table_with_against_has_a_legend_of_the_columns(cli, tiny_model):
    result = cli(
        "matrix", "-m", tiny_model, "x", "y", "--against", str(HAYDEN), "-f", "table", "-q"
    )

    assert result.code == ExitStatus.OK
    lines = result.stdout.splitlines()
    assert lines[0].strip() == "similarity, 2×4"
    assert any(re.match(r"│ x\s+│", line) for line in lines)
    legend = [line.rstrip() for line in lines if re.match(r"\d ", line)]
    assert legend[0] == "1 what county is hayden in"
    assert legend[1].startswith("2 Hayden is a city in Kootenai County") and legend[1].endswith("…")
    assert legend[3] == "4 organization name"


# --- tables too large for a screen -------------------------------------------------------


def test_table_too_wide_for_the_screen_is_refused_before_loading(cli, tmp_path, no_model):
    texts = lines_file(tmp_path / "many.txt", [f"text number {i}" for i in range(60)])

    result = cli("matrix", "-m", "minilm", "-i", texts, "--format", "table")

    assert_error(result, ExitStatus.USAGE, "60×60", "--format csv")


def test_table_with_too_many_columns_is_refused(cli, tmp_path, no_model):
    texts = lines_file(tmp_path / "many.txt", [f"text number {i}" for i in range(60)])

    result = cli("matrix", "-m", "minilm", "a", "b", "--against", texts, "-f", "table")

    assert_error(result, ExitStatus.USAGE, "2×60", "--format csv")


def test_table_with_too_many_rows_is_refused(cli, tmp_path, no_model):
    texts = lines_file(tmp_path / "many.txt", [f"text number {i}" for i in range(1000)])

    result = cli("matrix", "-m", "minilm", "-i", texts, "--against", str(HAYDEN), "-f", "table")

    assert_error(result, ExitStatus.USAGE, "1000×4", "--format csv")


def test_large_matrix_is_fine_as_a_file_format(cli, tiny_model, tmp_path):
    texts = lines_file(tmp_path / "many.txt", [f"text number {i}" for i in range(60)])

    result = cli("matrix", "-m", tiny_model, "-i", texts)

    assert result.code == ExitStatus.OK
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert len(rows) == 61 and all(len(row) == 61 for row in rows)


@pytest.mark.parametrize("count", [8, 9, 10])
def test_a_table_is_shown_whole_or_refused(cli, count):
    """Never a table cut at the screen's edge: every score of an accepted table is shown."""
    result = cli("matrix", "-m", "minilm", *QUERY_LINES[:count], "-f", "table")

    if result.code == ExitStatus.USAGE:
        assert_error(result, ExitStatus.USAGE, f"{count}×{count}", "does not fit")
        return
    assert result.code == ExitStatus.OK
    body = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert len(body) == count
    for line in body:
        assert line.endswith("│"), line
        assert len(re.findall(r"-?\d\.\d{3}", line)) == count


def test_wider_terminal_shows_a_wider_table(cli, tiny_model, monkeypatch):
    assert cli("matrix", "-m", tiny_model, "-i", str(QUERIES), "-f", "table").code == 2
    monkeypatch.setenv("COLUMNS", "200")

    result = cli("matrix", "-m", tiny_model, "-i", str(QUERIES), "-f", "table")

    assert result.code == ExitStatus.OK
    body = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert len(body) == 12
    assert all(line.endswith("│") for line in body)
    assert all(len(re.findall(r"-?\d\.\d{3}", line)) == 12 for line in body)


# --- --pairwise --------------------------------------------------------------------------


def test_pairwise_from_a_tsv_file_defaults_to_tsv_lines(cli, st_minilm):
    result = cli("matrix", "-m", "minilm", "--pairwise", "-i", str(PAIRS))

    assert result.code == ExitStatus.OK
    assert result.stderr == ""
    header, *lines = result.stdout.splitlines()
    assert header == "score\ta\tb"  # as every CSV and TSV here has
    assert len(lines) == len(PAIR_ROWS) == 12
    fields = [line.split("\t") for line in lines]
    assert all(len(f) == 3 for f in fields)
    assert [[a, b] for _, a, b in fields] == PAIR_ROWS
    a, b = zip(*PAIR_ROWS, strict=True)
    expected = st_minilm.similarity_pairwise(st_minilm.encode(list(a)), st_minilm.encode(list(b)))
    assert_allclose([float(s) for s, _, _ in fields], expected.numpy(), atol=1e-5)
    scores = dict(zip(a, (float(s) for s, _, _ in fields), strict=True))
    # paraphrases score far above unrelated pairs
    assert scores["How do I reset my email password?"] > 0.8
    assert scores["The jazz quartet played until midnight."] < 0.2


def test_pairwise_jsonl_in_input_order(cli, tiny_model, st_tiny):
    result = cli("matrix", "-m", tiny_model, "--pairwise", "-i", str(PAIRS), "-f", "jsonl")

    assert result.code == ExitStatus.OK
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(list(r) == ["a", "b", "score"] for r in records)
    assert [[r["a"], r["b"]] for r in records] == PAIR_ROWS
    a, b = zip(*PAIR_ROWS, strict=True)
    expected = st_tiny.similarity_pairwise(st_tiny.encode(list(a)), st_tiny.encode(list(b)))
    assert_allclose([r["score"] for r in records], expected.numpy(), atol=1e-5)


def test_pairwise_with_against_pairs_line_by_line(cli, tiny_model, st_tiny, tmp_path):
    left = ["a cat sat", "stock prices", "rainy weather"]
    right = ["a dog ran", "bond yields", "sunny skies"]
    against = lines_file(tmp_path / "b.txt", right)

    result = cli("matrix", "-m", tiny_model, *left, "--against", against, "--pairwise")

    assert result.code == ExitStatus.OK
    fields = [line.split("\t") for line in result.stdout.splitlines()[1:]]
    assert [(a, b) for _, a, b in fields] == list(zip(left, right, strict=True))
    expected = st_tiny.similarity_pairwise(st_tiny.encode(left), st_tiny.encode(right))
    assert_allclose([float(s) for s, _, _ in fields], expected.numpy(), atol=1e-5)


def test_pairwise_from_a_csv_file(cli, tiny_model, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text('left,right\n"one, two",three\nfour,"five ""5"""\n', encoding="utf-8")

    result = cli("matrix", "-m", tiny_model, "--pairwise", "-i", str(pairs), "-f", "json")

    assert result.code == ExitStatus.OK
    records = json.loads(result.stdout)
    assert [(r["a"], r["b"]) for r in records] == [("one, two", "three"), ("four", 'five "5"')]


def test_pairwise_length_mismatch_is_a_usage_error(cli, tiny_model, tmp_path, no_model):
    against = lines_file(tmp_path / "b.txt", ["x", "y", "z"])

    result = cli("matrix", "-m", tiny_model, "a", "b", "--against", against, "--pairwise")

    assert_error(result, ExitStatus.USAGE, "--pairwise", "2", "3")


def test_pairwise_needs_a_two_column_file(cli, tiny_model, tmp_path, no_model):
    result = cli("matrix", "-m", tiny_model, "--pairwise", "-i", str(HAYDEN))

    assert_error(result, ExitStatus.INPUT, "--pairwise")


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_pairwise_csv_and_tsv_start_with_a_header(cli, tiny_model, fmt):
    """A reader that takes the first row as the header (pandas, csvkit) gets every pair."""
    result = cli("matrix", "-m", tiny_model, "--pairwise", "-i", str(PAIRS), "-f", fmt, "-q")

    assert result.code == ExitStatus.OK
    delimiter = "," if fmt == "csv" else "\t"
    records = list(csv.DictReader(io.StringIO(result.stdout), delimiter=delimiter))
    assert [[r["a"], r["b"]] for r in records] == PAIR_ROWS
    assert all(-1 <= float(r["score"]) <= 1 for r in records)
