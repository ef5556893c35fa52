"""Streaming: `embed` and `similar` read, embed and write a chunk of texts at a time.

``cli.CHUNK_TEXTS`` (8192) is patched to 7 so that 50 texts make 8 chunks (the last
one of a single text); every output must be what one chunk gives. Also: the .npy
writer, int8 ranges fixed by the first chunk, top-k kept across chunks, stdin read
twice (scan, then stream) and errors found by the scan before anything is written.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from modernbert_cli import embedder as embedder_module
from modernbert_cli import inputs, model, render, scoring
from modernbert_cli.encoder import Encoder
from modernbert_cli.errors import ExitStatus

CHUNK = 7
WORDS = ["the", "volcano", "river", "backup", "county", "cat", "dog", "night", "ash", "valley"]
# 50 different lines of 2 to 14 words: chunks of 7 hold texts of every length.
TEXTS = [
    " ".join(["line", str(i), *(WORDS[(i * k) % len(WORDS)] for k in range(i % 13))])
    for i in range(50)
]
SIZES_IN_CHUNKS = [CHUNK] * 7 + [1]
TINY_DIMS = 32


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture
def encode_sizes(monkeypatch) -> list[int]:
    """The number of texts of every Encoder.encode call (one call per chunk)."""
    sizes: list[int] = []
    real = Encoder.encode

    def spy(self, texts, *args, **kwargs):
        sizes.append(len(texts))
        return real(self, texts, *args, **kwargs)

    monkeypatch.setattr(Encoder, "encode", spy)
    return sizes


@pytest.fixture
def texts_file(tmp_path, monkeypatch) -> str:
    """TEXTS, one per line, as ``texts.txt`` in the current directory (short sources)."""
    monkeypatch.chdir(tmp_path)
    Path("texts.txt").write_text("".join(f"{t}\n" for t in TEXTS), encoding="utf-8")
    return "texts.txt"


@pytest.fixture
def both(cli, tiny_model, monkeypatch, encode_sizes):
    """Run one command as one chunk, then in chunks of 7; returns both Results.

    ``sizes`` are the texts per Encoder.encode call in chunks of 7 (after the queries'
    call, for `similar`); ``queries`` is the number of queries.
    """

    default = embedder_module.CHUNK_TEXTS

    def run(*args: str, input: str | None = None, sizes=SIZES_IN_CHUNKS, queries: int = 0):
        results = []
        head = [queries] if queries else []
        for chunk, want in ((default, [sum(sizes)]), (CHUNK, sizes)):
            monkeypatch.setattr(embedder_module, "CHUNK_TEXTS", chunk)
            encode_sizes.clear()
            result = cli(*args, "-m", tiny_model, input=input)
            assert result.code == ExitStatus.OK, result.stderr
            assert encode_sizes == head + want  # the chunking took effect
            results.append(result)
        return results

    return run


def jsonl(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def assert_same_records(one: list[dict], chunked: list[dict]) -> None:
    """Same texts, sources, order; the same vectors (to float rounding: batches differ)."""
    strip = [{k: v for k, v in r.items() if k != "embedding"} for r in one]
    assert [{k: v for k, v in r.items() if k != "embedding"} for r in chunked] == strip
    assert_allclose(
        np.array([r["embedding"] for r in chunked]),
        np.array([r["embedding"] for r in one]),
        atol=1e-6,
        rtol=0,
    )


def quantize(vectors: np.ndarray, precision: str, ranges: np.ndarray) -> np.ndarray:
    try:  # sentence-transformers >= 6
        from sentence_transformers.util.quantization import quantize_embeddings
    except ImportError:
        from sentence_transformers.quantization import quantize_embeddings

    return quantize_embeddings(vectors, precision=precision, ranges=ranges)


# --- embed: every format, in chunks ------------------------------------------------------


def test_npy_in_chunks_equals_one_chunk(cli, tiny_model, texts_file, monkeypatch, encode_sizes):
    for name, chunk in (("whole.npy", embedder_module.CHUNK_TEXTS), ("chunked.npy", CHUNK)):
        monkeypatch.setattr(embedder_module, "CHUNK_TEXTS", chunk)
        result = cli("embed", "-m", tiny_model, "-i", texts_file, "-o", name)
        assert result.code == ExitStatus.OK, result.stderr
    assert encode_sizes == [len(TEXTS), *SIZES_IN_CHUNKS]
    whole, chunked = np.load("whole.npy"), np.load("chunked.npy")
    assert chunked.shape == whole.shape == (len(TEXTS), TINY_DIMS)
    assert chunked.dtype == np.float32
    assert_allclose(chunked, whole, atol=1e-6, rtol=0)
    assert_array_equal(np.load("chunked.npy", mmap_mode="r"), chunked)
    names = ["chunked.npy", "chunked.npy.json", "texts.txt", "whole.npy", "whole.npy.json"]
    assert sorted(p.name for p in Path().iterdir()) == names  # no temporary files


def test_jsonl_in_chunks_keeps_order_and_sources(both, texts_file):
    one, chunked = both("embed", "-i", texts_file, "--format", "jsonl")
    records = jsonl(chunked.stdout)
    assert [r["text"] for r in records] == TEXTS
    assert [r["source"] for r in records] == [f"texts.txt:{i}" for i in range(1, 51)]
    assert_same_records(jsonl(one.stdout), records)


def test_json_in_chunks_is_one_valid_list(both, texts_file):
    one, chunked = both("embed", "-i", texts_file, "--format", "json")
    records = json.loads(chunked.stdout)
    assert isinstance(records, list) and len(records) == len(TEXTS)
    assert chunked.stdout.count("[{") == 1 and chunked.stdout.endswith("]\n")
    assert_same_records(json.loads(one.stdout), records)


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_csv_and_tsv_in_chunks_have_one_header(both, texts_file, fmt):
    one, chunked = both("embed", "-i", texts_file, "--format", fmt)
    delimiter = "," if fmt == "csv" else "\t"
    rows = list(csv.reader(io.StringIO(chunked.stdout), delimiter=delimiter))
    header = ["text", "source", *(f"dim_{i}" for i in range(TINY_DIMS))]
    assert rows[0] == header and rows.count(header) == 1
    assert len(rows) == len(TEXTS) + 1
    assert [row[:2] for row in rows[1:]] == [[t, f"texts.txt:{i}"] for i, t in enumerate(TEXTS, 1)]
    one_rows = list(csv.reader(io.StringIO(one.stdout), delimiter=delimiter))
    assert_allclose(
        np.array(rows[1:])[:, 2:].astype(float),
        np.array(one_rows[1:])[:, 2:].astype(float),
        atol=1e-6,
        rtol=0,
    )


def test_table_in_chunks_is_one_table(both, texts_file):
    _, chunked = both("embed", "-i", texts_file, "--format", "table")
    assert chunked.stdout.count("embedding(s) ·") == 1
    assert f"{len(TEXTS)} embedding(s)" in chunked.stdout
    numbers = re.findall(r"^│\s*(\d+) │", chunked.stdout, flags=re.MULTILINE)
    assert numbers == [str(i) for i in range(1, len(TEXTS) + 1)]


# --- NpyWriter ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.int8, np.uint8])
@pytest.mark.parametrize("blocks", [[], [1], [3, 0, 5, 1, 40]], ids=["zero", "one", "many"])
def test_npy_writer(dtype, blocks):
    rng = np.random.default_rng(len(blocks))
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    parts = [
        rng.integers(info.min, info.max, size=(n, 6), endpoint=True).astype(dtype)
        if info
        else rng.standard_normal((n, 6)).astype(dtype)
        for n in blocks
    ]
    stream = io.BytesIO()
    writer = render.NpyWriter(stream, np.dtype(dtype), (6,))
    for part in parts:
        writer.write(part)
    writer.close()
    loaded = np.load(io.BytesIO(stream.getvalue()))
    assert loaded.dtype == dtype
    assert loaded.shape == (sum(blocks), 6)
    assert_array_equal(loaded, np.concatenate(parts) if parts else np.empty((0, 6), dtype))
    assert writer.rows == sum(blocks)


def test_npy_writer_to_a_file_with_a_large_row_count_header(tmp_path):
    """The fixed-size header has room for any row count; the file memory-maps."""
    path = tmp_path / "big.npy"
    with path.open("wb") as stream:
        writer = render.NpyWriter(stream, np.dtype(np.float32), (384,))
        writer.write(np.ones((3, 384), dtype=np.float32))
        writer.rows = 10**15  # as if that many rows had gone by: the header must still fit
        header = writer._header()
        writer.rows = 3
        writer.close()
    assert len(header) == render.NpyWriter._HEADER_BYTES
    assert np.load(path, mmap_mode="r").shape == (3, 384)


# --- int8/uint8: the first chunk's ranges for every chunk ----------------------------------


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_int8_streamed_uses_the_first_chunks_ranges(
    cli, tiny_model, texts_file, monkeypatch, precision
):
    monkeypatch.setattr(embedder_module, "CHUNK_TEXTS", CHUNK)
    for name, extra in (("fp32.npy", []), ("q.npy", ["--precision", precision])):
        result = cli("embed", "-m", tiny_model, "-i", texts_file, *extra, "-o", name)
        assert result.code == ExitStatus.OK, result.stderr
    fp32, quantized = np.load("fp32.npy"), np.load("q.npy")
    first = fp32[:CHUNK]
    ranges = np.vstack([first.min(axis=0), first.max(axis=0)])
    assert quantized.dtype == precision and quantized.shape == (len(TEXTS), TINY_DIMS)
    # The last chunk holds one text, which could not calibrate ranges by itself.
    assert_array_equal(quantized, quantize(fp32, precision, ranges))
    whole = np.vstack([fp32.min(axis=0), fp32.max(axis=0)])
    assert not np.array_equal(quantized, quantize(fp32, precision, whole))


@pytest.mark.parametrize("output", [None, "out.npy"])
def test_int8_of_a_single_text_is_a_usage_error(cli, tiny_model, tmp_path, monkeypatch, output):
    monkeypatch.chdir(tmp_path)
    extra = ["-o", output] if output else []
    result = cli("embed", "-m", tiny_model, "--precision", "int8", "hello", *extra)
    assert result.code == ExitStatus.USAGE, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "--precision int8" in result.stderr and "at least two" in result.stderr
    assert list(tmp_path.iterdir()) == []


# --- similar: the best k kept as the corpus streams past ---------------------------------

# Line 3 comes back at lines 10, 18 and 27: in four different chunks of 7.
DUPLICATE = "the volcano covered the valley in ash"
CORPUS = [
    " ".join(["document", str(i), *(WORDS[(3 * i + k) % len(WORDS)] for k in range(i % 9))])
    for i in range(30)
]
for _line in (3, 10, 18, 27):
    CORPUS[_line - 1] = DUPLICATE
QUERIES = [DUPLICATE, "a dog at night by the river", "violin"]


@pytest.fixture
def corpus_files(tmp_path, monkeypatch) -> tuple[str, str]:
    monkeypatch.chdir(tmp_path)
    Path("corpus.txt").write_text("".join(f"{t}\n" for t in CORPUS), encoding="utf-8")
    Path("queries.txt").write_text("".join(f"{t}\n" for t in QUERIES), encoding="utf-8")
    return "corpus.txt", "queries.txt"


def _similar_both(both, corpus_files, *args):
    corpus, queries = corpus_files
    # --batch-size 1: each text is embedded alone, so its numbers do not depend on
    # which texts share its batch, and the two rankings can be compared exactly.
    one, chunked = both(
        "similar",
        "--queries",
        queries,
        "-i",
        corpus,
        "--format",
        "jsonl",
        "--batch-size",
        "1",
        *args,
        sizes=[CHUNK] * 4 + [2],
        queries=len(QUERIES),
    )
    return jsonl(one.stdout), jsonl(chunked.stdout)


@pytest.mark.parametrize("k", [3, 100], ids=["k3", "k-larger-than-the-corpus"])
def test_similar_in_chunks_ranks_exactly_as_one_chunk(both, corpus_files, k):
    one, chunked = _similar_both(both, corpus_files, "-k", str(k))
    assert chunked == one  # queries, ranks, scores, texts and sources
    assert len(chunked) == len(QUERIES) * min(k, len(CORPUS))


def test_similar_in_chunks_with_a_threshold(both, corpus_files):
    everything, _ = _similar_both(both, corpus_files, "-k", "100")
    threshold = float(np.median([r["score"] for r in everything]))
    one, chunked = _similar_both(both, corpus_files, "-k", "100", "--threshold", str(threshold))
    assert chunked == one
    assert 0 < len(chunked) < len(everything)
    assert all(r["score"] >= threshold for r in chunked)
    assert chunked == [r for r in everything if r["score"] >= threshold]


def test_similar_ties_keep_corpus_order_across_chunks(both, corpus_files):
    one, chunked = _similar_both(both, corpus_files, "-k", "5")
    assert chunked == one
    top = [r for r in chunked if r["query"] == DUPLICATE][:4]
    assert [r["source"] for r in top] == [f"corpus.txt:{n}" for n in (3, 10, 18, 27)]
    assert len({r["score"] for r in top}) == 1  # a four-way tie, in corpus order


# --- TopK --------------------------------------------------------------------------------


def _topk_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Small integer vectors: dot products are exact, and many of them tie."""
    rng = np.random.default_rng(seed)
    queries = rng.integers(-2, 3, size=(4, 5)).astype(np.float32)
    corpus = rng.integers(-2, 3, size=(45, 5)).astype(np.float32)
    corpus[[5, 20, 33]] = corpus[1]  # exact duplicates in different chunks
    return queries, corpus


def _chunked_topk(queries, corpus, sizes, metric="dot", **kwargs) -> scoring.TopK:
    best = scoring.TopK(len(queries), metric, **kwargs)
    start = 0
    for size in sizes:
        rows = corpus[start : start + size]
        best.add(queries, rows, [f"item {i}" for i in range(start, start + len(rows))])
        start += size
    assert start >= len(corpus)
    return best


@pytest.mark.parametrize("k", [1, 3, 10, 100, None])
@pytest.mark.parametrize("threshold", [None, 1.0])
@pytest.mark.parametrize("sizes", [[7] * 7, [1] * 45, [45], [2, 13, 1, 29]], ids=str)
def test_topk_in_chunks_equals_one_shot(k, threshold, sizes):
    queries, corpus = _topk_data()
    best = _chunked_topk(queries, corpus, sizes, k=k, threshold=threshold)
    one_shot = scoring.top_k(queries, corpus, "dot", k=k, threshold=threshold)
    got = best.results()
    assert [[(h.rank, h.index, h.score) for h in hits] for hits in got] == [
        [(h.rank, h.index, h.score) for h in hits] for hits in one_shot
    ]
    for hits in got:
        assert all(h.item == f"item {h.index}" for h in hits)
        # Best first; ties in corpus order.
        assert [(-h.score, h.index) for h in hits] == sorted((-h.score, h.index) for h in hits)
        if threshold is not None:
            assert all(h.score >= threshold for h in hits)
    # Only the items of kept hits are held: memory is bounded by queries × k.
    kept = {h.index for hits in got for h in hits}
    assert set(best._items) == kept
    if k is not None:
        assert len(best._items) <= len(queries) * k
        assert all(len(s) <= k for s in best._scores)


def test_topk_with_cosine_in_chunks_equals_one_shot_exactly():
    """Float vectors, duplicates in chunks of every size (the last holds one row): the
    same scores to the last bit, and ties in corpus order, however the corpus is cut."""
    for seed in range(20):
        rng = np.random.default_rng(seed)
        queries = rng.standard_normal((3, 32)).astype(np.float32)
        corpus = rng.standard_normal((50, 32)).astype(np.float32)
        corpus[[9, 22, 49]] = corpus[0]
        want = scoring.top_k(queries, corpus, "cosine", k=None)
        for sizes in ([7] * 7 + [1], [1, 2, 3, 44], [50]):
            got = _chunked_topk(queries, corpus, sizes, metric="cosine", k=None).results()
            assert [[(h.index, h.score) for h in hits] for hits in got] == [
                [(h.index, h.score) for h in hits] for hits in want
            ], (seed, sizes)
            for hits in got:
                copies = [h for h in hits if h.index in (0, 9, 22, 49)]
                assert [h.index for h in copies] == [0, 9, 22, 49]
                assert len({h.score for h in copies}) == 1


# --- stdin: scanned, then streamed from the spool ------------------------------------------

STDIN_LINES = [" ".join(["piped line", str(i), *WORDS[: i % 8]]) for i in range(1, 31)]


def test_piped_stdin_is_scanned_then_streamed(both):
    piped = "".join(f"{line}\n" for line in STDIN_LINES)
    one, chunked = both("embed", "--format", "jsonl", input=piped, sizes=[CHUNK] * 4 + [2])
    records = jsonl(chunked.stdout)
    assert [r["text"] for r in records] == STDIN_LINES
    assert [r["source"] for r in records] == [f"<stdin>:{i}" for i in range(1, 31)]
    assert_same_records(jsonl(one.stdout), records)


def test_stdin_larger_than_the_memory_spool(cli, tiny_model, monkeypatch, encode_sizes):
    rolled: list[bool] = []

    class Spool(tempfile.SpooledTemporaryFile):
        def rollover(self):
            rolled.append(True)
            super().rollover()

    monkeypatch.setattr(inputs, "_SPOOL_MEMORY", 1024)
    monkeypatch.setattr(tempfile, "SpooledTemporaryFile", Spool)  # inputs imports it late
    monkeypatch.setattr(embedder_module, "CHUNK_TEXTS", CHUNK)
    lines = [f"{line} {'padding ' * 8}".strip() for line in STDIN_LINES]
    piped = "".join(f"{line}\n" for line in lines)
    assert len(piped.encode()) > 2 * 1024
    result = cli("embed", "-m", tiny_model, "--format", "jsonl", input=piped)
    assert result.code == ExitStatus.OK, result.stderr
    assert rolled == [True]  # spooled to a temporary file, then read twice from it
    assert [r["text"] for r in jsonl(result.stdout)] == lines
    assert encode_sizes == [CHUNK] * 4 + [2]


# --- errors found by the scan stop everything ------------------------------------------------


@pytest.fixture
def bad_file(tmp_path, monkeypatch) -> str:
    """40 lines, the last one not UTF-8: five chunks would be written before it."""
    monkeypatch.chdir(tmp_path)
    good = "".join(f"good line {i}\n" for i in range(1, 40)).encode()
    Path("bad.txt").write_bytes(good + b"caf\xe9 au lait\n")

    def refuse(spec):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(model, "load", refuse)
    monkeypatch.setattr(embedder_module, "CHUNK_TEXTS", CHUNK)
    return "bad.txt"


@pytest.mark.parametrize(
    "args",
    [
        ["embed", "-i", "bad.txt"],
        ["embed", "-i", "bad.txt", "-o", "out.jsonl"],
        ["embed", "-i", "bad.txt", "-o", "out.npy"],
        ["similar", "a query", "-i", "bad.txt"],
        ["similar", "a query", "-i", "bad.txt", "-o", "out.jsonl"],
    ],
    ids=" ".join,
)
def test_an_error_found_by_the_scan_stops_before_the_model_and_any_output(cli, bad_file, args):
    result = cli(*args, "-m", "minilm")
    assert result.code == ExitStatus.INPUT, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr and "must not be loaded" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "bad.txt:40: invalid UTF-8 (byte 0xe9)" in result.stderr
    assert sorted(p.name for p in Path().iterdir()) == ["bad.txt"]  # no output, no temp file
