"""A persistent embedding cache: a real SQLite file, so no text is embedded twice.

Keys are a *fingerprint* of everything that changes a vector (the model's files
and their sizes and times, ``max_seq_length``, the prompt, the precision the
model runs in) and a hash of the text. Values are the model's float32 output,
stored exactly: a cached vector is, bit for bit, the one computed when its text was
first embedded (a fresh one may differ in the last bits, ~1e-7, as the model's output
depends slightly on the other texts in its batch). Each row carries a CRC of its key
and bytes, and a row that fails it is never returned.

Several processes may use the file at once (WAL journal, short transactions, a
busy timeout). A cache that cannot be opened or read, or that turns out corrupt,
costs one warning on stderr and is then left alone: the command still succeeds.
The files on disk are bounded (``max_bytes``, the database and its write-ahead log
together); the least recently used rows go first (to the hour: a lookup writes a
row's time only when it is older than that). Bounds under 1 MB (the command line's
least) can be passed by a few pages of log.

>>> cache = EmbeddingCache(Path("/tmp/c.sqlite3"))  # doctest: +SKIP
>>> cache.lookup("fingerprint", [text_key("a cat")])  # doctest: +SKIP
{}
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from modernbert_cli.sqlite_file import SQLiteFile, retry_busy, transaction, used_bytes

if TYPE_CHECKING:
    import numpy as np


CACHE_DIR_ENV = "MODERNBERT_CLI_CACHE_DIR"
CACHE_FILE = "embeddings.sqlite3"
DEFAULT_MAX_MB = 2048

# SQLite allows 32,766 host parameters per statement; stay well below.
_BATCH = 900
# Bytes a row takes besides its vector: key, columns, index entries, page slack.
_ROW_OVERHEAD = 160
# A row's last_used is written again by a lookup at most this often: least recently used
# to the hour, and a repeat over the same texts writes nothing.
_TOUCH_S = 3600
_SCHEMA_VERSION = 1
# The bound is on the files on disk: the database may fill this share of it, its
# write-ahead log the rest (a log reset after each checkpoint, and cut back to size).
_MAIN_SHARE = 0.75
_WAL_SHARE = 1 / 16

# A rowid table (vectors are kilobytes: too big for a WITHOUT ROWID b-tree), rows
# keyed by a small model number rather than the 64-character fingerprint.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS models (
        id INTEGER PRIMARY KEY,
        fingerprint TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        hits INTEGER NOT NULL DEFAULT 0,
        misses INTEGER NOT NULL DEFAULT 0,
        last_used INTEGER NOT NULL,
        folder TEXT,
        files TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS embeddings (
        model INTEGER NOT NULL REFERENCES models (id),
        text_key BLOB NOT NULL,
        vector BLOB NOT NULL,
        truncated INTEGER NOT NULL,
        crc INTEGER NOT NULL,
        last_used INTEGER NOT NULL,
        UNIQUE (model, text_key)
    )""",
    "CREATE INDEX IF NOT EXISTS embeddings_last_used ON embeddings (last_used)",
    # A whole file's passage vectors in one row (rows × dimensions float32), keyed by how
    # the file was cut and its content: a repeat query over a folder reads a row per file,
    # not per passage. Copies of rows of `embeddings`, which an edited file re-uses.
    """CREATE TABLE IF NOT EXISTS blocks (
        model INTEGER NOT NULL REFERENCES models (id),
        block_key BLOB NOT NULL,
        rows INTEGER NOT NULL,
        truncated INTEGER NOT NULL,
        vectors BLOB NOT NULL,
        crc INTEGER NOT NULL,
        last_used INTEGER NOT NULL,
        UNIQUE (model, block_key)
    )""",
    "CREATE INDEX IF NOT EXISTS blocks_last_used ON blocks (last_used)",
)
# The columns each table must have; a file whose tables lack them is damaged.
_COLUMNS = {
    "models": {"id", "fingerprint", "name", "hits", "misses", "last_used"},
    "embeddings": {"model", "text_key", "vector", "truncated", "crc", "last_used"},
    "blocks": {"model", "block_key", "rows", "truncated", "vectors", "crc", "last_used"},
}
# Columns added later: older versions name their columns in every statement, so they
# still read and write a file that has these, and the format number stays 1.
_ADDED_COLUMNS = {"models": {"folder": "TEXT", "files": "TEXT"}}


class KeptBlocks:
    """Blocks (:meth:`EmbeddingCache.block`) held in memory, the least recently used let go
    past ``max_bytes``: a warm server's repeat search reads no row. Keyed by the model's
    fingerprint and the block key, which names a file's content: an edit is a new key.
    Each is held with its rows' lengths (:func:`~modernbert_cli.scoring.lengths`, 8 bytes
    a row), which cosine ranking would otherwise compute on every search."""

    def __init__(self, max_bytes: int) -> None:
        import threading
        from collections import OrderedDict

        self.max_bytes = max_bytes
        self.size = 0
        self._held: OrderedDict[tuple[str, bytes], Kept] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, bytes]) -> Kept | None:
        with self._lock:
            found = self._held.get(key)
            if found is not None:
                self._held.move_to_end(key)
            return found

    def put(self, key: tuple[str, bytes], block: tuple[np.ndarray, int]) -> Kept:
        """Hold ``block`` (vectors, truncated) under ``key``, its lengths computed: that."""
        from modernbert_cli.scoring import lengths

        vectors, truncated = block
        kept = Kept(vectors, truncated, lengths(vectors))
        size = vectors.nbytes + kept.lengths.nbytes
        if size > self.max_bytes:
            return kept
        vectors.flags.writeable = False  # shared by every request that finds it
        kept.lengths.flags.writeable = False
        with self._lock:
            if key in self._held:
                return kept
            self._held[key] = kept
            self.size += size
            while self.size > self.max_bytes:
                _, dropped = self._held.popitem(last=False)
                self.size -= dropped.vectors.nbytes + dropped.lengths.nbytes
        return kept


class Kept(NamedTuple):
    """A block held by :class:`KeptBlocks`: vectors, how many were truncated, rows' lengths."""

    vectors: np.ndarray
    truncated: int
    lengths: np.ndarray


class WrongTables(sqlite3.DatabaseError):
    """The file is a SQLite database, but not one of ours: damaged, as far as we go."""


def default_path() -> Path:
    """``$MODERNBERT_CLI_CACHE_DIR/embeddings.sqlite3``, else the platform's user cache folder."""
    folder = os.environ.get(CACHE_DIR_ENV)
    if not folder:
        from platformdirs import user_cache_dir

        folder = user_cache_dir("modernbert-cli", appauthor=False)
    return Path(folder) / CACHE_FILE


def text_key(text: str) -> bytes:
    """16 bytes of BLAKE2b: collisions are out of reach, rows stay small."""
    import hashlib

    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def text_keys(texts: Iterable[str]) -> list[bytes]:
    """:func:`text_key` of each text (a chunk of a folder's passages: no call per text)."""
    from hashlib import blake2b

    return [blake2b(text.encode("utf-8"), digest_size=16).digest() for text in texts]


def fingerprint(model_dir: Path | None, name: str, settings: dict[str, Any]) -> str:
    """Everything that changes a vector: the model's files (path, size, mtime) and settings.

    Rewriting the weights under the same path changes their size or time, and so the
    fingerprint: an old vector is never served for a new model.
    """
    import hashlib

    payload = {
        "model": str(model_dir.resolve()) if model_dir else name,
        "files": _model_files(model_dir) if model_dir is not None else [],
        **settings,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def files_digest(model_dir: Path) -> str:
    """A short digest of the model's files as the fingerprint sees them (path, size, mtime):
    when it changes, every fingerprint made from the old files can never match again."""
    import hashlib

    listing = json.dumps(_model_files(model_dir)).encode()
    return hashlib.blake2b(listing, digest_size=8).hexdigest()


def _model_files(model_dir: Path) -> list[tuple[str, int, int]]:
    files = []
    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.parts[-2:]):
            stat = path.stat()  # follows the hub cache's links to its blobs
            files.append((str(path.relative_to(model_dir)), stat.st_size, stat.st_mtime_ns))
    return files


@dataclass(frozen=True)
class Cached:
    vector: np.ndarray
    truncated: bool


@dataclass(frozen=True)
class Found:
    """Cached vectors of some keys: ``vectors[i]`` is ``keys[i]``'s where ``hit[i]``."""

    vectors: np.ndarray | None  # (keys × dimensions) float32, zeros where missing; None: no hit
    truncated: np.ndarray  # bool per key
    hit: np.ndarray  # bool per key

    @classmethod
    def none(cls, count: int) -> Found:
        import numpy

        return cls(None, numpy.zeros(count, dtype=bool), numpy.zeros(count, dtype=bool))


# Whether the model files a fingerprint was made from are still there, as they were.
CURRENT = "current"  # the same files: the entries can be used
CHANGED = "changed"  # other files in the folder now (a reinstall, new weights): never used
GONE = "gone"  # the folder is gone: never used
UNKNOWN = "unknown"  # made by 1.0, which did not record the folder


@dataclass(frozen=True)
class ModelStats:
    name: str
    fingerprint: str
    entries: int
    hits: int
    misses: int
    last_used: int
    folder: str | None = None  # the model's files, when they were cached
    files: str = UNKNOWN  # CURRENT, CHANGED, GONE or UNKNOWN

    @property
    def stale(self) -> bool:
        """Its model files are gone or changed: its entries can never be used again."""
        return self.files in (CHANGED, GONE)


class EmbeddingCache(SQLiteFile):
    """The cache file, opened lazily; every failure turns it off with one warning."""

    kind = "embedding cache"

    def __init__(
        self,
        path: Path,
        max_bytes: int = DEFAULT_MAX_MB << 20,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(path, warn)
        self.max_bytes = max_bytes
        self.damaged = 0  # rows that failed their check and were ignored

    # -- opening (SQLiteFile opens lazily and fails safely) ------------------------------

    def _pragmas(self, db: sqlite3.Connection) -> list[str]:
        page = db.execute("PRAGMA page_size").fetchone()[0]
        wal = int(self.max_bytes * _WAL_SHARE)
        return [
            # A new file can give freed pages back (see _shrink); an old one once cleared.
            # Before WAL: a file in WAL mode keeps the auto_vacuum it was made with.
            "auto_vacuum = INCREMENTAL",
            *super()._pragmas(db),
            f"wal_autocheckpoint = {min(1000, max(8, wal // page))}",
            f"journal_size_limit = {wal}",
        ]

    def _setup(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"unknown cache format {version}")
        if version != _SCHEMA_VERSION or _missing(db):
            with transaction(db):  # one process at a time makes or completes the tables
                missing = _missing(db)
                for statement in _SCHEMA:
                    db.execute(statement)
                for table, column, kind in missing:
                    if column:  # else the table was missing, and is made now
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def _remedy(self, error: BaseException) -> str:
        # Only for a damaged file is clearing the remedy (it deletes the file); a lock, a
        # permission or a folder that is a file are not cured by it.
        return "run: modernbert-cli cache clear" if _damaged(error) else "or use --no-cache"

    # -- the work --------------------------------------------------------------------------

    def lookup(self, fingerprint: str, keys: Sequence[bytes]) -> dict[bytes, Cached]:
        """The cached vectors among ``keys`` (missing and damaged ones are left out)."""
        found = self.vectors(fingerprint, keys)
        return {
            key: Cached(found.vectors[i], bool(found.truncated[i]))
            for i, key in enumerate(keys)
            if found.hit[i]
        }

    def vectors(self, fingerprint: str, keys: Sequence[bytes]) -> Found:
        """The cached vectors of ``keys`` as one matrix, row i for ``keys[i]`` where found.

        A lookup per text would cost more than the rest of a query over a cached folder:
        rows are read a batch at a time into one buffer, each row's check is two CRCs
        over its key and bytes (the fingerprint's part computed once), and last_used is
        written only for rows not used within :data:`_TOUCH_S` (a write per row read
        would cost more than the read).
        """
        import numpy

        first: dict[bytes, int] = {}  # each distinct key, and its row in the answer
        for key in keys:
            first.setdefault(key, len(first))
        unique = len(first)
        hit = numpy.zeros(unique, dtype=bool)
        truncated = numpy.zeros(unique, dtype=bool)
        db = self._connect()
        if db is None or not keys:
            return Found.none(len(keys))
        # A row's CRC starts from the fingerprint and its truncated flag: two values.
        heads = {flag: zlib.crc32(f"{fingerprint}{flag}".encode()) for flag in (0, 1)}
        rows_at: list[int] = []
        blobs: list[bytes] = []
        flags: list[int] = []
        crc32 = zlib.crc32
        now = int(time.time())
        touched = now - _TOUCH_S  # a row last used before this is refreshed
        try:
            model = self._model_id(db, fingerprint)
            if model is None:
                return Found.none(len(keys))
            wanted = list(first)
            for start in range(0, unique, _BATCH):
                batch = wanted[start : start + _BATCH]
                marks = ",".join("?" * len(batch))
                rows = db.execute(
                    f"SELECT rowid, text_key, vector, truncated, crc, last_used FROM embeddings "
                    f"WHERE model = ? AND text_key IN ({marks})",
                    (model, *batch),
                ).fetchall()
                stale = []
                for rowid, key, blob, flag, crc, last_used in rows:
                    head = heads.get(flag)
                    if head is None or crc32(blob, crc32(key, head)) != crc:
                        self.damaged += 1
                        continue
                    rows_at.append(first[key])
                    blobs.append(blob)
                    flags.append(flag)
                    if last_used < touched:
                        stale.append(rowid)
                if stale:
                    marks = ",".join("?" * len(stale))
                    db.execute(
                        f"UPDATE embeddings SET last_used = ? WHERE rowid IN ({marks})",
                        (now, *stale),
                    )
        except sqlite3.Error as error:
            self._fail(error)
            return Found.none(len(keys))
        truncated[rows_at] = flags
        matrix = self._matrix(rows_at, blobs, truncated)
        hit[rows_at] = True
        if matrix is None:
            return Found.none(len(keys))
        if unique < len(keys):  # a text given twice: its row twice
            where = numpy.fromiter((first[key] for key in keys), dtype=numpy.intp, count=len(keys))
            return Found(matrix[where], truncated[where], hit[where])
        return Found(matrix, truncated, hit)

    def _matrix(
        self, rows_at: list[int], blobs: list[bytes], truncated: np.ndarray
    ) -> np.ndarray | None:
        """The rows' vectors in one (distinct keys × dimensions) float32 matrix, zeros where
        none was found; a row of another length than the others (or not whole floats) is
        damaged, and left out of ``rows_at``."""
        import numpy

        lengths = set(map(len, blobs))
        size = next(iter(lengths)) if len(lengths) == 1 else -1
        if size <= 0 or size % 4:  # the rare case: damage to sort out
            sizes = Counter(len(blob) for blob in blobs if len(blob) and not len(blob) % 4)
            size = sizes.most_common(1)[0][0] if sizes else -1
            bad = [i for i, blob in enumerate(blobs) if len(blob) != size]
            self.damaged += len(bad)
            for i in reversed(bad):
                truncated[rows_at[i]] = False
                del rows_at[i], blobs[i]
        if not blobs:
            return None
        dims = size // 4
        matrix = numpy.zeros((len(truncated), dims), dtype=numpy.float32)
        matrix[rows_at] = numpy.frombuffer(b"".join(blobs), dtype="<f4").reshape(-1, dims)
        return matrix

    def store(
        self,
        fingerprint: str,
        name: str,
        items: Iterable[tuple[bytes, np.ndarray, bool]],
        folder: Path | None = None,
    ) -> None:
        """Add (key, float32 vector, truncated) rows, in short transactions.

        ``folder`` is where the model's files are, for ``cache`` to say whether they
        still are (the fingerprint is a hash: it cannot say).
        """
        import numpy

        db = self._connect()
        if db is None:
            return
        now = int(time.time())
        items = list(items)
        if not items:
            return
        # A slice at a time, room made before each: freed pages are reused, so the file
        # never grows past its bound, however big the chunk. Slices are small beside
        # the bound, so a small bound still keeps most of its rows.
        row_bytes = _ROW_OVERHEAD + 4 * max(int(vector.size) for _, vector, _ in items)
        per_slice = max(1, min(_BATCH, int(self.max_bytes * _MAIN_SHARE / 32 / row_bytes)))
        try:
            for start in range(0, len(items), per_slice):
                batch = items[start : start + per_slice]
                self._evict(db, incoming=len(batch) * row_bytes)

                def write(batch: list[tuple[bytes, np.ndarray, bool]] = batch) -> None:
                    with transaction(db):
                        model = self._model_id(db, fingerprint, name, folder, create=True)
                        rows = []
                        for key, vector, truncated in batch:
                            blob = numpy.ascontiguousarray(vector, dtype="<f4").tobytes()
                            crc = _crc(fingerprint, key, blob, truncated)
                            rows.append((model, key, blob, int(truncated), crc, now))
                        db.executemany(
                            "INSERT OR REPLACE INTO embeddings "
                            "(model, text_key, vector, truncated, crc, last_used) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            rows,
                        )

                retry_busy(write)  # past the busy timeout, a loaded machine gets more tries
            self._shrink(db)
        except sqlite3.Error as error:
            self._fail(error)

    def block(self, fingerprint: str, key: bytes) -> tuple[np.ndarray, int] | None:
        """The vectors kept for a whole file under ``key`` (rows × dimensions float32, in
        passage order) and how many of its passages were truncated; None when none is kept,
        or the row fails its check (counted in :attr:`damaged`)."""
        import numpy

        db = self._connect()
        if db is None:
            return None
        try:
            model = self._model_id(db, fingerprint)
            if model is None:
                return None
            row = db.execute(
                "SELECT rowid, rows, truncated, vectors, crc, last_used FROM blocks "
                "WHERE model = ? AND block_key = ?",
                (model, key),
            ).fetchone()
            if row is None:
                return None
            rowid, rows, truncated, blob, crc, last_used = row
            whole = rows > 0 and isinstance(blob, bytes) and len(blob) % (4 * rows) == 0
            if not whole or _block_crc(fingerprint, key, rows, truncated, blob) != crc:
                self.damaged += 1
                return None
            now = int(time.time())
            if last_used < now - _TOUCH_S:
                db.execute("UPDATE blocks SET last_used = ? WHERE rowid = ?", (now, rowid))
        except sqlite3.Error as error:
            self._fail(error)
            return None
        return numpy.frombuffer(blob, dtype="<f4").reshape(rows, -1), truncated

    def store_block(
        self,
        fingerprint: str,
        name: str,
        key: bytes,
        vectors: np.ndarray,
        truncated: int,
        folder: Path | None = None,
    ) -> None:
        """Keep a whole file's vectors under ``key`` (replacing what was kept there)."""
        import numpy

        db = self._connect()
        if db is None or not len(vectors):
            return
        blob = numpy.ascontiguousarray(vectors, dtype="<f4").tobytes()
        if len(blob) > self.max_bytes * _MAIN_SHARE / 32:  # as a slice of store's rows
            return  # a file too big for this bound: its passages' rows serve it
        rows, crc = len(vectors), _block_crc(fingerprint, key, len(vectors), truncated, blob)

        def write() -> None:
            with transaction(db):
                model = self._model_id(db, fingerprint, name, folder, create=True)
                db.execute(
                    "INSERT OR REPLACE INTO blocks "
                    "(model, block_key, rows, truncated, vectors, crc, last_used) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (model, key, rows, truncated, blob, crc, int(time.time())),
                )

        try:
            self._evict(db, incoming=len(blob) + _ROW_OVERHEAD)
            retry_busy(write)
            self._shrink(db)
        except sqlite3.Error as error:
            self._fail(error)

    @staticmethod
    def _model_id(
        db: sqlite3.Connection,
        fingerprint: str,
        name: str = "",
        folder: Path | None = None,
        create: bool = False,
    ) -> int | None:
        row = db.execute("SELECT id FROM models WHERE fingerprint = ?", (fingerprint,)).fetchone()
        if row is not None or not create:
            return row and row[0]
        cursor = db.execute(
            "INSERT INTO models (fingerprint, name, last_used, folder, files) "
            "VALUES (?, ?, ?, ?, ?)",
            (fingerprint, name, int(time.time()), *_where(folder)),
        )
        return cursor.lastrowid

    def record(
        self, fingerprint: str, name: str, hits: int, misses: int, folder: Path | None = None
    ) -> None:
        """Count this run's hits and misses for ``modernbert-cli cache``."""
        db = self._connect()
        if db is None:
            return
        try:
            # The folder and files a fingerprint was made from never change; a row of 1.0
            # (none recorded) gets them now, as they are what this fingerprint matched.
            db.execute(
                "INSERT INTO models (fingerprint, name, hits, misses, last_used, folder, files) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (fingerprint) DO UPDATE SET "
                "hits = hits + excluded.hits, misses = misses + excluded.misses, "
                "name = excluded.name, last_used = excluded.last_used, "
                "folder = coalesce(folder, excluded.folder), "
                "files = coalesce(files, excluded.files)",
                (fingerprint, name, hits, misses, int(time.time()), *_where(folder)),
            )
        except sqlite3.Error as error:
            self._fail(error)

    def _evict(self, db: sqlite3.Connection, incoming: int = 0) -> None:
        """Least recently used rows go until ``incoming`` more bytes fit in the bound."""
        bound = self.max_bytes * _MAIN_SHARE
        size = used_bytes(db)
        if size + incoming <= bound:
            return
        counts = {
            table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("embeddings", "blocks")
        }
        if not any(counts.values()):
            return
        # Rows are about the same size: drop the share that leaves room for the new
        # ones and 5% more, so that eviction does not run again at the very next slice.
        # Files' blocks go in the same share as passages' rows (both least recent first).
        keep = max(0.0, 0.95 * bound - incoming) / size
        with transaction(db):
            for table, count in counts.items():
                if count:
                    db.execute(
                        f"DELETE FROM {table} WHERE rowid IN "
                        f"(SELECT rowid FROM {table} ORDER BY last_used LIMIT ?)",
                        (int(count * (1 - keep)) + 1,),
                    )

    def _shrink(self, db: sqlite3.Connection) -> None:
        """Give free pages back when the file is past its bound (made by an older version,
        or with a larger bound): at once for a file made with incremental vacuum, else by
        one VACUUM that makes it so."""
        pages, page = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "page_size"))
        if pages * page <= self.max_bytes * _MAIN_SHARE:
            return
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # 2: incremental
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            db.execute("VACUUM")
        db.execute("PRAGMA incremental_vacuum").fetchall()  # it frees a page per step

    # -- for `modernbert-cli cache` --------------------------------------------------------

    def stats(self) -> list[ModelStats]:
        """One row per fingerprint, the most recently used first; reads the model folders."""
        db = self._connect()
        if db is None:
            return []
        try:
            rows = db.execute(
                "SELECT m.name, m.fingerprint, "
                "(SELECT count(*) FROM embeddings e WHERE e.model = m.id), "
                "m.hits, m.misses, m.last_used, m.folder, m.files "
                "FROM models m ORDER BY m.last_used DESC, m.id DESC"
            ).fetchall()
        except sqlite3.Error as error:
            self._fail(error)
            return []
        digests: dict[str, str | None] = {}  # one look per folder
        stats = []
        for *row, folder, files in rows:
            if folder is not None and folder not in digests:
                digests[folder] = _digest_of(Path(folder))
            stats.append(ModelStats(*row, folder, _state(files, digests.get(folder))))
        return stats

    def size_bytes(self) -> int:
        files = [self.path, Path(f"{self.path}-wal")]
        return sum(f.stat().st_size for f in files if f.exists())

    def clear(self, name: str | None = None, stale: bool = False) -> int | None:
        """Delete every row (or one model's, or with ``stale`` only those of fingerprints
        whose model files are gone or changed); returns how many went.

        A file that SQLite finds damaged (corrupt, or no database at all) is deleted
        whole, with its -wal and -shm files, so every model's entries go: then the
        answer is None. Any other failure (a lock held too long, no permission) is an
        error, and the file is left as it is.
        """
        if not self.path.exists():
            return 0  # nothing to clear, and no file to create
        warn, self._warn = self._warn, lambda message: None  # the caller reports instead
        try:
            db = self._connect()
            if db is None:
                return self._remove_damaged(self.error)
            doomed = None  # every fingerprint (of the model)
            if stale:
                doomed = [row.fingerprint for row in self.stats() if row.stale]
                if self.disabled:  # stats failed on a damaged file
                    return self._remove_damaged(self.error)
            with transaction(db):
                if name is None and doomed is None:
                    deleted = db.execute("DELETE FROM embeddings").rowcount
                    db.execute("DELETE FROM blocks")
                    db.execute("DELETE FROM models")
                else:
                    where, args = _which(name, doomed)
                    models = f"model IN (SELECT id FROM models {where})"
                    deleted = db.execute(f"DELETE FROM embeddings WHERE {models}", args).rowcount
                    db.execute(f"DELETE FROM blocks WHERE {models}", args)
                    db.execute(f"DELETE FROM models {where}", args)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect with the VACUUM
            db.execute("VACUUM")
            return deleted
        except sqlite3.Error as error:
            self._fail(error)
            return self._remove_damaged(error)
        finally:
            self._warn = warn

    def _remove_damaged(self, error: BaseException | None) -> None:
        """Delete the cache file and its journal files, if ``error`` says it is damaged."""
        from modernbert_cli.errors import OutputError

        self.close()
        if not _damaged(error):
            raise OutputError(f"cannot clear the embedding cache {self.path}: {error}")
        for file in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            try:
                file.unlink()
            except FileNotFoundError:
                continue
            except OSError as error:
                raise OutputError(
                    f"cannot delete the damaged cache file {file}: {error.strerror or error}"
                ) from None


def _where(folder: Path | None) -> tuple[str | None, str | None]:
    """The folder and files digest to record for a fingerprint (none without a folder)."""
    if folder is None:
        return None, None
    return str(folder), _digest_of(folder)


def _digest_of(folder: Path) -> str | None:
    try:
        return files_digest(folder) if folder.is_dir() else None
    except OSError:  # unreadable now: as good as gone
        return None


def _state(recorded: str | None, now: str | None) -> str:
    if recorded is None:
        return UNKNOWN
    if now is None:
        return GONE
    return CURRENT if now == recorded else CHANGED


def _which(name: str | None, fingerprints: list[str] | None) -> tuple[str, list[Any]]:
    """A WHERE clause on models by name and/or a list of fingerprints, and its values."""
    clauses, args = [], []
    if name is not None:
        clauses.append("name = ?")
        args.append(name)
    if fingerprints is not None:
        clauses.append(f"fingerprint IN ({','.join('?' * len(fingerprints))})")
        args.extend(fingerprints)
    return "WHERE " + " AND ".join(clauses), args


def _damaged(error: BaseException | None) -> bool:
    """Whether ``error`` says the file itself is bad (and deleting it is the cure).

    Corrupt, not a database, or not our tables: DatabaseError itself (WrongTables is
    one). Locked, read-only, I/O: its OperationalError subclass; OSError: the folder.
    """
    return isinstance(error, sqlite3.DatabaseError) and not isinstance(
        error, sqlite3.OperationalError
    )


def _missing(db: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """The (table, column, type) to add; raises WrongTables for tables not ours."""
    missing = []
    for table, needed in _COLUMNS.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if not have:
            missing.append((table, "", ""))  # the table itself: CREATE makes it
            continue
        if not needed <= have:
            lacking = ", ".join(sorted(needed - have))
            raise WrongTables(f"table {table} has no column {lacking}: not an embedding cache")
        for column, kind in _ADDED_COLUMNS.get(table, {}).items():
            if column not in have:
                missing.append((table, column, kind))
    return missing


def _crc(fingerprint: str, key: bytes, blob: bytes, truncated: bool | int) -> int:
    return zlib.crc32(blob, zlib.crc32(key, zlib.crc32(f"{fingerprint}{int(truncated)}".encode())))


def _block_crc(fingerprint: str, key: bytes, rows: int, truncated: int, blob: bytes) -> int:
    head = zlib.crc32(f"{fingerprint}{rows}:{truncated}".encode())
    return zlib.crc32(blob, zlib.crc32(key, head))
