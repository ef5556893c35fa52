"""A repeat query over a folder: each file's passage vectors kept as one cache row.

A file searched before is one item (:class:`~modernbert_cli.passages.KeptFile`): its
vectors come from one row of the embedding cache's ``blocks`` table, are scored as one
matrix, and its passages are read only when one of them is among the best. Answers
are the ones the per-passage path gives, byte for byte.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import forbid_model_loading

from modernbert_cli import embedder
from modernbert_cli.cache import EmbeddingCache, KeptBlocks, default_path
from modernbert_cli.scoring import TopK, lengths
from modernbert_cli.split_cache import SplitCache

FILLER = [
    "Quarterly figures were reviewed by the finance team and filed with the auditors.",
    "The meeting moved to the second floor because the projector in room four broke.",
    "Remember to water the office plants on Fridays before leaving for the weekend.",
    "A new coffee machine arrived and the instructions were only in Italian.",
    "Parking permits must be renewed online before the end of each month.",
    "The lighthouse keeper's cat is called Biscuit and sleeps on the stairs.",
    "Volcanoes erupt when pressure builds under the crust of the earth.",
]
FORMATS = ("jsonl", "json", "csv", "tsv", "grep", "table")


def folder(root: Path, files: int = 5, lines: int = 60, seed: int = 0) -> Path:
    rng = random.Random(seed)
    for n in range(files):
        text = [f"{n}.{i} " + rng.choice(FILLER) for i in range(lines)]
        (root / f"f{n}.txt").write_text("\n".join(text) + "\n")
    return root


def blocks() -> int:
    with sqlite3.connect(default_path()) as db:
        count = db.execute("SELECT count(*) FROM blocks").fetchone()[0]
    db.close()
    return count


def search(cli, root: Path, model: str, *extra: str, fmt: str = "jsonl") -> str:
    result = cli(
        "similar", "where does the cat sleep?", "--passages", "-i", str(root), "-m", model,
        "--passage-tokens", "32", "-f", fmt, *extra,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    return result.stdout


OPTIONS = [
    ("-k", "5"),
    ("-k", "3", "--per-document"),
    ("-k", "50", "--threshold", "0.1"),
    ("-k", "4", "--metric", "dot"),
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: " ".join(o))
def test_kept_vectors_answer_byte_for_byte_as_the_per_passage_path(
    cli, tmp_path, tiny_model, monkeypatch, options
):
    root = folder(tmp_path)
    first = {fmt: search(cli, root, tiny_model, *options, fmt=fmt) for fmt in FORMATS}
    assert blocks() == 5  # the first query kept each file's vectors
    kept = {fmt: search(cli, root, tiny_model, *options, fmt=fmt) for fmt in FORMATS}
    # The per-passage path over the same cache: no kept row found.
    monkeypatch.setattr(EmbeddingCache, "block", lambda self, fingerprint, key: None)
    rows = {fmt: search(cli, root, tiny_model, *options, fmt=fmt) for fmt in FORMATS}
    assert first == kept == rows
    assert all(first.values())


def test_several_queries_rank_alike_from_kept_rows(cli, tmp_path, tiny_model, monkeypatch):
    root = folder(tmp_path)
    queries = tmp_path / "queries.txt"
    queries.write_text("the cat\nvolcanoes\nparking permits\n")
    args = (
        "similar", "--queries", str(queries), "--passages", "-i", str(root / "f1.txt"),
        "-i", str(root), "-m", tiny_model, "--passage-tokens", "32", "-k", "4", "-f", "json",
    )  # fmt: skip
    first = cli(*args)
    assert first.code == 0, first.stderr
    again = cli(*args)
    monkeypatch.setattr(EmbeddingCache, "block", lambda self, fingerprint, key: None)
    rows = cli(*args)
    assert first.stdout == again.stdout == rows.stdout


def test_kept_files_side_by_side_are_scored_as_one_matrix(cli, tmp_path, tiny_model, monkeypatch):
    """A repeat over many files makes one product for all their rows, not one per file."""
    root = folder(tmp_path, files=12, lines=20)
    first = search(cli, root, tiny_model, "-k", "5")
    added: list[int] = []
    original_add = TopK.add

    def counting_add(self, queries, corpus, items, *rest):
        added.append(len(corpus))
        return original_add(self, queries, corpus, items, *rest)

    monkeypatch.setattr(TopK, "add", counting_add)
    assert search(cli, root, tiny_model, "-k", "5") == first
    assert len(added) == 1 and added[0] > 12  # the twelve files' rows at once
    added.clear()
    monkeypatch.setattr(embedder, "KEPT_ROWS", 100)  # the rows in products of ~100
    assert search(cli, root, tiny_model, "-k", "5") == first
    assert 1 < len(added) < 12 and all(n >= 100 for n in added[:-1])


def test_blocks_held_in_memory_keep_their_lengths_within_the_bound():
    held = KeptBlocks(max_bytes=3 * (10 * 4 * 4 + 10 * 8))  # three blocks of 10 rows × 4
    rng = np.random.default_rng(0)
    for n in range(5):
        vectors = rng.standard_normal((10, 4), dtype=np.float32)
        kept = held.put(("model", bytes([n])), (vectors, 0))
        assert np.array_equal(kept.lengths, lengths(vectors))
    assert held.size == held.max_bytes  # the lengths counted too
    assert held.get(("model", bytes([1]))) is None and held.get(("model", bytes([4])))


def test_a_repeat_reads_only_the_files_with_hits_and_no_passage_rows(
    cli, tmp_path, tiny_model, monkeypatch
):
    root = folder(tmp_path, files=6)
    # The query itself as the first file: no later passage can score above it.
    (root / "a.txt").write_text("where does the cat sleep?\n")
    first = search(cli, root, tiny_model, "-k", "1")
    read: list[int] = []
    looked_up: list[int] = []
    original_read, original_vectors = SplitCache.read, EmbeddingCache.vectors

    def counting_read(self, entry):
        read.append(entry.id)
        return original_read(self, entry)

    def counting_vectors(self, fingerprint, keys):
        looked_up.append(len(keys))
        return original_vectors(self, fingerprint, keys)

    monkeypatch.setattr(SplitCache, "read", counting_read)
    monkeypatch.setattr(EmbeddingCache, "vectors", counting_vectors)
    forbid_model_loading(monkeypatch)
    again = search(cli, root, tiny_model, "-k", "1")
    assert again == first and str(root / "a.txt") in again
    assert len(read) == 1  # a.txt's passages; the six other files' are never read
    assert looked_up == [1]  # the query's row; none per passage


def test_an_edited_file_re_embeds_its_changed_passages_and_gets_a_new_row(
    cli, tmp_path, tiny_model, monkeypatch
):
    from modernbert_cli import engine

    root = folder(tmp_path, files=3)
    search(cli, root, tiny_model)
    with sqlite3.connect(default_path()) as db:
        before = {row[0] for row in db.execute("SELECT block_key FROM blocks")}
    db.close()
    doc = root / "f1.txt"
    doc.write_text("A new first line about the cat.\n" + doc.read_text())
    calls: list[list[str]] = []
    original = engine.Engine.encode
    monkeypatch.setattr(
        engine.Engine,
        "encode",
        lambda self, texts, **kw: calls.append(list(texts)) or original(self, texts, **kw),
    )
    edited = search(cli, root, tiny_model)
    embedded = [text for call in calls for text in call]  # the query is cached too
    assert 0 < len(embedded) <= 3  # the passages the new line changed
    with sqlite3.connect(default_path()) as db:
        after = {row[0] for row in db.execute("SELECT block_key FROM blocks")}
    db.close()
    assert len(after - before) == 1  # the edited file's new content: a row of its own
    # The next query finds every file kept: no passage row looked up, no model.
    looked_up: list[int] = []
    vectors = EmbeddingCache.vectors
    monkeypatch.setattr(
        EmbeddingCache,
        "vectors",
        lambda self, fp, keys: looked_up.append(len(keys)) or vectors(self, fp, keys),
    )
    forbid_model_loading(monkeypatch)
    assert search(cli, root, tiny_model) == edited
    assert looked_up == [1]


def test_a_damaged_row_is_counted_and_the_answer_still_right(tmp_path, tiny_model):
    from modernbert_cli import Embedder
    from modernbert_cli.passages import Splitter

    root = folder(tmp_path, files=3)

    def query() -> tuple[list, int]:
        with Embedder(tiny_model, server=False) as emb:
            splitter = Splitter.for_embedder(emb, 32)
            corpus = splitter.passages([root], kept_files=True)
            hits = emb.similar("the cat", corpus, top_k=5)
            return [(h.index, h.score, h.source, h.text) for h in hits], emb.encoder.cache.damaged

    first, damaged = query()
    assert damaged == 0
    with sqlite3.connect(default_path()) as db:  # one float of one file's row changed
        (rowid, vectors) = db.execute("SELECT rowid, vectors FROM blocks LIMIT 1").fetchone()
        bad = bytes([vectors[0] ^ 0x40]) + vectors[1:]
        db.execute("UPDATE blocks SET vectors = ? WHERE rowid = ?", (bad, rowid))
    db.close()
    assert query() == (first, 1)
    assert query() == (first, 0)  # the row was written again, whole


def test_cache_clear_removes_the_kept_rows(cli, tmp_path, tiny_model):
    root = folder(tmp_path, files=2)
    search(cli, root, tiny_model)
    assert blocks() == 2
    cleared = cli("cache", "clear", "--model", "minilm")  # another model's: they stay
    assert cleared.code == 0, cleared.stderr
    assert blocks() == 2
    cleared = cli("cache", "clear", "--model", tiny_model)
    assert cleared.code == 0, cleared.stderr
    assert blocks() == 0
    search(cli, root, tiny_model)
    assert cli("cache", "clear").code == 0
    assert blocks() == 0


def test_kept_rows_are_evicted_within_the_bound(tmp_path):
    import numpy as np

    cache = EmbeddingCache(tmp_path / "c.sqlite3", max_bytes=1 << 20)
    rng = np.random.default_rng(0)
    for n in range(150):  # 150 files of 18 KB of vectors: 2.7 MB into a 1 MB bound
        cache.store_block("fp", "m", n.to_bytes(16, "big"), rng.random((12, 384)), 0)
    assert cache.size_bytes() <= 1 << 20
    newest = cache.block("fp", (149).to_bytes(16, "big"))
    assert newest is not None and newest[0].shape == (12, 384)
    assert cache.block("fp", (0).to_bytes(16, "big")) is None  # the oldest went


def test_a_file_of_more_passages_than_one_row_holds_streams_as_passages(
    cli, tmp_path, tiny_model, monkeypatch
):
    from modernbert_cli import passages

    root = folder(tmp_path, files=2)
    (root / "big.txt").write_text("\n".join(FILLER * 60) + "\n")
    expected = search(cli, root, tiny_model, "--no-cache")
    monkeypatch.setattr(passages, "MAX_WHOLE_PASSAGES", 100)  # big.txt has more
    assert search(cli, root, tiny_model) == expected  # cut: big.txt given as it is cut
    assert blocks() == 2
    assert search(cli, root, tiny_model) == expected  # kept: big.txt read as passages
    assert blocks() == 2


def test_a_cached_folder_query_in_a_pipe_imports_neither_torch_nor_rich_console(
    cli, tmp_path, tiny_model
):
    """All it needs is cached: no model; stderr is a pipe: no progress bar, no console."""
    import json
    import subprocess
    import sys

    from conftest import ROOT

    root = folder(tmp_path, files=2)
    first = search(cli, root, tiny_model)
    args = ["similar", "where does the cat sleep?", "--passages", "-i", str(root), "-m",
            tiny_model, "--passage-tokens", "32", "-f", "jsonl"]  # fmt: skip
    child = (
        "import sys, json; from modernbert_cli.cli import run; c = run(json.loads(sys.argv[1])); "
        "print(sorted(m for m in ('torch', 'rich.console') if m in sys.modules), "
        "file=sys.stderr); sys.exit(c)"
    )
    result = subprocess.run(
        [sys.executable, "-c", child, json.dumps(args)], capture_output=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr.decode().strip().splitlines()[-1] == "[]"
    assert result.stdout.decode() == first
