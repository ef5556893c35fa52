"""`similar`: rank a corpus by similarity to a query, through the real CLI.

Numbers are checked against sentence-transformers' own (``st_minilm``) to 1e-5;
meaning is checked with minilm, plumbing with the fast tiny model.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MAX_SEQ_LENGTH, assert_error
from numpy.testing import assert_allclose

from modernbert_cli.errors import ExitStatus

SAMPLES = Path(__file__).resolve().parent.parent / "sample_inputs"
HAYDEN = SAMPLES / "hayden.txt"
HAYDEN_LINES = HAYDEN.read_text(encoding="utf-8").splitlines()
QUERY = HAYDEN_LINES[0]  # "what county is hayden in"
KOOTENAI, HAYDEN_AREA, ORGANIZATION = HAYDEN_LINES[1:4]
CORPUS = SAMPLES / "corpus.txt"
CORPUS_LINES = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
QUERIES = SAMPLES / "queries.txt"
QUERY_LINES = [line for line in QUERIES.read_text(encoding="utf-8").splitlines() if line.strip()]
NOTES = SAMPLES / "notes"
FIELDS = ["query", "rank", "score", "text", "source"]
DISTANCES = {"euclidean": 2, "manhattan": 1}  # the norm each metric negates


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def st_scores(model, queries: list[str], corpus: list[str], metric: str | None = None):
    """sentence-transformers' own scores, queries × corpus."""
    from sentence_transformers import SimilarityFunction

    q, c = model.encode_query(queries), model.encode_document(corpus)
    if metric is None:
        return model.similarity(q, c).numpy()
    return SimilarityFunction.to_similarity_fn(metric)(q, c).numpy()


@pytest.fixture(scope="module")
def prompted_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny ModernBERT whose config defines query and document prompts."""
    from modernbert_cli.testing import build_modernbert

    path = tmp_path_factory.mktemp("models") / "tiny-prompted"
    prompts = {"query": "query: ", "document": "passage: "}
    return str(build_modernbert(path, max_seq_length=128, prompts=prompts))


@pytest.fixture(scope="module")
def dot_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny ModernBERT whose own similarity function is the dot product."""
    from modernbert_cli.testing import build_modernbert

    path = tmp_path_factory.mktemp("models") / "tiny-dot"
    return str(build_modernbert(path, max_seq_length=128, similarity_fn_name="dot"))


# --- ranking -----------------------------------------------------------------------------


def test_hayden_ranks_kootenai_first_and_organization_name_last(cli, st_minilm):
    result = cli("similar", "-m", "minilm", QUERY, KOOTENAI, HAYDEN_AREA, ORGANIZATION)

    assert result.code == ExitStatus.OK
    assert result.stderr == ""
    hits = records(result.stdout)
    assert [h["text"] for h in hits] == [KOOTENAI, HAYDEN_AREA, ORGANIZATION]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert [h["source"] for h in hits] == ["<arg>:1", "<arg>:2", "<arg>:3"]
    assert {h["query"] for h in hits} == {QUERY}
    expected = st_scores(st_minilm, [QUERY], [KOOTENAI, HAYDEN_AREA, ORGANIZATION])[0]
    assert_allclose([h["score"] for h in hits], expected, atol=1e-5)


def test_corpus_from_file_keeps_file_and_line_as_source(cli):
    result = cli("similar", "-m", "minilm", QUERY, "-i", str(HAYDEN))

    assert result.code == ExitStatus.OK
    hits = records(result.stdout)
    assert len(hits) == 4  # the query line is part of this corpus
    by_text = {h["text"]: h["source"] for h in hits}
    assert by_text[KOOTENAI] == f"{HAYDEN}:2"
    assert by_text[ORGANIZATION] == f"{HAYDEN}:4"
    assert [h["text"] for h in hits][1:] == [KOOTENAI, HAYDEN_AREA, ORGANIZATION]


def test_corpus_from_piped_stdin(cli, tiny_model):
    result = cli("similar", "-m", tiny_model, "a query", input="alpha\n\nbeta\ngamma\n")

    assert result.code == ExitStatus.OK
    assert result.stderr == ""
    hits = records(result.stdout)
    assert sorted(h["text"] for h in hits) == ["alpha", "beta", "gamma"]
    assert {h["text"]: h["source"] for h in hits} == {
        "alpha": "<stdin>:1",
        "beta": "<stdin>:3",
        "gamma": "<stdin>:4",
    }


def test_default_output_when_piped_is_jsonl_best_first(cli, tiny_model):
    result = cli("similar", "-m", tiny_model, "-i", str(CORPUS), "volcanic eruptions")

    assert result.code == ExitStatus.OK
    lines = result.stdout.splitlines()
    assert len(lines) == 10  # the default --top-k
    hits = [json.loads(line) for line in lines]
    assert all(list(h) == FIELDS for h in hits)
    assert [h["rank"] for h in hits] == list(range(1, 11))
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(h["text"] in CORPUS_LINES for h in hits)
    assert all(re.fullmatch(rf"{re.escape(str(CORPUS))}:\d+", h["source"]) for h in hits)


# --- many queries ------------------------------------------------------------------------


def test_queries_file_scores_each_query_against_the_corpus(cli, st_minilm):
    result = cli("similar", "-m", "minilm", "--queries", str(QUERIES), "-i", str(CORPUS), "-k", "3")

    assert result.code == ExitStatus.OK
    hits = records(result.stdout)
    assert len(hits) == 3 * len(QUERY_LINES)
    scores = st_scores(st_minilm, QUERY_LINES, CORPUS_LINES)
    for i, query in enumerate(QUERY_LINES):
        mine = hits[3 * i : 3 * i + 3]
        assert [h["query"] for h in mine] == [query] * 3
        assert [h["rank"] for h in mine] == [1, 2, 3]
        best = np.argsort(-scores[i], kind="stable")[:3]
        assert [h["text"] for h in mine] == [CORPUS_LINES[j] for j in best]
        assert_allclose([h["score"] for h in mine], scores[i][best], atol=1e-5)
    best = {h["query"]: h["text"].lower() for h in hits if h["rank"] == 1}
    assert "honey" in best["how do bees make honey"]
    assert "gutenberg" in best["when did gutenberg invent the printing press"]


def test_with_queries_every_argument_is_a_corpus_text(cli, tiny_model, tmp_path):
    queries = tmp_path / "q.txt"
    queries.write_text("first query\nsecond query\n", encoding="utf-8")

    result = cli("similar", "-m", tiny_model, "--queries", str(queries), "apple", "banana")

    assert result.code == ExitStatus.OK
    hits = records(result.stdout)
    assert [h["query"] for h in hits] == ["first query"] * 2 + ["second query"] * 2
    assert {h["text"] for h in hits} == {"apple", "banana"}
    assert {h["source"] for h in hits} == {"<arg>:1", "<arg>:2"}


def test_queries_file_with_corpus_piped(cli, tiny_model, tmp_path):
    queries = tmp_path / "q.txt"
    queries.write_text("one\ntwo\nthree\n", encoding="utf-8")

    result = cli("similar", "-m", tiny_model, "--queries", str(queries), input="x\ny\n")

    assert result.code == ExitStatus.OK
    hits = records(result.stdout)
    assert [h["query"] for h in hits] == ["one", "one", "two", "two", "three", "three"]
    assert {h["source"] for h in hits} == {"<stdin>:1", "<stdin>:2"}


def test_queries_and_corpus_cannot_both_read_stdin(cli, tiny_model):
    result = cli("similar", "-m", tiny_model, "--queries", "-", input="q\n")

    assert_error(result, ExitStatus.USAGE, "stdin")


# --- top-k and threshold -----------------------------------------------------------------


@pytest.mark.parametrize(("k", "expected"), [("1", 1), ("5", 5), ("100", 36)])
def test_top_k_limits_results_per_query(cli, tiny_model, k, expected):
    assert len(CORPUS_LINES) == 36
    result = cli("similar", "-m", tiny_model, "q", "-i", str(CORPUS), "--top-k", k)

    assert result.code == ExitStatus.OK
    hits = records(result.stdout)
    assert [h["rank"] for h in hits] == list(range(1, expected + 1))


def test_short_k_option(cli, tiny_model):
    result = cli("similar", "-m", tiny_model, "q", "-i", str(CORPUS), "-k", "2")

    assert result.code == ExitStatus.OK
    assert len(result.stdout.splitlines()) == 2


def test_top_k_zero_is_a_usage_error(cli, tiny_model):
    result = cli("similar", "-m", tiny_model, "q", "a", "-k", "0")

    assert_error(result, ExitStatus.USAGE, "--top-k")


def test_threshold_keeps_only_scores_at_least_it(cli, st_minilm):
    result = cli(
        "similar", "-m", "minilm", QUERY, KOOTENAI, HAYDEN_AREA, ORGANIZATION, "--threshold", "0.4"
    )

    assert result.code == ExitStatus.OK
    hits = records(result.stdout)
    # minilm: 0.845 and 0.481 pass, "organization name" (-0.039) does not
    assert [h["text"] for h in hits] == [KOOTENAI, HAYDEN_AREA]
    assert all(h["score"] >= 0.4 for h in hits)
    expected = st_scores(st_minilm, [QUERY], [KOOTENAI, HAYDEN_AREA])[0]
    assert_allclose([h["score"] for h in hits], expected, atol=1e-5)


def test_threshold_above_every_score_gives_empty_output(cli, tiny_model):
    result = cli("similar", "-m", tiny_model, "q", "a", "b", "--threshold", "1.5")

    assert result.code == ExitStatus.OK
    assert result.stdout == ""
    assert result.stderr == ""


def test_threshold_above_every_score_in_a_table_says_so(cli, tiny_model):
    result = cli("similar", "-m", tiny_model, "q", "a", "b", "--threshold", "1.5", "-f", "table")

    assert result.code == ExitStatus.OK
    assert "no results above the threshold" in result.stdout
    assert "<arg>:" not in result.stdout


# --- metrics -----------------------------------------------------------------------------


# cosine, the default, is checked against sentence-transformers above
@pytest.mark.parametrize("metric", ["dot", "euclidean", "manhattan"])
def test_metric_scores_equal_sentence_transformers(cli, st_minilm, metric):
    corpus = [KOOTENAI, HAYDEN_AREA, ORGANIZATION]
    result = cli("similar", "-m", "minilm", QUERY, *corpus, "--metric", metric)

    assert result.code == ExitStatus.OK
    hits = records(result.stdout)
    expected = st_scores(st_minilm, [QUERY], corpus, metric)[0]
    order = np.argsort(-expected, kind="stable")
    assert [h["text"] for h in hits] == [corpus[j] for j in order]
    assert_allclose([h["score"] for h in hits], expected[order], atol=1e-5)
    if metric in DISTANCES:  # negative distances: -‖q - d‖
        vectors = st_minilm.encode([QUERY, *corpus]).astype(np.float64)
        distances = np.linalg.norm(vectors[1:] - vectors[0], ord=DISTANCES[metric], axis=1)
        assert all(h["score"] <= 0 for h in hits)
        assert_allclose([h["score"] for h in hits], -distances[order], atol=1e-5)


def test_unknown_metric_is_a_usage_error(cli, tiny_model):
    result = cli("similar", "-m", tiny_model, "q", "a", "--metric", "jaccard")

    assert_error(result, ExitStatus.USAGE, "--metric")


def test_default_metric_is_the_models_own(cli, dot_model):
    from sentence_transformers import SentenceTransformer, util

    corpus = ["a cat sat on the mat", "stock prices fell", "the weather is nice"]
    result = cli("similar", "-m", dot_model, "cats", *corpus)

    assert result.code == ExitStatus.OK
    scores = {h["text"]: h["score"] for h in records(result.stdout)}
    model = SentenceTransformer(dot_model, device="cpu")
    assert model.similarity_fn_name == "dot"
    q, c = model.encode_query(["cats"]), model.encode_document(corpus)
    got = [scores[t] for t in corpus]
    assert_allclose(got, model.similarity(q, c).numpy()[0], rtol=1e-5, atol=1e-5)
    assert_allclose(got, (q @ c.T)[0], rtol=1e-5, atol=1e-5)
    cosine = util.cos_sim(q, c).numpy()[0]
    assert np.abs(np.array(got) - cosine).max() > 1e-3


def test_metric_option_overrides_the_models_own(cli, dot_model):
    result = cli("similar", "-m", dot_model, "cats", "a cat", "a dog", "--metric", "cosine")

    assert result.code == ExitStatus.OK
    assert all(-1.0 - 1e-6 <= h["score"] <= 1.0 + 1e-6 for h in records(result.stdout))


def test_table_title_names_the_metric_used(cli, dot_model):
    result = cli("similar", "-m", dot_model, "cats", "a cat", "-f", "table")

    assert result.code == ExitStatus.OK
    assert result.stdout.splitlines()[0].strip() == "cats · dot"


# --- saved embeddings --------------------------------------------------------------------


def test_saved_jsonl_embeddings_give_the_same_results(cli, tiny_model, tmp_path):
    saved = tmp_path / "c.jsonl"
    made = cli("embed", "-m", tiny_model, "-i", str(CORPUS), "-o", str(saved))
    assert made.code == ExitStatus.OK

    direct = cli("similar", "-m", tiny_model, "volcanoes", "-i", str(CORPUS), "-k", "5")
    again = cli("similar", "-m", tiny_model, "volcanoes", "--embeddings", str(saved), "-k", "5")

    assert direct.code == again.code == ExitStatus.OK
    assert again.stderr == ""  # nothing embedded but the query
    want, got = records(direct.stdout), records(again.stdout)
    assert [(h["text"], h["source"], h["rank"]) for h in got] == [
        (h["text"], h["source"], h["rank"]) for h in want
    ]
    assert_allclose([h["score"] for h in got], [h["score"] for h in want], atol=1e-5)


def test_saved_npy_embeddings_with_their_texts_give_the_same_results(cli, tiny_model, tmp_path):
    saved = tmp_path / "c.npy"
    assert cli("embed", "-m", tiny_model, "-i", str(CORPUS), "-o", str(saved)).code == 0

    direct = cli("similar", "-m", tiny_model, "coffee", "-i", str(CORPUS), "-k", "4")
    again = cli(
        "similar",
        "-m",
        tiny_model,
        "coffee",
        "--embeddings",
        str(saved),
        "-i",
        str(CORPUS),
        "-k",
        "4",
    )

    assert direct.code == again.code == ExitStatus.OK
    want, got = records(direct.stdout), records(again.stdout)
    assert [(h["text"], h["source"]) for h in got] == [(h["text"], h["source"]) for h in want]
    assert_allclose([h["score"] for h in got], [h["score"] for h in want], atol=1e-5)


def test_saved_npy_without_texts_is_an_input_error(cli, tiny_model, tmp_path):
    saved = tmp_path / "c.npy"
    np.save(saved, np.ones((3, 32), dtype=np.float32))

    result = cli("similar", "-m", tiny_model, "q", "--embeddings", str(saved))

    assert_error(result, ExitStatus.INPUT, str(saved), "-i")


def test_saved_npy_with_the_wrong_number_of_texts_is_an_input_error(cli, tiny_model, tmp_path):
    saved = tmp_path / "c.npy"
    np.save(saved, np.ones((3, 32), dtype=np.float32))

    result = cli("similar", "-m", tiny_model, "q", "--embeddings", str(saved), "-i", str(HAYDEN))

    assert_error(result, ExitStatus.INPUT, str(saved), "3", "4")


def test_saved_jsonl_of_another_model_is_a_usage_error_naming_it(cli, tiny_model, tmp_path):
    saved = tmp_path / "c.jsonl"
    assert cli("embed", "-m", "minilm", "a", "b", "-o", str(saved)).code == 0

    result = cli("similar", "-m", tiny_model, "q", "--embeddings", str(saved))

    assert_error(result, ExitStatus.USAGE, "'minilm'", "-m minilm")


def test_saved_npy_of_another_model_is_a_usage_error_naming_it(cli, tiny_model, tmp_path):
    """The array's description (c.npy.json) names the model that made it."""
    saved = tmp_path / "c.npy"
    assert cli("embed", "-m", tiny_model, "-i", str(HAYDEN), "-q", "-o", str(saved)).code == 0

    result = cli("similar", "-m", "minilm", QUERY, "--embeddings", str(saved), "-i", str(HAYDEN))

    assert_error(result, ExitStatus.USAGE, f"'{tiny_model}'", "'minilm'")


def test_saved_npy_of_another_dimension_is_a_usage_error(cli, tmp_path):
    saved = tmp_path / "c.npy"
    np.save(saved, np.ones((4, 32), dtype=np.float32))  # an old file: no description

    result = cli("similar", "-m", "minilm", QUERY, "--embeddings", str(saved), "-i", str(HAYDEN))

    assert_error(result, ExitStatus.USAGE, "32", "384")


def test_saved_jsonl_does_not_take_more_texts(cli, tiny_model, tmp_path):
    saved = tmp_path / "c.jsonl"
    assert cli("embed", "-m", tiny_model, "a", "b", "-o", str(saved)).code == 0

    result = cli("similar", "-m", tiny_model, "q", "c", "--embeddings", str(saved))

    assert_error(result, ExitStatus.INPUT, str(saved))


def test_missing_embeddings_file_is_an_input_error(cli, tiny_model, tmp_path):
    result = cli("similar", "-m", tiny_model, "q", "--embeddings", str(tmp_path / "no.jsonl"))

    assert_error(result, ExitStatus.INPUT, "no such file")


# --- output formats ----------------------------------------------------------------------


@pytest.fixture
def three_hits(cli, tiny_model):
    """The jsonl results of one small query, to compare other formats with."""
    result = cli("similar", "-m", tiny_model, "q", "alpha, one", "beta\ttwo", 'gamma "3"')
    assert result.code == ExitStatus.OK
    return records(result.stdout)


def test_json_format_is_a_list_of_the_same_records(cli, tiny_model, three_hits):
    result = cli(
        "similar", "-m", tiny_model, "q", "alpha, one", "beta\ttwo", 'gamma "3"', "-f", "json"
    )

    assert result.code == ExitStatus.OK
    assert result.stderr == ""
    assert json.loads(result.stdout) == three_hits


def test_csv_format_has_a_header_and_one_row_per_result(cli, tiny_model, three_hits):
    result = cli(
        "similar", "-m", tiny_model, "q", "alpha, one", "beta\ttwo", 'gamma "3"', "-f", "csv"
    )

    assert result.code == ExitStatus.OK
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == FIELDS
    assert [row[3] for row in rows[1:]] == [h["text"] for h in three_hits]
    assert [int(row[1]) for row in rows[1:]] == [1, 2, 3]
    assert_allclose([float(row[2]) for row in rows[1:]], [h["score"] for h in three_hits])
    assert [row[4] for row in rows[1:]] == [h["source"] for h in three_hits]


def test_tsv_format_escapes_tabs(cli, tiny_model, three_hits):
    result = cli(
        "similar", "-m", tiny_model, "q", "alpha, one", "beta\ttwo", 'gamma "3"', "-f", "tsv"
    )

    assert result.code == ExitStatus.OK
    lines = result.stdout.splitlines()
    assert lines[0].split("\t") == FIELDS
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(row) == 5 for row in rows)
    texts = [h["text"].replace("\t", "\\t") for h in three_hits]
    assert [row[3] for row in rows] == texts


def test_table_format_has_rank_score_bar_text_and_source(cli, tiny_model, monkeypatch):
    # no colour because stdout is not a terminal, not because of NO_COLOR
    monkeypatch.delenv("NO_COLOR")

    result = cli(
        "similar", "-m", tiny_model, "my query", "first text", "second text", "-f", "table"
    )

    assert result.code == ExitStatus.OK
    assert result.stderr == ""
    assert "\x1b" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].strip() == "my query · cosine"
    header = next(line for line in lines if "rank" in line)
    assert re.search(r"rank\W+score\W+text\W+source", header)
    rows = [line for line in lines if "<arg>:" in line]
    assert len(rows) == 2
    for rank, row in enumerate(rows, 1):
        assert re.search(rf"^\W*{rank}\W+-?\d\.\d{{4}}\W+[█░]{{10}}\W+\w+ text\W+<arg>:\d", row)
    assert all(len(line) <= 100 for line in lines)


def test_table_is_the_format_of_a_txt_output_file(cli, tiny_model, tmp_path):
    out = tmp_path / "hits.txt"

    result = cli("similar", "-m", tiny_model, "q", "a text", "-o", str(out))

    assert result.code == ExitStatus.OK
    assert result.stdout == ""
    written = out.read_text(encoding="utf-8")
    assert "rank" in written and "<arg>:1" in written and "\x1b" not in written


def test_npy_format_is_a_usage_error(cli, tiny_model):
    result = cli("similar", "-m", tiny_model, "q", "a", "--format", "npy")

    assert_error(result, ExitStatus.USAGE, "npy")


def test_npy_output_file_is_a_usage_error(cli, tiny_model, tmp_path):
    result = cli("similar", "-m", tiny_model, "q", "a", "-o", str(tmp_path / "hits.npy"))

    assert_error(result, ExitStatus.USAGE, "npy")
    assert not (tmp_path / "hits.npy").exists()


# --- documents ---------------------------------------------------------------------------


def test_documents_rank_files_with_their_paths_as_sources(cli):
    result = cli(
        "similar", "-m", "minilm", "-q", "how do bees make honey", "--documents", "-i", str(NOTES)
    )

    assert result.code == ExitStatus.OK
    assert result.stderr == ""
    hits = records(result.stdout)
    assert hits[0]["source"] == str(NOTES / "bees.md")
    assert hits[0]["text"] == (NOTES / "bees.md").read_text(encoding="utf-8").strip()
    assert sorted(h["source"] for h in hits) == sorted(str(p) for p in NOTES.iterdir())
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]


def test_the_truncation_note_counts_corpus_texts_and_queries_apart(cli, tiny_model, tmp_path):
    """`--documents` said "5 of 6 text(s) truncated": the query was counted as a text."""
    result = cli("similar", "-m", tiny_model, "volcanoes", "--documents", "-i", str(NOTES))
    assert result.code == ExitStatus.OK, result.stderr
    limit = TINY_MAX_SEQ_LENGTH
    assert result.stderr == (
        f"modernbert-cli: 5 of 5 corpus text(s) were longer than {limit} tokens and were "
        "truncated (see --max-seq-length)\n"
    )

    queries = tmp_path / "queries.txt"
    queries.write_text(f"short\n{' '.join(['volcano'] * 300)}\n")
    both = cli("similar", "-m", tiny_model, "--queries", str(queries), "-i", str(NOTES / "bees.md"))
    assert both.code == ExitStatus.OK, both.stderr
    assert both.stderr == (
        f"modernbert-cli: 1 of 2 queries were longer than {limit} tokens and were "
        "truncated (see --max-seq-length)\n"
    )


def test_folder_without_documents_is_an_input_error(cli, tiny_model):
    result = cli("similar", "-m", tiny_model, "q", "-i", str(NOTES))

    assert_error(result, ExitStatus.INPUT, "--documents")


# --- missing or empty input --------------------------------------------------------------


def test_missing_query_is_a_usage_error(cli, tiny_model):
    result = cli("similar", "-m", tiny_model)

    assert_error(result, ExitStatus.USAGE, "QUERY")


def test_missing_query_with_a_corpus_file_is_a_usage_error(cli, tiny_model):
    result = cli("similar", "-m", tiny_model, "-i", str(HAYDEN))

    assert_error(result, ExitStatus.USAGE, "QUERY")


def test_empty_query_is_a_usage_error(cli, tiny_model):
    result = cli("similar", "-m", tiny_model, "  ", "a")

    assert_error(result, ExitStatus.USAGE, "QUERY")


def test_missing_corpus_is_an_input_error(cli, tiny_model):
    result = cli("similar", "-m", tiny_model, "a lonely query")

    assert_error(result, ExitStatus.INPUT, "corpus")


def test_errors_come_before_the_model_is_loaded(cli, monkeypatch):
    from modernbert_cli import model

    def refuse(spec):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(model, "load", refuse)

    assert cli("similar", "-m", "minilm").code == ExitStatus.USAGE
    assert cli("similar", "-m", "minilm", "q").code == ExitStatus.INPUT
    assert cli("similar", "-m", "minilm", "q", "a", "-f", "npy").code == ExitStatus.USAGE


# --- the model's own prompts -------------------------------------------------------------


def test_query_and_document_prompts_are_used(cli, prompted_model):
    from sentence_transformers import SentenceTransformer

    corpus = ["Hayden is a city in Idaho.", "organization name", "bees make honey"]
    result = cli("similar", "-m", prompted_model, QUERY, *corpus)

    assert result.code == ExitStatus.OK
    scores = {h["text"]: h["score"] for h in records(result.stdout)}
    got = [scores[t] for t in corpus]
    model = SentenceTransformer(prompted_model, device="cpu")
    assert model.prompts["query"] == "query: "
    prompted = model.similarity(model.encode_query([QUERY]), model.encode_document(corpus))
    plain = model.similarity(model.encode([QUERY]), model.encode(corpus))
    assert_allclose(got, prompted.numpy()[0], atol=1e-5)
    assert np.abs(np.array(got) - plain.numpy()[0]).max() > 1e-3


def test_query_prompts_are_used_for_every_query_of_a_file(cli, prompted_model, tmp_path):
    from sentence_transformers import SentenceTransformer

    queries = ["what county is hayden in", "how do bees make honey"]
    file = tmp_path / "q.txt"
    file.write_text("\n".join(queries) + "\n", encoding="utf-8")
    corpus = ["Hayden is a city in Idaho.", "bees make honey"]

    result = cli("similar", "-m", prompted_model, "--queries", str(file), *corpus)

    assert result.code == ExitStatus.OK
    model = SentenceTransformer(prompted_model, device="cpu")
    expected = model.similarity(model.encode_query(queries), model.encode_document(corpus))
    for hit in records(result.stdout):
        i, j = queries.index(hit["query"]), corpus.index(hit["text"])
        assert_allclose(hit["score"], expected[i, j].item(), atol=1e-5)


def test_table_cuts_a_long_source_in_the_middle_keeping_the_file_name(cli, tiny_model, tmp_path):
    folder = tmp_path / "a-folder-with-a-rather-long-name" / "and-another-one-below-it"
    folder.mkdir(parents=True)
    corpus = folder / "volcanoes.txt"
    corpus.write_text("lava flows downhill\nbees make honey\n")

    result = cli("similar", "-m", tiny_model, "lava", "-i", str(corpus), "-f", "table")

    assert result.code == ExitStatus.OK
    rows = [line for line in result.stdout.splitlines() if "lava flows" in line]
    assert len(rows) == 1
    assert re.search(r"│ /\S*…/volcanoes\.txt:1 +│$", rows[0]), rows[0]
    assert all(len(line) <= 100 for line in result.stdout.splitlines())


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_threshold_that_is_not_a_finite_number_is_refused(cli, tiny_model, no_model, value):
    """NaN compares false with every score: it used to give no results and exit 0."""
    result = cli("similar", "-m", tiny_model, "q", "a", "b", "--threshold", value)
    assert_error(result, ExitStatus.USAGE, f"--threshold {float(value)}: must be a finite number")
