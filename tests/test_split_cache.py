"""The split cache: an unchanged file is neither read nor tokenised again; an edited one
is cut afresh, alone; damage, a size bound, and --no-cache."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest
from conftest import forbid_model_loading

from modernbert_cli import passages, split_cache, sqlite_file, walk
from modernbert_cli.passages import Passage, Splitter, Tokens
from modernbert_cli.split_cache import SplitCache

LINES = [
    "Quarterly figures were reviewed by the finance team and filed with the auditors.",
    "The meeting moved to the second floor because the projector in room four broke.",
    "Remember to water the office plants on Fridays before leaving for the weekend.",
    "A new coffee machine arrived and the instructions were only in Italian.",
    "The lighthouse keeper's cat is called Biscuit and sleeps on the lamp-room stairs.",
]


def document(lines: int, tag: str = "") -> str:
    return "".join(f"{tag}{i}: {LINES[i % len(LINES)]}\n" for i in range(lines))


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


class Spy:
    """Word tokens that note every text they are asked to tokenise."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        words = Tokens.words()

        def spans(texts: list[str]):
            self.seen.extend(texts)
            return words.spans(texts)

        self.tokens = dataclasses.replace(words, spans=spans)


def splitter(cache: SplitCache | None, spy: Spy, size: int = 12, overlap: int = 3) -> Splitter:
    # The size goes into the identity, as for_embedder puts passage_tokens there.
    return Splitter(lambda: spy.tokens, lambda _: size, overlap, {"test": 1, "size": size}, cache)


def cut(splitter: Splitter, *names: Path) -> list[Passage]:
    return list(splitter.passages(names))


@pytest.fixture
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the cache file goes: outside ``tmp_path``, where the texts are."""
    return tmp_path_factory.mktemp("store") / "cache" / "passages.sqlite3"


@pytest.fixture
def old_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written by a test count as settled (not racy), as after two seconds."""
    monkeypatch.setattr(split_cache, "RACY_NS", 0)


def no_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, reading a file's lines or its bytes for a digest fails."""

    def fail(*args, **kwargs):
        raise AssertionError("a file was read")

    monkeypatch.setattr(passages, "read_lines", fail)
    monkeypatch.setattr(split_cache, "file_digest", fail)


# The cache itself ---------------------------------------------------------------------


def test_an_unchanged_file_is_neither_read_nor_tokenised(tmp_path, store, old_files, monkeypatch):
    (tmp_path / "a.txt").write_text(document(40))
    spy = Spy()
    first = cut(splitter(SplitCache(store), spy), tmp_path)
    assert spy.seen and len(first) > 3
    spy.seen.clear()
    no_reading(monkeypatch)
    assert cut(splitter(SplitCache(store), spy), tmp_path) == first
    assert spy.seen == []


def test_an_edited_file_is_cut_afresh_alone(tmp_path, store, old_files):
    for name in "abc":
        (tmp_path / f"{name}.txt").write_text(document(30, tag=name))
    spy = Spy()
    cut(splitter(SplitCache(store), spy), tmp_path)
    (tmp_path / "b.txt").write_text(document(31, tag="b"))
    spy.seen.clear()
    again = cut(splitter(SplitCache(store), spy), tmp_path)
    assert spy.seen and all(text.startswith("b") for text in spy.seen)
    assert again == cut(splitter(None, Spy()), tmp_path)


def test_same_size_and_mtime_but_new_bytes_is_noticed(tmp_path, store, old_files):
    """An edit that keeps the size and puts the time back still changes the ctime."""
    doc = tmp_path / "a.txt"
    doc.write_text(document(20))
    before = doc.stat()
    spy = Spy()
    cut(splitter(SplitCache(store), spy), doc)
    doc.write_text(document(20).replace("cat", "dog"))
    os.utime(doc, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert doc.stat().st_size == before.st_size
    spy.seen.clear()
    assert any("dog" in p.text for p in cut(splitter(SplitCache(store), spy), doc))
    assert spy.seen


def test_a_touched_file_is_hashed_not_tokenised(tmp_path, store, old_files):
    doc = tmp_path / "a.txt"
    doc.write_text(document(20))
    spy = Spy()
    first = cut(splitter(SplitCache(store), spy), doc)
    os.utime(doc, ns=(1, 10**18))  # a checkout or `touch`: new times, the same bytes
    spy.seen.clear()
    assert cut(splitter(SplitCache(store), spy), doc) == first
    assert spy.seen == []


def test_a_racy_entry_is_checked_by_its_bytes(tmp_path, store, monkeypatch):
    """A file cut in the clock tick it was written in may change with no stat field
    changing (coarse timestamps): its digest decides until it is older."""
    doc = tmp_path / "a.txt"
    doc.write_text(document(20))
    kept = split_cache.Stat.of(doc.stat())
    cache = SplitCache(store)
    run = splitter(cache, Spy())
    cut(run, doc)  # written just now: racy
    doc.write_text(document(20).replace("cat", "dog"))  # the same size
    # A filesystem whose clock did not tick: every field as when the file was cut.
    monkeypatch.setattr(split_cache.Stat, "of", classmethod(lambda cls, status: kept))
    assert cache.find(run.key(), doc) is None
    doc.write_text(document(20))  # back to the bytes that were cut
    assert cache.find(run.key(), doc) is not None
    # Had the entry not been racy, the stat alone would have been trusted (and been wrong):
    # what the racy rule is for.
    doc.write_text(document(20).replace("cat", "dog"))
    with sqlite3.connect(store) as db:
        db.execute("UPDATE files SET racy = 0")
    assert cache.find(run.key(), doc) is not None


def test_big_files_are_kept_a_chunk_at_a_time(tmp_path, store, old_files, monkeypatch):
    monkeypatch.setattr(split_cache, "CHUNK_CHARS", 500)
    doc = tmp_path / "a.txt"
    doc.write_text(document(300))
    first = cut(splitter(SplitCache(store), Spy()), doc)
    with sqlite3.connect(store) as db:
        (chunks,) = db.execute("SELECT chunks FROM files").fetchone()
        assert chunks > 5 and db.execute("SELECT count(*) FROM chunks").fetchone()[0] == chunks
    no_reading(monkeypatch)
    assert cut(splitter(SplitCache(store), Spy()), doc) == first


def test_a_reader_that_stops_early_keeps_nothing(tmp_path, store, monkeypatch):
    monkeypatch.setattr(split_cache, "CHUNK_CHARS", 200)
    doc = tmp_path / "a.txt"
    doc.write_text(document(200))
    stream = splitter(SplitCache(store), Spy()).passages([doc])
    for _ in range(20):
        next(stream)
    stream.close()
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT count(*) FROM files").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM chunks").fetchone()[0] == 0


def test_a_file_that_changes_while_read_is_not_kept(tmp_path, store):
    doc = tmp_path / "a.txt"
    doc.write_text(document(50))
    stream = splitter(SplitCache(store), Spy()).passages([doc])
    next(stream)
    with doc.open("a") as more:
        more.write("An appended line.\n")
    list(stream)
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT count(*) FROM files WHERE complete = 1").fetchone()[0] == 0


def test_empty_files_are_kept_and_still_reported(tmp_path, store, old_files, monkeypatch):
    (tmp_path / "blank.txt").write_text("\n   \n\n")
    (tmp_path / "a.txt").write_text("Hello there.\n")
    skipped: list[str] = []
    run = splitter(SplitCache(store), Spy())
    assert len(list(run.passages([tmp_path], skipped.append))) == 1
    no_reading(monkeypatch)
    again: list[str] = []
    assert len(list(splitter(SplitCache(store), Spy()).passages([tmp_path], again.append))) == 1
    assert [str(s) for s in again] == [str(s) for s in skipped] == [f"{tmp_path}/blank.txt: empty"]


def test_other_sizes_or_tokenizers_cut_afresh(tmp_path, store, old_files):
    doc = tmp_path / "a.txt"
    doc.write_text(document(40))
    spy = Spy()
    cut(splitter(SplitCache(store), spy, size=12), doc)
    for other in (
        splitter(SplitCache(store), spy, size=16),
        splitter(SplitCache(store), spy, overlap=0),
    ):
        spy.seen.clear()
        assert cut(other, doc) == cut(dataclasses.replace(other, cache=None), doc)
        assert spy.seen
    # And what decides the key, besides sizes: the tokenizer file, the prompt, the line bound.
    base = splitter(None, spy)
    keys = {
        base.key(),
        base.key(max_line_bytes=100),
        dataclasses.replace(base, identity={"test": 2}).key(),
    }
    assert len(keys) == 3


def test_the_file_is_private(tmp_path, old_files):
    store = tmp_path / "new-folder" / "passages.sqlite3"
    (tmp_path / "a.txt").write_text("Hello.\n")
    cut(splitter(SplitCache(store), Spy()), tmp_path / "a.txt")
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700


def test_a_damaged_file_costs_one_warning(tmp_path, store, old_files):
    store.parent.mkdir()
    store.write_bytes(b"this is no database" * 100)
    (tmp_path / "a.txt").write_text(document(30))
    (tmp_path / "b.txt").write_text(document(30, tag="b"))
    warnings: list[str] = []
    run = splitter(SplitCache(store, warn=warnings.append), Spy())
    assert cut(run, tmp_path) == cut(splitter(None, Spy()), tmp_path)
    assert len(warnings) == 1 and str(store) in warnings[0] and "unusable" in warnings[0]


def test_a_damaged_entry_is_cut_afresh_with_one_warning(tmp_path, store, old_files, monkeypatch):
    monkeypatch.setattr(split_cache, "CHUNK_CHARS", 300)
    for name in "ab":
        (tmp_path / f"{name}.txt").write_text(document(80, tag=name))
    plain = cut(splitter(None, Spy()), tmp_path)
    cut(splitter(SplitCache(store), Spy()), tmp_path)
    with sqlite3.connect(store) as db:  # the third chunk of each file garbled
        db.execute("UPDATE chunks SET data = x'00ff00ff' WHERE seq = 2")
    warnings: list[str] = []
    spy = Spy()
    assert cut(splitter(SplitCache(store, warn=warnings.append), spy), tmp_path) == plain
    assert len(warnings) == 1 and "damaged" in warnings[0]
    assert spy.seen  # both files cut afresh, kept anew: the next run reads them back
    spy.seen.clear()
    assert cut(splitter(SplitCache(store, warn=warnings.append), spy), tmp_path) == plain
    assert spy.seen == [] and len(warnings) == 1


def test_the_file_stays_within_its_bound(tmp_path, store, old_files):
    files = []
    for i in range(60):
        path = tmp_path / f"{i:02}.txt"
        # Text that compresses poorly, so each entry takes room.
        path.write_text("".join(f"{os.urandom(24).hex()} {j}\n" for j in range(60)))
        files.append(path)
    bound = 64 << 10
    cache = SplitCache(store, max_bytes=bound)
    run = splitter(cache, Spy())
    for path in files:
        cut(run, path)
    with sqlite3.connect(store) as db:
        size = sqlite_file.used_bytes(db)
        kept = [Path(row[0]).name for row in db.execute("SELECT path FROM files ORDER BY id")]
    assert size <= bound
    assert 0 < len(kept) < len(files)
    assert kept == [path.name for path in files[-len(kept) :]]  # the least recently used went


# A warm server's memo -----------------------------------------------------------------


class Served:
    """Searches as a warm server runs them: one StatMemo for all, a SplitCache per request;
    what each search sniffed and asked the split cache file is noted."""

    def __init__(self, store: Path, monkeypatch: pytest.MonkeyPatch, max_entries: int = 1000):
        self.store = store
        self.memo = split_cache.StatMemo(max_entries)
        self.sniffed: list[str] = []
        self.selects: list[str] = []
        sniff, open_db = walk.sniff, SplitCache._open

        def noting_sniff(path: str):
            self.sniffed.append(os.path.basename(path))
            return sniff(path)

        def noting_open(cache: SplitCache):
            db = open_db(cache)
            db.set_trace_callback(
                lambda statement: (
                    self.selects.append(statement)
                    if statement.startswith("SELECT id, size")
                    else None
                )
            )
            return db

        monkeypatch.setattr(walk, "sniff", noting_sniff)
        monkeypatch.setattr(SplitCache, "_open", noting_open)

    def search(self, *names: Path) -> tuple[list, list[str]]:
        """(the files and passages found, the skips) of one search; the notes cleared first."""
        self.sniffed.clear()
        self.selects.clear()
        skipped: list[str] = []
        run = splitter(SplitCache(self.store, memo=self.memo), Spy())
        found = list(
            run.passages(
                names, lambda s: skipped.append(str(s)), kept_files=True, judge=self.memo.sniff
            )
        )
        return found, skipped


def alone(store: Path, *names: Path) -> tuple[list, list[str]]:
    """The same search with no memo (a process of its own)."""
    skipped: list[str] = []
    run = splitter(SplitCache(store), Spy())
    return list(run.passages(names, lambda s: skipped.append(str(s)), kept_files=True)), skipped


def read_all(found: list) -> list[Passage]:
    return [p for item in found for p in (item.passages() if hasattr(item, "read") else [item])]


def test_a_repeat_search_neither_sniffs_nor_looks_up_an_unchanged_file(
    tmp_path, store, old_files, monkeypatch
):
    for name in "abc":
        (tmp_path / f"{name}.txt").write_text(document(30, tag=name))
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01" * 50)
    served = Served(store, monkeypatch)
    first = served.search(tmp_path)  # cut and kept
    assert sorted(served.sniffed) == ["a.txt", "b.txt", "blob.bin", "c.txt"]
    assert served.search(tmp_path) == first  # each entry looked up once more, remembered
    assert served.sniffed == [] and len(served.selects) == 3
    again = served.search(tmp_path)
    assert served.sniffed == [] and served.selects == []  # all from the memo
    assert again == first == alone(store, tmp_path)
    assert f"{tmp_path / 'blob.bin'}: binary" in again[1]
    assert read_all(again[0]) == cut(splitter(None, Spy()), tmp_path)  # entries still read


def test_a_file_edited_to_the_same_size_is_found_again(tmp_path, store, old_files, monkeypatch):
    """A new mtime (or ctime, inode…) is a new file to the memo: sniffed and looked up anew,
    whether its text changed or it became binary."""
    for name in "abc":
        (tmp_path / f"{name}.txt").write_text(document(30, tag=name))
    served = Served(store, monkeypatch)
    served.search(tmp_path)
    served.search(tmp_path)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(document(30, tag="a").replace("cat", "dog"))  # the same size
    b.write_bytes(b"\x00" + b.read_bytes()[1:])  # binary now, the same size
    for path in (a, b):
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    found, skipped = served.search(tmp_path)
    assert sorted(served.sniffed) == ["a.txt", "b.txt"] and len(served.selects) == 1  # a's
    assert (found, skipped) == alone(store, tmp_path)
    assert f"{b}: binary" in skipped
    assert any("dog" in p.text for p in read_all(found))


def test_a_file_with_a_racy_mtime_is_not_remembered(tmp_path, store, monkeypatch):
    """Written just now, a file may change again with its stat unchanged: it goes the normal
    way, sniffed and looked up on every search, until it is older."""
    (tmp_path / "a.txt").write_text(document(30))
    served = Served(store, monkeypatch)
    served.search(tmp_path)
    found = served.search(tmp_path)
    assert served.sniffed == ["a.txt"] and len(served.selects) == 1
    assert len(served.memo) == 0 and found == alone(store, tmp_path)
    monkeypatch.setattr(split_cache, "RACY_NS", 0)  # two seconds later
    served.search(tmp_path)
    served.search(tmp_path)
    assert served.sniffed == [] and served.selects == [] and len(served.memo) == 2


def test_files_deleted_and_added_between_searches(tmp_path, store, old_files, monkeypatch):
    for name in "abc":
        (tmp_path / f"{name}.txt").write_text(document(30, tag=name))
    served = Served(store, monkeypatch)
    served.search(tmp_path)
    served.search(tmp_path)
    (tmp_path / "b.txt").unlink()
    (tmp_path / "d.txt").write_text(document(30, tag="d"))
    found, skipped = served.search(tmp_path)
    assert served.sniffed == ["d.txt"] and len(served.selects) == 1  # d's
    assert [Path(item.path).name for item in found] == ["a.txt", "c.txt", "d.txt"]
    assert (found, skipped) == alone(store, tmp_path)


def test_a_gitignore_changed_between_searches_is_obeyed(tmp_path, store, old_files, monkeypatch):
    """The memo keeps only what a file alone decides: .gitignore rules are read by every walk."""
    (tmp_path / ".git").mkdir()
    for name in "abc":
        (tmp_path / f"{name}.txt").write_text(document(30, tag=name))
    served = Served(store, monkeypatch)
    served.search(tmp_path)
    (tmp_path / ".gitignore").write_text("b.txt\n")
    found, skipped = served.search(tmp_path)
    assert [Path(item.path).name for item in found] == ["a.txt", "c.txt"]
    assert f"{tmp_path / 'b.txt'}: ignored by .gitignore" in skipped
    (tmp_path / ".gitignore").write_text("a.txt\n")
    found, skipped = served.search(tmp_path)
    assert [Path(item.path).name for item in found] == ["b.txt", "c.txt"]
    assert (found, skipped) == alone(store, tmp_path)


def test_the_memo_is_bounded(tmp_path, store, old_files, monkeypatch):
    """Past its bound the least recently used files go; a file let go is looked up again."""
    for n in range(10):
        (tmp_path / f"{n}.txt").write_text(document(10, tag=str(n)))
    served = Served(store, monkeypatch, max_entries=6)  # 3 files: a verdict and an entry each
    served.search(tmp_path)
    assert len(served.memo) == 6
    found = served.search(tmp_path)
    assert len(served.sniffed) == 10  # each let go before the walk came back to it
    assert len(served.memo) == 6 and found == alone(store, tmp_path)
    assert split_cache.MEMO_ENTRIES * 1024 <= 32 << 20  # at most 32 MB, at 1 KB an entry


def test_a_remembered_entry_is_looked_up_again_when_due_for_a_touch(
    tmp_path, store, old_files, monkeypatch
):
    """The size bound drops least recently used entries: a remembered one is looked up (and
    its last use written) once an hour, as without a memo."""
    (tmp_path / "a.txt").write_text(document(30))
    served = Served(store, monkeypatch)
    for _ in range(3):  # cut, looked up, remembered
        served.search(tmp_path)
    assert served.selects == []
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + split_cache._TOUCH_S + 60)
    served.search(tmp_path)
    assert len(served.selects) == 1


def test_a_remembered_entry_gone_from_the_file_is_cut_afresh(
    tmp_path, store, old_files, monkeypatch
):
    (tmp_path / "a.txt").write_text(document(30))
    served = Served(store, monkeypatch)
    served.search(tmp_path)
    found, _ = served.search(tmp_path)
    split_cache.clear(store)  # `cache clear` while the server runs
    plain = cut(splitter(None, Spy()), tmp_path)
    assert read_all(found) == plain  # cut afresh
    found, _ = served.search(tmp_path)
    assert read_all(found) == plain and len(served.selects) == 1  # forgotten, looked up


# Through the command line -------------------------------------------------------------


def forbid_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(cls, directory):
        raise AssertionError("the tokenizer was loaded")

    monkeypatch.setattr(passages.Tokens, "for_model", classmethod(load))


def test_a_rerun_neither_loads_the_model_nor_tokenises(cli, tmp_path, tiny_model, monkeypatch):
    (tmp_path / "docs").mkdir()
    for name in "ab":
        (tmp_path / "docs" / f"{name}.txt").write_text(document(120, tag=name))
    args = ("--passages", "-i", str(tmp_path / "docs"), "-m", tiny_model, "-f", "jsonl")
    first = cli("similar", "the cat", *args)
    assert first.code == 0, first.stderr
    forbid_model_loading(monkeypatch)
    forbid_tokenizer(monkeypatch)
    # The files were written this instant (racy): their bytes are hashed, never tokenised.
    again = cli("similar", "the cat", *args)
    assert (again.code, again.stdout) == (0, first.stdout), again.stderr


def test_an_edited_file_is_the_only_one_tokenised(cli, tmp_path, tiny_model, monkeypatch):
    for name in "abc":
        (tmp_path / f"{name}.txt").write_text(document(60, tag=name))
    args = ("embed", "--passages", "-i", str(tmp_path), "-m", tiny_model, "-f", "jsonl")
    assert cli(*args).code == 0
    (tmp_path / "b.txt").write_text(document(61, tag="b"))
    seen: list[str] = []
    original = passages.Tokens.for_model.__func__

    def for_model(cls, directory):
        tokens = original(cls, directory)

        def spans(texts):
            seen.extend(texts)
            return tokens.spans(texts)

        return dataclasses.replace(tokens, spans=spans)

    monkeypatch.setattr(passages.Tokens, "for_model", classmethod(for_model))
    result = cli(*args)
    assert result.code == 0, result.stderr
    assert seen and all(text.startswith("b") for text in seen)
    assert {r["path"] for r in records(result.stdout)} == {
        str(tmp_path / f"{n}.txt") for n in "abc"
    }


def test_no_cache_keeps_no_passages(cli, tmp_path, tiny_model, monkeypatch):
    (tmp_path / "a.txt").write_text(document(30))
    args = ("similar", "cat", "--passages", "-i", str(tmp_path), "-m", tiny_model, "--no-cache")
    assert cli(*args).code == 0
    assert not split_cache.default_path().exists()


def test_the_key_names_what_decides_the_cuts(tiny_model, tmp_path):
    from modernbert_cli import Embedder

    embedder = Embedder(tiny_model, server=False)
    base = Splitter.for_embedder(embedder)
    keys = {
        base.key(),
        Splitter.for_embedder(embedder, passage_tokens=64).key(),
        Splitter.for_embedder(embedder, overlap=0).key(),
        Splitter.for_embedder(embedder, prompt="query: ").key(),
        Splitter.for_embedder(Embedder(tiny_model, max_seq_length=100, server=False)).key(),
    }
    assert len(keys) == 5
    tokenizer = Path(tiny_model) / "tokenizer.json"
    was = tokenizer.stat()
    os.utime(tokenizer, ns=(was.st_atime_ns, was.st_mtime_ns + 1))  # a new tokenizer file
    try:
        assert Splitter.for_embedder(embedder).key() != base.key()
    finally:  # the model is shared by the session's tests
        os.utime(tokenizer, ns=(was.st_atime_ns, was.st_mtime_ns))
    assert base.cache is not None and base.cache.path == split_cache.default_path()
    assert Splitter.for_embedder(Embedder(tiny_model, cache=False)).cache is None


def test_cache_clear_deletes_the_kept_passages(cli, tmp_path, tiny_model):
    (tmp_path / "a.txt").write_text(document(30))
    assert cli("embed", "--passages", "-i", str(tmp_path), "-m", tiny_model).code == 0
    assert split_cache.default_path().exists()
    result = cli("cache", "clear", "--model", tiny_model)
    assert result.code == 0 and split_cache.default_path().exists()  # one model's: kept
    result = cli("cache", "clear")
    assert result.code == 0, result.stderr
    assert not split_cache.default_path().exists()
    assert "deleted the passage cache" in result.stderr
