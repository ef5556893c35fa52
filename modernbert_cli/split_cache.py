"""Passages already cut, kept per file: an unchanged file is neither read nor tokenised again.

Cutting a file into passages runs the tokenizer over every line (about 1 MB of text
a second on one CPU core, measured by ``benchmarks/passages_speed.py``): over a large
folder, far more than a query over cached embeddings costs. So each file's passages
are kept in a SQLite file of their own, ``passages.sqlite3`` beside the embedding
cache, under a *key* naming all that decides the cuts besides the file (tokenizer,
sizes, prompt, the splitting code's version: see
:meth:`modernbert_cli.passages.Splitter.key`).

Whether a file is unchanged is decided as git decides it for its index:

- size, mtime, ctime, inode and device as stored: unchanged, and the file is not read;
- any of them changed but the size: its bytes are hashed (BLAKE2b, a hundred times
  cheaper than tokenising) and compared with the digest of what was cut; a ``touch``
  or a checkout costs one read, not a tokenisation;
- a file that had changed within two seconds of being cut is *racy* (a write in the
  same clock tick leaves its times alone): its digest is checked on every use until
  it is older than that.

Passages are stored zlib-compressed a chunk of about 1 MB of text at a time, so that
neither cutting nor reading back holds a whole file. The file is bounded (least
recently used files go first). One that cannot be opened, or a damaged entry, costs
one warning; the passages are then cut as if there were no cache.

>>> cache = SplitCache(Path("/tmp/passages.sqlite3"))  # doctest: +SKIP
>>> cache.find("key", Path("notes.md")) is None  # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sqlite3
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISDIR
from typing import Any, BinaryIO, NamedTuple

from modernbert_cli import walk
from modernbert_cli.cache import default_path as embeddings_path
from modernbert_cli.sqlite_file import SQLiteFile, retry_busy, transaction, used_bytes

CACHE_FILE = "passages.sqlite3"
DEFAULT_MAX_BYTES = 512 << 20

# A file whose times lie this close to the moment it was cut may change again unseen.
RACY_NS = 2_000_000_000
# Passages' text per stored chunk: what reading back or cutting a file holds at a time.
CHUNK_CHARS = 1 << 20

# What a warm server's StatMemo holds: two entries a file (its sniff, its split entry)
# of about 650 bytes each (measured: 1.3 KB a file), so 16k files in about 21 MB.
MEMO_ENTRIES = 1 << 15

_SCHEMA_VERSION = 1
_TOUCH_S = 3600  # last_used is refreshed at most this often: a hit costs no write
_TOUCH_BATCH = 512
_ABANDONED_S = 24 * 3600  # an unfinished entry this old was left by a process that died
_READ_BLOCK = 1 << 20

# Files keyed by (key, absolute path); an entry is used only once complete (all its
# chunks written, then marked in one transaction), so a process that stops half-way
# leaves nothing that could be mistaken for a file's passages.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    device INTEGER NOT NULL,
    digest BLOB,
    racy INTEGER NOT NULL DEFAULT 0,
    passages INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL DEFAULT 0,
    last_used INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_path ON files (key, path);
CREATE INDEX IF NOT EXISTS files_last_used ON files (last_used);
CREATE TABLE IF NOT EXISTS chunks (
    file INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (file, seq)
);
"""

Item = tuple[int, int, str]  # a passage as kept: first line, last line, text


def default_path() -> Path:
    """``passages.sqlite3`` in the embedding cache's folder (``$MODERNBERT_CLI_CACHE_DIR``)."""
    return embeddings_path().parent / CACHE_FILE


class Stat(NamedTuple):
    """What says a file may have changed, without reading it (a tuple: a warm server
    compares one per file per search)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, status: os.stat_result) -> Stat:
        return cls(
            status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino, status.st_dev
        )

    def racy(self, checked_ns: int) -> bool:
        """Whether the file changed so shortly before ``checked_ns`` that it may again unseen.

        A write sets mtime (and ctime) to the clock's present tick: only a file whose
        mtime is that tick already can be written again with no field changing.
        """
        return self.mtime_ns + RACY_NS > checked_ns


@dataclass(frozen=True)
class Entry:
    """A file's passages as kept."""

    id: int
    passages: int
    chunks: int
    digest: bytes | None = None  # the file's content (BLAKE2b), as cut: known without reading


class StatMemo:
    """What reading a file told, remembered under its full :class:`Stat`: a warm server's
    repeat search neither sniffs an unchanged file nor looks up its entry (a SELECT each).

    Trusted as git trusts its index: never for a file whose mtime was racy when it was
    looked at (it may change again with no field of its stat changing). Only what the
    file alone decides is kept: whether it is text, and its split cache entry; what
    .gitignore files say is read afresh by every walk. Bounded: past ``max_entries`` the
    least recently used go. Shared by a server's requests (thread-safe).
    """

    def __init__(self, max_entries: int = MEMO_ENTRIES) -> None:
        self.max_entries = max_entries
        self._held: OrderedDict[Hashable, tuple[Stat, float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._held)

    def get(self, key: Hashable, stat: Stat) -> Any:
        """What was put under ``key`` for a file of this very ``stat`` (not expired), or None."""
        found = self.get_until(key, stat)
        return None if found is None else found[0]

    def get_until(self, key: Hashable, stat: Stat) -> tuple[Any, float] | None:
        """As :meth:`get`, with the time it was put ``until``."""
        with self._lock:
            found = self._held.get(key)
            if found is None:
                return None
            held, until, value = found
            if held != stat or (until != math.inf and until < time.time()):
                del self._held[key]
                return None
            self._held.move_to_end(key)
            return value, until

    def put(
        self, key: Hashable, stat: Stat, value: Any, checked_ns: int, until: float = math.inf
    ) -> None:
        """Remember ``value`` (not None) of a file whose ``stat`` was taken at ``checked_ns``,
        until the time ``until``: not at all if that stat was racy."""
        if stat.racy(checked_ns):
            return
        with self._lock:
            self._held[key] = (stat, until, value)
            self._held.move_to_end(key)
            while len(self._held) > self.max_entries:
                self._held.popitem(last=False)

    def forget(self, value: Any) -> None:
        """Drop whatever was remembered as ``value`` (this very object)."""
        with self._lock:
            for key in [k for k, (_, _, v) in self._held.items() if v is value]:
                del self._held[key]

    def sniff(self, path: str) -> str | None:
        """:func:`modernbert_cli.walk.sniff` of ``path``, remembered under its stat."""
        checked = time.time_ns()
        try:
            stat = Stat.of(os.stat(path))
        except OSError:
            return walk.sniff(path)
        key = ("sniff", path)
        found = self.get(key, stat)
        if found is not None:
            return found or None  # "": text
        reason = walk.sniff(path)
        # An unreadable file may be readable next time with its stat unchanged.
        if reason in (None, walk.BINARY, walk.NOT_UTF8, walk.EMPTY):
            self.put(key, stat, reason or "", checked)
        return reason


class Walked:
    """A walk as it goes, for :class:`Snapshots`: the stat of each path it looks at, taken
    before it looks (:data:`~modernbert_cli.walk.Watch`), and what it found (``steps``).

    Spoilt, and then no longer noted, by a path whose mtime is racy (it may change again
    with no field of its stat changing), a stat that fails but for a missing path (it may
    succeed next time unchanged), or more than ``max_entries`` paths and steps.
    """

    def __init__(self, max_entries: int = MEMO_ENTRIES) -> None:
        self.max_entries = max_entries
        self.stats: dict[str, Held] = {}
        self.steps: list[Any] = []
        self.usable = True
        self.finished = False  # the walk went to its end

    def watch(self, path: str, probe: bool = False) -> None:
        """Note ``path``'s stat (``probe``: a folder's being there, not its times)."""
        if not self.usable or path in self.stats:
            return  # the first stat, taken before the path was first looked at, is the one
        checked = time.time_ns()
        held = _held(path, probe)
        if held is False or (isinstance(held, Stat) and held.racy(checked)):
            self.spoil()
            return
        self.stats[path] = held
        self._bound()

    def add(self, step: Any) -> None:
        if self.usable:
            self.steps.append(step)
            self._bound()

    def spoil(self) -> None:
        self.usable = False
        self.stats, self.steps = {}, []

    def _bound(self) -> None:
        if len(self.stats) + len(self.steps) > self.max_entries:
            self.spoil()


class _Snapshot(NamedTuple):
    stats: tuple[tuple[str, Held], ...]
    steps: tuple[Any, ...]
    until: float

    @property
    def size(self) -> int:
        return len(self.stats) + len(self.steps)


class Snapshots:
    """Whole walks (what each found, in order) remembered under the stats of every path
    they looked at: a warm server's repeat search of an unchanged folder stats those paths
    (one system call each) instead of walking it, sniffing its files and looking up their
    split entries.

    Trusted as :class:`StatMemo` is, for every path: a folder's stat changes when an entry
    is added, removed or renamed in it, a file's when it is written, a missing path's when
    it appears; none was racy when the walk looked. Of a ``.git`` folder probed only which
    folder it is counts (git writes in it on every command; its rules file is watched).
    Each is kept ``until`` a given time (its split entries' hourly touch). Bounded: past
    ``max_entries`` paths and steps, or ``max_walks`` walks, the least recently used go.
    Thread-safe.
    """

    def __init__(self, max_entries: int = MEMO_ENTRIES, max_walks: int = 8) -> None:
        self.max_entries = max_entries
        self.max_walks = max_walks
        self.size = 0
        self._held: OrderedDict[Hashable, _Snapshot] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._held)

    def get(self, key: Hashable) -> tuple[Any, ...] | None:
        """The steps of the walk put under ``key``, if every path it looked at is as it was."""
        with self._lock:
            found = self._held.get(key)
        if found is None:
            return None
        if found.until >= time.time() and all(
            _held(path, type(held) is _Folder) == held for path, held in found.stats
        ):
            with self._lock:
                if key in self._held:
                    self._held.move_to_end(key)
            return found.steps
        with self._lock:
            if self._held.get(key) is found:
                del self._held[key]
                self.size -= found.size
        return None

    def put(self, key: Hashable, walked: Walked, until: float) -> None:
        """Remember ``walked`` (if usable and whole) under ``key`` until the time ``until``."""
        if not walked.usable:
            return
        found = _Snapshot(tuple(walked.stats.items()), tuple(walked.steps), until)
        with self._lock:
            old = self._held.pop(key, None)
            self.size -= old.size if old is not None else 0
            self._held[key] = found
            self.size += found.size
            while self.size > self.max_entries or len(self._held) > self.max_walks:
                _, dropped = self._held.popitem(last=False)
                self.size -= dropped.size


class _Folder(NamedTuple):
    """A folder probed: which it is, not its times."""

    inode: int
    device: int


# What is held of a path: its stat, a folder probed, or None (no such path).
Held = Stat | _Folder | None


def _held(path: str, probe: bool) -> Held | bool:
    """What to hold of ``path`` (``probe``: a folder as :class:`_Folder`); False if its stat
    cannot be had (never equal to one held)."""
    try:
        status = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return False
    if probe and S_ISDIR(status.st_mode):
        return _Folder(status.st_ino, status.st_dev)
    return Stat.of(status)


class Damaged(Exception):
    """An entry could not be read back whole: its file is to be cut afresh."""


class SplitCache(SQLiteFile):
    """The passage cache file, opened lazily; every failure turns it off with one warning."""

    kind = "passage cache"

    def __init__(
        self,
        path: Path | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        warn: Callable[[str], None] | None = None,
        memo: StatMemo | None = None,
    ) -> None:
        # Passages are the user's text: for this user alone, as the vectors are.
        super().__init__(path or default_path(), warn)
        self.max_bytes = max_bytes
        self.memo = memo  # a warm server's: entries found before, under their file's stat
        self._where = str(self.path)  # in the memo's keys
        self._touched: list[int] = []
        self._warned_damaged = False
        # When the first entry :meth:`find` gave is due for its hourly touch (its row's
        # last use written): what a warm server may reuse them until without asking.
        self.due = math.inf

    # -- opening (SQLiteFile opens lazily and fails safely) ------------------------------

    def _setup(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"unknown passage cache format {version}")
        if version != _SCHEMA_VERSION:  # else made already: opening it writes nothing
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def close(self) -> None:
        """Record which entries were used (for the size bound) and let go of the file."""
        self._flush_touched()
        super().close()

    def __enter__(self) -> SplitCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- finding a file's passages ---------------------------------------------------------

    def find(self, key: str, path: Path) -> Entry | None:
        """The entry of ``path`` cut under ``key``, if the file is as it was then; else None."""
        db = self._connect()
        if db is None:
            return None
        checked = time.time_ns()
        try:
            now = Stat.of(os.stat(path))
        except OSError:
            return None
        where = os.path.abspath(path)
        remembered = ("split", self._where, key, where)
        if self.memo is not None and (found := self.memo.get_until(remembered, now)) is not None:
            self.due = min(self.due, found[1])
            return found[0]  # type: ignore[no-any-return]
        try:
            row = db.execute(
                "SELECT id, size, mtime_ns, ctime_ns, inode, device, digest, racy, passages, "
                "chunks, last_used FROM files WHERE key = ? AND path = ? AND complete = 1 "
                "ORDER BY id DESC LIMIT 1",
                (key, where),
            ).fetchone()
            if row is None:
                return None
            entry_id, *stat, digest, racy, passages, chunks, last_used = row
            if Stat(*stat) != now or racy:
                if now.size != stat[0] or digest is None or file_digest(path) != digest:
                    return None
                # The same bytes: remember the file as it is now, and whether still racy.
                last_used = int(time.time())
                db.execute(
                    "UPDATE files SET size = ?, mtime_ns = ?, ctime_ns = ?, inode = ?, "
                    "device = ?, racy = ?, last_used = ? WHERE id = ?",
                    (*_fields(now), int(now.racy(checked)), last_used, entry_id),
                )
            elif last_used < time.time() - _TOUCH_S:
                self._touch(entry_id)
                last_used = int(time.time())
        except OSError:  # the file went or cannot be read now: it is cut (or fails) as usual
            return None
        except sqlite3.Error as error:
            self._fail(error)
            return None
        entry = Entry(entry_id, passages, chunks, digest)
        self.due = min(self.due, last_used + _TOUCH_S)
        if self.memo is not None:
            # Found without a SELECT until its row is due to be touched again, so that the
            # size bound still sees it used.
            self.memo.put(remembered, now, entry, checked, until=last_used + _TOUCH_S)
        return entry

    def read(self, entry: Entry) -> Iterator[Item]:
        """The passages of ``entry``, a chunk at a time; :class:`Damaged` if they cannot be."""
        given = 0
        for seq in range(entry.chunks):
            db = self._connect()
            if db is None:
                raise Damaged("the cache was turned off")
            try:
                row = db.execute(
                    "SELECT data FROM chunks WHERE file = ? AND seq = ?", (entry.id, seq)
                ).fetchone()
            except sqlite3.Error as error:
                self._fail(error)
                raise Damaged(str(error)) from None
            items = self._decode(entry, row)
            given += len(items)
            yield from items
        if given != entry.passages:
            raise self._damaged(entry, f"{given} passages instead of {entry.passages}")

    def _decode(self, entry: Entry, row: tuple[Any, ...] | None) -> list[Item]:
        if row is None:
            raise self._damaged(entry, "a chunk is missing")
        try:
            items = json.loads(zlib.decompress(row[0]))
            if all(type(a) is int and type(b) is int and type(t) is str for a, b, t in items):
                return [(a, b, t) for a, b, t in items]
            problem = "a passage is not what was stored"
        except (zlib.error, ValueError, TypeError) as error:
            problem = str(error) or type(error).__name__
        raise self._damaged(entry, problem)

    def _damaged(self, entry: Entry, problem: str) -> Damaged:
        """Drop an entry that cannot be read back (a warning, once per run): the error to raise."""
        if self.memo is not None:
            self.memo.forget(entry)
        db = self._connect()
        gone = False
        if db is not None:
            try:
                row = db.execute("SELECT 1 FROM files WHERE id = ?", (entry.id,)).fetchone()
                gone = row is None
                if not gone:
                    with transaction(db):
                        _delete(db, [entry.id])
            except sqlite3.Error as error:
                self._fail(error)
        # An entry replaced or evicted by another process while being read is no damage.
        if not gone and not self._warned_damaged:
            self._warned_damaged = True
            self._warn(
                f"warning: passage cache {self.path}: a damaged entry ({problem}); "
                "its file is cut afresh"
            )
        return Damaged(problem)

    def _touch(self, entry_id: int) -> None:
        self._touched.append(entry_id)
        if len(self._touched) >= _TOUCH_BATCH:
            self._flush_touched()

    def _flush_touched(self) -> None:
        touched, self._touched = self._touched, []
        db = self._connect() if touched else None
        if db is None:
            return
        try:
            marks = ",".join("?" * len(touched))
            db.execute(
                f"UPDATE files SET last_used = ? WHERE id IN ({marks})",
                (int(time.time()), *touched),
            )
        except sqlite3.Error as error:
            self._fail(error)

    # -- keeping a file's passages ---------------------------------------------------------

    def writer(self, key: str, path: Path, stream: BinaryIO) -> Writer:
        """Keeps the passages of ``path`` as they are cut from ``stream`` (open, unread)."""
        checked = time.time_ns()
        return Writer(self, key, os.path.abspath(path), stream, checked)

    def _evict(self, db: sqlite3.Connection) -> None:
        """Past the bound, entries left unfinished by a process that stopped go, then the
        least recently used files until the file is under 90% of its bound."""
        if used_bytes(db) <= self.max_bytes:
            return
        with transaction(db):
            stale = db.execute(
                "SELECT id FROM files WHERE complete = 0 AND last_used < ?",
                (int(time.time()) - _ABANDONED_S,),
            ).fetchall()
            _delete(db, [row[0] for row in stale])
        excess = used_bytes(db) - int(0.9 * self.max_bytes)
        if excess <= 0:
            return
        doomed, freed = [], 0
        for entry_id, size in db.execute(
            "SELECT id, bytes FROM files WHERE complete = 1 ORDER BY last_used, id"
        ):
            doomed.append(entry_id)
            freed += size + 256  # a row's own bytes besides its chunks
            if freed >= excess:
                break
        # Freed pages are reused by later entries: no VACUUM (which rewrites the file).
        with transaction(db):
            _delete(db, doomed)

    def size_bytes(self) -> int:
        files = [self.path, Path(f"{self.path}-wal")]
        return sum(f.stat().st_size for f in files if f.exists())


class Writer:
    """One file's passages on their way into the cache: a chunk at a time, used once whole.

    ``with cache.writer(key, path, stream) as keep: …; keep.finish(digest)``: leaving
    the block without ``finish`` (an error, a reader that stopped) drops what was kept.
    """

    def __init__(
        self, cache: SplitCache, key: str, path: str, stream: BinaryIO, checked: int
    ) -> None:
        self.cache = cache
        self.key = key
        self.path = path
        self.stream = stream
        self.checked = checked
        self.stat = Stat.of(os.fstat(stream.fileno()))
        self.id: int | None = None
        self.buffer: list[Item] = []
        self.chars = 0
        self.chunks = 0
        self.passages = 0
        self.bytes = 0
        self.done = False

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.done:
            self.abandon()

    def add(self, start: int, end: int, text: str) -> None:
        self.buffer.append((start, end, text))
        self.passages += 1
        self.chars += len(text)
        if self.chars >= CHUNK_CHARS:
            self._write(complete=False)

    def finish(self, digest: bytes) -> None:
        """The whole file was read (its bytes hash to ``digest``): its entry is complete.

        A file that changed while it was read is not kept (its passages may mix versions).
        """
        self.done = True
        if Stat.of(os.fstat(self.stream.fileno())) != self.stat:
            self.abandon()
            return
        self._write(complete=True, digest=digest)

    def abandon(self) -> None:
        self.done = True
        self.buffer = []
        db = self.cache._connect() if self.id is not None else None
        if db is None:
            return
        try:
            with transaction(db):
                _delete(db, [self.id])
        except sqlite3.Error as error:
            self.cache._fail(error)

    def _write(self, *, complete: bool, digest: bytes | None = None) -> None:
        db = self.cache._connect()
        if db is None:
            self.buffer = []
            return
        data = None
        if self.buffer:
            data = zlib.compress(json.dumps(self.buffer, ensure_ascii=False).encode("utf-8"))
            self.bytes += len(data)
        self.buffer, self.chars = [], 0
        now = int(time.time())

        def write() -> None:
            with transaction(db):
                if self.id is None:
                    self.id = db.execute(
                        "INSERT INTO files (key, path, size, mtime_ns, ctime_ns, inode, device, "
                        "last_used) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (self.key, self.path, *_fields(self.stat), now),
                    ).lastrowid
                if data is not None:
                    db.execute(
                        "INSERT INTO chunks (file, seq, data) VALUES (?, ?, ?)",
                        (self.id, self.chunks, data),
                    )
                if complete:
                    db.execute(
                        "UPDATE files SET digest = ?, racy = ?, passages = ?, chunks = ?, "
                        "bytes = ?, complete = 1, last_used = ? WHERE id = ?",
                        (
                            digest,
                            int(self.stat.racy(self.checked)),
                            self.passages,
                            self.chunks + (data is not None),
                            self.bytes,
                            now,
                            self.id,
                        ),
                    )
                    older = db.execute(
                        "SELECT id FROM files WHERE key = ? AND path = ? AND id != ?",
                        (self.key, self.path, self.id),
                    ).fetchall()
                    _delete(db, [row[0] for row in older])

        try:
            retry_busy(write)
            self.chunks += data is not None
            if complete:
                self.cache._evict(db)
        except sqlite3.Error as error:
            self.cache._fail(error)


class HashingReader:
    """A binary stream whose bytes are hashed as they are read (the file's digest)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._hash = hashlib.blake2b(digest_size=16)

    def readline(self, size: int = -1) -> bytes:
        data = self._stream.readline(size)
        self._hash.update(data)
        return data

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._hash.update(data)
        return data

    def digest(self) -> bytes:
        """The digest of what was read (the file's, once it was read to its end)."""
        return self._hash.digest()


def file_digest(path: Path) -> bytes:
    """16 bytes of BLAKE2b over the file's bytes, as :class:`HashingReader` makes them."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as stream:
        while block := stream.read(_READ_BLOCK):
            digest.update(block)
    return digest.digest()


def clear(path: Path | None = None) -> bool:
    """Delete the passage cache file (and its journal); whether there was one."""
    path = path or default_path()
    found = False
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            file.unlink()
            found = True
    return found


def _fields(stat: Stat) -> tuple[int, int, int, int, int]:
    return stat.size, stat.mtime_ns, stat.ctime_ns, stat.inode, stat.device


def _delete(db: sqlite3.Connection, ids: list[int]) -> None:
    for start in range(0, len(ids), 500):
        batch = ids[start : start + 500]
        marks = ",".join("?" * len(batch))
        db.execute(f"DELETE FROM chunks WHERE file IN ({marks})", batch)
        db.execute(f"DELETE FROM files WHERE id IN ({marks})", batch)
