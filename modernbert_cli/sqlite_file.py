"""A private SQLite file, opened lazily, that turns itself off with one warning when it fails.

Both caches are such files: the embedding cache (:mod:`modernbert_cli.cache`) and the
passage cache (:mod:`modernbert_cli.split_cache`). A cache is never what a command is
for, so a file that cannot be made, opened or read costs one line on stderr, and the
command goes on as if there were no cache. Several processes may share a file: WAL
journal, a busy timeout, and a retry for the steps SQLite refuses at once when busy.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BUSY_TIMEOUT_MS = 10_000


class SQLiteFile:
    """The connection to ``path``, made at first use; every failure turns it off for the run.

    A subclass names itself (:attr:`kind`), makes its tables (:meth:`_setup`) and may
    add pragmas (:meth:`_pragmas`) and a remedy for its warning (:meth:`_remedy`).
    """

    kind = "SQLite file"  # what the warning calls it

    def __init__(self, path: Path, warn: Callable[[str], None] | None = None) -> None:
        self.path = path
        self._warn = warn or (lambda message: print(message, file=sys.stderr))
        self._db: sqlite3.Connection | None = None
        self.disabled = False
        self.error: BaseException | None = None  # what turned the file off

    def _connect(self) -> sqlite3.Connection | None:
        if self.disabled:
            return None
        if self._db is None:
            try:
                make_private(self.path)
                self._db = retry_busy(self._open)
            except (sqlite3.Error, OSError) as error:
                self._fail(error)
        return self._db

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            for pragma in self._pragmas(db):
                db.execute(f"PRAGMA {pragma}")
            self._setup(db)
        except BaseException:
            db.close()
            raise
        return db

    def _pragmas(self, db: sqlite3.Connection) -> list[str]:
        """Set on every connection, in order, before :meth:`_setup`."""
        return ["journal_mode = WAL", "synchronous = NORMAL"]

    def _setup(self, db: sqlite3.Connection) -> None:
        """Check the file's format and make what is missing (raise DatabaseError if not ours)."""

    def _remedy(self, error: BaseException) -> str:
        """What the warning tells a person to do about ``error``."""
        return "delete the file to start afresh"

    def _fail(self, error: BaseException) -> None:
        """Turn the file off for this run, with one warning; the command goes on without it."""
        self.error = self.error or error
        if not self.disabled:
            self._warn(
                f"warning: {self.kind} {self.path} is unusable ({error}); going on "
                f"without it ({self._remedy(error)})"
            )
        self.disabled = True
        self._let_go()

    def close(self) -> None:
        self._let_go()

    def _let_go(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None


def make_private(path: Path) -> None:
    """The folder 0700 (when we make it) and the file 0600, before SQLite opens it.

    Others must not read a user's vectors or passages, nor test whether a sentence was
    ever embedded (keys are hashes of the texts). SQLite gives the -wal and -shm files
    the mode of the database file. A file made 0644 by an older version is narrowed too.
    """
    with contextlib.suppress(FileExistsError):
        path.parent.mkdir(mode=0o700, parents=True)
        os.chmod(path.parent, 0o700)  # exactly: mkdir's mode passes through the umask
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for journal in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_IMODE(journal.stat().st_mode) & 0o077:
                os.chmod(journal, 0o600)


class transaction:
    """BEGIN IMMEDIATE … COMMIT: the write lock is taken up front, so no deadlock on upgrade."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: Any, *rest: Any) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def retry_busy(step: Callable[[], Any], attempts: int = 10) -> Any:
    """Run ``step``, again after a short pause when it is refused at once as busy.

    The busy timeout covers ordinary reads and writes, but some steps fail at once
    instead of waiting (switching a new file to WAL while another process does the
    same): several processes starting together on a new file retry here. A refusal
    that came after the busy timeout had already waited is final.
    """
    for attempt in range(attempts):
        started = time.monotonic()
        try:
            return step()
        except sqlite3.OperationalError as error:
            busy = "locked" in str(error) or "busy" in str(error)
            waited = time.monotonic() - started > 1.0
            if not busy or waited or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def used_bytes(db: sqlite3.Connection) -> int:
    """Bytes of the database's pages in use (its free pages left out)."""
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    return (pages - free) * db.execute("PRAGMA page_size").fetchone()[0]
