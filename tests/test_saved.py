"""Saved embeddings say what they are (a ``meta`` in every JSON record, a ``.npy.json``
beside an array), and a reader that cannot be sure refuses with the true reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_error
from numpy.testing import assert_allclose

from modernbert_cli import saved
from modernbert_cli.errors import ExitStatus, InputError
from modernbert_cli.inputs import Text

SAMPLES = Path(__file__).resolve().parent.parent / "sample_inputs"
CORPUS = SAMPLES / "corpus.txt"
CORPUS_LINES = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
TINY_DIMS = 32


@pytest.fixture
def embed_corpus(cli, tiny_model, tmp_path):
    """`embed -i corpus.txt -o NAME ARGS…` with the tiny model; returns the file."""

    def run(name: str, *args: str) -> Path:
        path = tmp_path / name
        result = cli("embed", "-m", tiny_model, "-i", str(CORPUS), "-o", str(path), "-q", *args)
        assert result.code == ExitStatus.OK, result.stderr
        return path

    return run


@pytest.fixture
def similar_with(cli, tiny_model):
    """`similar volcanoes --embeddings FILE ARGS…` with the tiny model."""

    def run(path: Path, *args: str):
        return cli("similar", "-m", tiny_model, "volcanoes", "--embeddings", str(path), *args)

    return run


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_records(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


# --- what is written ---------------------------------------------------------------------


def test_every_json_record_says_what_its_vector_is(embed_corpus):
    path = embed_corpus("c.jsonl", "--normalize", "--truncate-dim", "16")

    metas = [r["meta"] for r in records(path)]
    assert len(metas) == len(CORPUS_LINES)
    assert all(meta == metas[0] for meta in metas)
    expected = {
        "version": 1,
        "precision": "float32",
        "dimensions": 16,
        "normalized": True,
        "truncate_dim": 16,
    }
    assert {key: metas[0].get(key) for key in expected} == expected


def test_the_json_list_carries_the_same_records(embed_corpus):
    lines = records(embed_corpus("c.jsonl"))
    assert json.loads(embed_corpus("c.json").read_text()) == lines


def test_plain_readers_need_nothing_to_skip(embed_corpus):
    """pandas and jq see one row per text, with `meta` as one more column."""
    import pandas

    frame = pandas.read_json(embed_corpus("c.jsonl"), lines=True)
    assert list(frame.columns) == ["text", "source", "model", "embedding", "meta"]
    assert list(frame["text"]) == CORPUS_LINES


def test_an_array_has_its_description_beside_it(embed_corpus, tiny_model):
    path = embed_corpus("c.npy", "--precision", "uint8")

    described = json.loads(saved.sidecar_path(path).read_text())
    data = np.load(path)
    expected = {
        "format": "modernbert-cli embeddings",
        "model": str(Path(tiny_model).resolve()),
        "version": 1,
        "precision": "uint8",
        "dimensions": TINY_DIMS,
        "normalized": False,
        "rows": len(CORPUS_LINES),
        "dtype": "uint8",
    }
    assert {key: described.get(key) for key in expected} == expected
    assert len(described["data_blake2b"]) == len(described["texts_blake2b"]) == 32
    assert data.dtype == np.uint8 and data.shape == (len(CORPUS_LINES), TINY_DIMS)


def test_describe_refuses_a_precision_its_values_are_not():
    with pytest.raises(ValueError, match="int8"):
        saved.describe({"precision": "int8"}, np.zeros((2, 4), np.float32))
    described = saved.describe({"precision": "ubinary"}, np.zeros((2, 4), np.uint8))
    assert described["dimensions"] == 32  # eight bits to a byte


# --- what is read back -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["c.jsonl", "c.json", "c.npy"])
def test_load_returns_what_the_file_says(embed_corpus, tiny_model, name):
    path = embed_corpus(name, "--normalize")
    texts = [Text(t, f"{CORPUS}:{i}") for i, t in enumerate(CORPUS_LINES, 1)]

    corpus = saved.load(str(path), texts if name.endswith(".npy") else ())

    assert corpus.model == str(Path(tiny_model).resolve())
    assert corpus.meta["precision"] == "float32" and corpus.meta["normalized"] is True
    assert corpus.embeddings.dtype == np.float32
    assert_allclose(np.linalg.norm(corpus.embeddings, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
@pytest.mark.parametrize("name", ["c.jsonl", "c.npy"])
def test_quantized_embeddings_are_refused_with_the_true_reason(
    embed_corpus, similar_with, name, precision
):
    """Not ranked by raw integers, and not "the model makes 384 dimensions" for binary."""
    path = embed_corpus(name, "--precision", precision)
    texts = ("-i", str(CORPUS)) if name.endswith(".npy") else ()

    result = similar_with(path, *texts)

    assert_error(result, ExitStatus.INPUT, str(path), f"holds {precision} embeddings", "float32")
    assert "without --precision" in result.stderr
    assert "dimensions" not in result.stderr


def test_an_old_float_jsonl_without_meta_is_still_read(embed_corpus, similar_with, tmp_path):
    path = embed_corpus("c.jsonl")
    old = tmp_path / "old.jsonl"
    write_records(old, [{k: v for k, v in r.items() if k != "meta"} for r in records(path)])

    new_result, old_result = similar_with(path), similar_with(old)

    assert new_result.code == old_result.code == ExitStatus.OK, old_result.stderr
    assert old_result.stdout == new_result.stdout
    assert saved.load(str(old)).meta is None


def test_an_old_integer_jsonl_without_meta_is_refused(embed_corpus, similar_with, tmp_path):
    path = embed_corpus("c.jsonl", "--precision", "int8")
    old = tmp_path / "old.jsonl"
    write_records(old, [{k: v for k, v in r.items() if k != "meta"} for r in records(path)])

    assert_error(similar_with(old), ExitStatus.INPUT, str(old), "integer values", "float32")


def test_an_old_integer_npy_without_description_is_refused(similar_with, tmp_path):
    old = tmp_path / "old.npy"
    np.save(old, np.ones((len(CORPUS_LINES), 4), dtype=np.uint8))

    result = similar_with(old, "-i", str(CORPUS))

    assert_error(result, ExitStatus.INPUT, str(old), "integer values", "old.npy.json")


def test_an_old_float_npy_without_description_is_still_read(embed_corpus, similar_with):
    path = embed_corpus("c.npy")
    with_description = similar_with(path, "-i", str(CORPUS))
    saved.sidecar_path(path).unlink()

    without = similar_with(path, "-i", str(CORPUS))

    assert with_description.code == without.code == ExitStatus.OK, without.stderr
    assert without.stdout == with_description.stdout


def test_joined_files_of_two_kinds_are_refused(embed_corpus, similar_with, tmp_path):
    floats, ints = embed_corpus("f.jsonl"), embed_corpus("i.jsonl", "--precision", "int8")
    joined = tmp_path / "joined.jsonl"
    joined.write_text(floats.read_text() + ints.read_text())

    result = similar_with(joined)

    line = len(CORPUS_LINES) + 1
    assert_error(result, ExitStatus.INPUT, f"{joined}:{line}", "precision", "int8")


def test_a_newer_description_is_refused(embed_corpus, similar_with):
    path = embed_corpus("c.jsonl")
    rows = records(path)
    for row in rows:
        row["meta"]["version"] = 2
    write_records(path, rows)

    assert_error(similar_with(path), ExitStatus.INPUT, str(path), "newer modernbert-cli")


def test_an_array_given_other_texts_is_refused(embed_corpus, similar_with, tmp_path):
    path = embed_corpus("c.npy")
    shuffled = tmp_path / "shuffled.txt"
    shuffled.write_text("".join(f"{t}\n" for t in reversed(CORPUS_LINES)))

    result = similar_with(path, "-i", str(shuffled))

    assert_error(result, ExitStatus.INPUT, str(path), "not the ones it was made from")


def test_an_array_changed_since_embed_is_refused(embed_corpus, similar_with):
    path = embed_corpus("c.npy")
    np.save(path, np.load(path) * 2)  # same shape and type, other values

    result = similar_with(path, "-i", str(CORPUS))

    assert_error(result, ExitStatus.INPUT, str(path), "c.npy.json", "re-run embed")


def test_an_array_of_other_rows_than_described_is_refused(embed_corpus, similar_with):
    path = embed_corpus("c.npy")
    np.save(path, np.load(path)[:-1])

    result = similar_with(path, "-i", str(CORPUS))

    assert_error(result, ExitStatus.INPUT, str(path), "does not match c.npy.json")


def test_a_broken_description_is_an_input_error(embed_corpus):
    path = embed_corpus("c.npy")
    saved.sidecar_path(path).write_text("{not json")
    texts = [Text(t, "x") for t in CORPUS_LINES]

    with pytest.raises(InputError, match=r"c\.npy\.json:1: invalid JSON"):
        saved.load(str(path), texts)


def test_other_settings_are_named_and_a_truncated_file_is_scored_as_made(
    embed_corpus, similar_with, tmp_path
):
    """A file made with other settings warns (after the results); truncate_dim is followed."""
    shorter = embed_corpus("short.jsonl", "--max-seq-length", "64")
    result = similar_with(shorter, "-f", "jsonl")
    assert result.code == ExitStatus.OK, result.stderr
    assert result.stdout.count("\n") == 10
    assert "made from other model files or settings" in result.stderr

    same = similar_with(embed_corpus("same.jsonl"), "-f", "jsonl")
    assert same.code == ExitStatus.OK and "other model files" not in same.stderr

    cut = embed_corpus("cut.jsonl", "--truncate-dim", "16")
    hits = similar_with(cut, "-f", "jsonl", "-k", "3")
    assert hits.code == ExitStatus.OK, hits.stderr  # not "16 dimensions but … makes 32"
    assert hits.stdout.count("\n") == 3
