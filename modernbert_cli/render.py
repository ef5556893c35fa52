"""Every output format, in one place: Rich tables for people, clean data for programs.

:data:`FORMATS` is the one table of output formats: each one's file extensions, whether
it is binary, and its writer for each command that offers it. The format lists of the
commands, the extension rule of :func:`choose_format` and the writers all derive from it.
Where the bytes go (stdout, a file replaced atomically, a device written into) is
:func:`open_output`'s business. Writers take plain data (texts, numpy arrays,
:class:`~modernbert_cli.scoring.Hit` lists) and a stream.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from modernbert_cli.errors import OutputError, StdoutClosed, UsageError
from modernbert_cli.inputs import Text

if TYPE_CHECKING:
    from modernbert_cli.hits import Hit

# Beyond this a matrix table cannot be read on a screen; a file format is suggested.
MAX_TABLE_ROWS = 200
_MATRIX_CELL_WIDTH = 9  # "-0.123" with its padding and border, per column
LIST_CUT = 100  # characters of each text in the list layout


# --- choosing the format -----------------------------------------------------------------


def choose_format(
    requested: str | None,
    output: str | None,
    allowed: Sequence[str],
    piped_default: str,
    stdout_is_terminal: bool,
) -> str:
    """``--format`` wins; else the output file's extension; else table on a terminal."""
    if requested is not None:
        fmt = requested
    elif output is not None:
        fmt = _SUFFIX_FORMATS.get(Path(output).suffix.lower(), "")
        if not fmt:
            raise UsageError(
                f"-o {output}: cannot tell the format from the extension; add --format "
                f"({', '.join(allowed)})"
            )
    else:
        fmt = "table" if stdout_is_terminal else piped_default
    if fmt not in allowed:
        raise UsageError(f"--format {fmt} is not available here (choose from {', '.join(allowed)})")
    if FORMATS[fmt].binary and output is None:
        extension = FORMATS[fmt].extensions[0]
        raise UsageError(f"--format {fmt} writes binary data: give a file with -o FILE{extension}")
    return fmt


# --- where the bytes go ------------------------------------------------------------------


@contextmanager
def open_output(path: str | None, binary: bool = False) -> Iterator[IO[Any]]:
    """stdout, or the file ``path``, whose write failures are one-line errors.

    A regular file is replaced atomically (a failure half-way leaves the old one
    untouched), keeping its mode, and through a symlink (the link stays, its target is
    replaced). A device or FIFO is written into, as the shell's ``>`` does.
    """
    if path is None or path == "-":
        stream = _Guarded(sys.stdout.buffer if binary else sys.stdout, None)
        yield stream
        stream.flush()
        return
    try:
        status = os.stat(path)  # follows a symlink to what it names
    except FileNotFoundError:
        status = None
    except OSError as error:
        raise OutputError(f"-o {path}: cannot write there ({error.strerror or error})") from None
    if status is not None and stat.S_ISDIR(status.st_mode):
        raise OutputError(f"-o {path}: is a directory")
    if status is not None and not stat.S_ISREG(status.st_mode):
        with _written_into(path, binary) as stream:
            yield stream
        return
    with _replaced(path, binary, status) as stream:
        yield stream


@contextmanager
def _written_into(path: str, binary: bool) -> Iterator[IO[Any]]:
    """A device or FIFO: renaming a file over it would replace /dev/null with a file."""
    try:
        raw = _open(path, binary)
    except OSError as error:
        raise OutputError(f"-o {path}: cannot write there ({error.strerror or error})") from None
    stream = _Guarded(raw, path)
    try:
        yield stream
        stream.close()  # its last bytes may still not fit
    finally:
        with suppress(OSError):
            raw.close()


@contextmanager
def _replaced(path: str, binary: bool, status: os.stat_result | None) -> Iterator[IO[Any]]:
    """A regular file, written beside its target and renamed over it once complete."""
    import tempfile  # here: a command that writes to stdout does without it

    target = Path(os.path.realpath(path))  # through a symlink, even a dangling one
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as error:
        raise OutputError(f"-o {path}: cannot write there ({error.strerror or error})") from None
    _temp_files.add(tmp)
    raw = _open(fd, binary)
    stream = _Guarded(raw, path)
    try:
        yield stream
        stream.close()  # its last bytes may still not fit
        try:
            _take_over(tmp, status)
            os.replace(tmp, target)
        except OSError as error:
            raise OutputError(f"-o {path}: cannot write ({error.strerror or error})") from None
    except BaseException:
        with suppress(OSError):
            raw.close()
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _temp_files.discard(tmp)


def _open(file: str | int, binary: bool) -> IO[Any]:
    if binary:
        return open(file, "wb")
    return open(file, "w", encoding="utf-8", newline="")


def _take_over(tmp: str, status: os.stat_result | None) -> None:
    """The new file gets the old one's mode and owner (a new one: 0666 less the umask)."""
    if status is None:
        os.chmod(tmp, 0o666 & ~_umask())
        return
    if (status.st_uid, status.st_gid) != (os.geteuid(), os.getegid()):
        with suppress(OSError):  # only root may give a file away; others keep it as theirs
            os.chown(tmp, status.st_uid, status.st_gid)
    os.chmod(tmp, stat.S_IMODE(status.st_mode))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _Guarded:
    """A stream whose failures (disk full, file too large) become one-line errors.

    Only the stream's own failures are the user's to fix; any other OSError is a bug
    and stays one.
    """

    def __init__(self, stream: IO[Any], path: str | None) -> None:
        self.wrapped, self.path = stream, path  # path None: stdout

    def write(self, data: Any) -> int:
        try:
            return self.wrapped.write(data)
        except OSError as error:
            raise self._failed(error) from None

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.wrapped, name)
        if not callable(attribute):
            return attribute

        def guarded(*args: Any, **kwargs: Any) -> Any:  # flush, close, seek (which flushes)…
            try:
                return attribute(*args, **kwargs)
            except OSError as error:
                if isinstance(error, io.UnsupportedOperation):
                    raise  # a question (fileno() of a StringIO), not a failure
                raise self._failed(error) from None

        return guarded

    def _failed(self, error: OSError) -> Exception:
        if error.errno == errno.EPIPE:
            return StdoutClosed()  # the reader went away (| head -1): stop quietly
        reason = error.strerror or str(error)
        if self.path is not None:
            return OutputError(f"-o {self.path}: cannot write ({reason})")
        _silence_stdout()  # the unwritten rest would fail again at exit, with a traceback
        return OutputError(f"cannot write to stdout ({reason})")


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


class _TempFiles:
    """Temporary files being written, removed if SIGTERM or SIGHUP ends the process.

    Ctrl-C unwinds through the writers and removes them on its way; these signals kill
    at once. The handler removes the files and then lets the signal kill as it would
    have: nothing is raised into whatever code (even torch's C++) is running.
    """

    SIGNALS = tuple(
        getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
    )

    def __init__(self) -> None:
        self._paths: set[str] = set()
        self._installed: dict[int, Any] = {}

    def add(self, path: str) -> None:
        self._paths.add(path)
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; a library caller keeps its own
        for signum in self.SIGNALS:
            # SIG_DFL only: a handler someone set (or SIG_IGN under nohup) stays theirs.
            if signum not in self._installed and signal.getsignal(signum) is signal.SIG_DFL:
                self._installed[signum] = signal.signal(signum, self._on_signal)

    def discard(self, path: str) -> None:
        self._paths.discard(path)
        if not self._paths and threading.current_thread() is threading.main_thread():
            for signum, previous in self._installed.items():
                signal.signal(signum, previous)
            self._installed.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        for path in list(self._paths):
            with suppress(OSError):
                os.unlink(path)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


_temp_files = _TempFiles()


# --- shared pieces -----------------------------------------------------------------------


def _console(stream: IO[str]) -> Any:
    from rich.console import Console

    # Rich decides colour from the stream: none when it is not a terminal or
    # NO_COLOR is set. Files get a fixed, comfortable width.
    is_stdout = getattr(stream, "wrapped", stream) is sys.stdout
    return Console(
        file=stream,
        highlight=False,
        soft_wrap=False,
        width=None if is_stdout else 120,
        force_terminal=None if is_stdout else False,
    )


def _line(text: str, style: str = "") -> Any:
    """A table cell that stays on one line, cut with an ellipsis to the column's width.

    The column itself is left wrappable so Rich shrinks it (and not the score
    columns) when the terminal is narrow.
    """
    from rich.text import Text as RichText

    return RichText(" ".join(text.split()), style=style, no_wrap=True, overflow="ellipsis")


class _Path:
    """A table cell for a path (or ``path:lines``), cut in the middle to keep the file name."""

    MIN_WIDTH = 12

    def __init__(self, text: str, style: str = "") -> None:
        self.text, self.style = " ".join(text.split()), style

    def __rich_measure__(self, console: Any, options: Any) -> Any:
        from rich.measure import Measurement

        return Measurement(min(len(self.text), self.MIN_WIDTH), len(self.text))

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        from rich.text import Text as RichText

        cut = cut_middle(self.text, options.max_width)
        yield RichText(cut, style=self.style, no_wrap=True, overflow="ellipsis")


def cut_middle(text: str, width: int) -> str:
    """``text`` in ``width`` characters, cut in the middle: a path keeps its file name.

    >>> cut_middle("sample_inputs/notes/volcanoes.md:1-12", 24)
    'sampl…/volcanoes.md:1-12'
    """
    if len(text) <= width:
        return text
    if width < 2:
        return "…"[:width]
    budget = width - 1  # one character for the ellipsis
    slash = text.rfind("/")
    name = len(text) - slash  # the file name with its slash (and any :lines)
    # The whole name if it fits; else its end (the extension, the lines) over the start.
    tail = name if slash >= 0 and name < budget else budget - budget // 3
    return text[: budget - tail] + "…" + text[len(text) - tail :]


def _short_number(value: float | int) -> str:
    return f"{value:+.4f}" if isinstance(value, float) else str(value)


class _Values:
    """The first values of a vector: as many as fit the cell, then an ellipsis."""

    SHOWN = 4

    def __init__(self, values: Sequence[float | int]) -> None:
        self.values = [_short_number(v) for v in values[: self.SHOWN]]

    def _text(self, count: int) -> str:
        return " ".join(self.values[:count]) + " …"

    def __rich_measure__(self, console: Any, options: Any) -> Any:
        from rich.measure import Measurement

        return Measurement(len(self._text(1)), len(self._text(len(self.values))))

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        from rich.text import Text as RichText

        count = len(self.values)
        while count > 1 and len(self._text(count)) > options.max_width:
            count -= 1
        yield RichText(self._text(count), no_wrap=True, overflow="ellipsis")


def _tsv_field(text: str) -> str:
    """TSV cannot quote: tabs, newlines and backslashes are escaped (\\t, \\n, \\\\)."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _row_writer(stream: IO[str], delimiter: str) -> Callable[[Sequence[Any]], None]:
    if delimiter == ",":
        return csv.writer(stream, lineterminator="\n").writerow

    def write_tsv(row: Sequence[Any]) -> None:
        stream.write("\t".join(_tsv_field(str(cell)) for cell in row) + "\n")

    return write_tsv


def _json_line(stream: IO[str], record: Mapping[str, Any]) -> None:
    stream.write(json.dumps(record, ensure_ascii=False) + "\n")


def _place(item: Any) -> dict[str, Any]:
    """A passage's file and line range, for JSON records (nothing for other texts)."""
    if getattr(item, "path", None) is None or getattr(item, "start", None) is None:
        return {}
    return {"path": item.path, "lines": [item.start, item.end]}


def _grep_line(item: Any) -> str:
    """``PATH:LINE`` as grep and ripgrep print it (editors open it there: vim -q, VS Code)."""
    if getattr(item, "path", None) is not None and getattr(item, "start", None) is not None:
        return f"{item.path}:{item.start}"
    source = str(getattr(item, "source", "") or "")
    where, _, line = source.rpartition(":")
    return source if where and line.isdigit() else f"{source}:1"


class _JsonList:
    """One JSON list, written an element at a time: nothing is held whole."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream, self.count = stream, 0

    def add(self, record: Any) -> None:
        self.stream.write(
            ("[" if self.count == 0 else ",\n") + json.dumps(record, ensure_ascii=False)
        )
        self.count += 1

    def close(self) -> None:
        self.stream.write("[]\n" if self.count == 0 else "]\n")


def _head(text: str) -> str:
    """The list layout's cut: the first 100 characters, always followed by ``...``."""
    return text[:LIST_CUT] + "..."


def _heat(value: float, low: float, high: float) -> str:
    """A heat-map cell: cool blue for the lowest score, hot red for the highest."""
    fraction = (value - low) / (high - low) if high > low else 1.0
    palette = ["bright_blue", "cyan", "green", "yellow", "bright_red"]
    return "bold " + palette[min(len(palette) - 1, int(fraction * len(palette)))]


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# --- embed: one writer per format, fed a chunk at a time ---------------------------------


class EmbeddingsWriter:
    """Writes embeddings chunk by chunk in ``fmt``, so no format needs the whole set at once.

    ``meta`` says what the embeddings are: ``model`` and ``precision`` at least (see
    :func:`modernbert_cli.saved.describe` for the rest); the files ``similar
    --embeddings`` reads record it. ``path`` is the ``-o`` file, beside which a ``.npy``
    gets its ``.npy.json``. The table is drawn once, at :meth:`close`.
    """

    def __init__(
        self, stream: IO[Any], fmt: str, meta: Mapping[str, Any], path: str | None = None
    ) -> None:
        self.stream, self.fmt, self.count = stream, fmt, 0
        make = FORMATS[fmt].embed
        if make is None:
            raise ValueError(f"embed cannot write {fmt}")
        self._sink = make(stream, dict(meta), path)

    def write(self, texts: Sequence[Text], embeddings: Any) -> None:
        self._sink.write(texts, embeddings)
        self.count += len(texts)

    def close(self) -> None:
        self._sink.close()


class _EmbeddingsSink:
    """What every embed format shares: the metadata, checked against the first chunk."""

    def __init__(self, stream: IO[Any], meta: dict[str, Any], path: str | None) -> None:
        self.stream, self.meta, self.path = stream, meta, path
        self.model = str(meta.get("model", ""))
        self.described: dict[str, Any] | None = None  # saved.describe(), once the shape is known

    def write(self, texts: Sequence[Text], embeddings: Any) -> None:
        if self.described is None:
            from modernbert_cli import saved

            self.described = saved.describe(self.meta, embeddings)
        self.add(texts, embeddings)

    def add(self, texts: Sequence[Text], embeddings: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _JsonEmbeddings(_EmbeddingsSink):
    """Records that say what they are: text, source, model, embedding, and its meta."""

    def __init__(
        self, stream: IO[Any], meta: dict[str, Any], path: str | None, lines: bool
    ) -> None:
        super().__init__(stream, meta, path)
        self._list = None if lines else _JsonList(stream)

    def add(self, texts: Sequence[Text], embeddings: Any) -> None:
        for t, e in zip(texts, embeddings, strict=True):
            record = {
                "text": t.text,
                "source": t.source,
                **_place(t),
                "model": self.model,
                "embedding": e.tolist(),
                "meta": self.described,
            }
            if self._list is None:
                _json_line(self.stream, record)
            else:
                self._list.add(record)

    def close(self) -> None:
        if self._list is not None:
            self._list.close()


class _DelimitedEmbeddings(_EmbeddingsSink):
    def __init__(
        self, stream: IO[Any], meta: dict[str, Any], path: str | None, delimiter: str
    ) -> None:
        super().__init__(stream, meta, path)
        self._write_row = _row_writer(stream, delimiter)
        self._header = False

    def add(self, texts: Sequence[Text], embeddings: Any) -> None:
        if not self._header:
            self._write_row(["text", "source", *(f"dim_{i}" for i in range(embeddings.shape[1]))])
            self._header = True
        for t, e in zip(texts, embeddings, strict=True):
            self._write_row([t.text, t.source, *e.tolist()])


class _ParquetEmbeddings(_EmbeddingsSink):
    """Columns text, source, embedding; what they are goes in the file's schema metadata."""

    def __init__(self, stream: IO[bytes], meta: dict[str, Any], path: str | None) -> None:
        super().__init__(stream, meta, path)
        self._parquet: Any = None

    def add(self, texts: Sequence[Text], embeddings: Any) -> None:
        if self._parquet is None:
            from modernbert_cli.parquet import ParquetEmbeddingsWriter

            self._parquet = ParquetEmbeddingsWriter(self.stream, self.described or self.meta)
        self._parquet.write(texts, embeddings)

    def close(self) -> None:
        if self._parquet is None:  # no rows: still a valid file of the right shape
            from modernbert_cli.parquet import ParquetEmbeddingsWriter

            self._parquet = ParquetEmbeddingsWriter(self.stream, self.meta)
        self._parquet.close()


class _NpyEmbeddings(_EmbeddingsSink):
    """The bare N×D array; what it is goes in a ``FILE.npy.json`` beside it."""

    def __init__(self, stream: IO[bytes], meta: dict[str, Any], path: str | None) -> None:
        super().__init__(stream, meta, path)
        self._npy: NpyWriter | None = None
        self._texts = hashlib.blake2b(digest_size=16)

    def add(self, texts: Sequence[Text], embeddings: Any) -> None:
        from modernbert_cli import saved

        if self._npy is None:
            self._npy = NpyWriter(self.stream, embeddings.dtype, embeddings.shape[1:])
        self._npy.write(embeddings)
        saved.digest_texts(self._texts, (t.text for t in texts))

    def close(self) -> None:
        from modernbert_cli import saved

        if self._npy is None:
            return
        self._npy.close()
        if self.path in (None, "-") or _is_special(self.path):
            return  # stdout, a device or a FIFO: there is no "beside" to write to
        sidecar = saved.sidecar(
            self.meta,
            self.described or {},
            rows=self._npy.rows,
            dtype=str(self._npy.dtype),
            data_digest=self._npy.digest.hexdigest(),
            texts_digest=self._texts.hexdigest(),
        )
        # Written first: if the array's own rename then fails, the old array no longer
        # matches its description, and a reader says so rather than trust it.
        with open_output(str(saved.sidecar_path(self.path))) as stream:
            json.dump(sidecar, stream, indent=2)
            stream.write("\n")


def _is_special(path: str) -> bool:
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


class _TableEmbeddings(_EmbeddingsSink):
    def __init__(self, stream: IO[Any], meta: dict[str, Any], path: str | None) -> None:
        super().__init__(stream, meta, path)
        self._rows: list[tuple[Text, Any]] = []  # held for drawing

    def add(self, texts: Sequence[Text], embeddings: Any) -> None:
        self._rows.extend(zip(texts, embeddings, strict=True))

    def close(self) -> None:
        import numpy as np
        from rich.table import Table

        table = Table(
            title=f"{len(self._rows)} embedding(s) · {self.model}",
            title_justify="left",
            expand=True,
        )
        table.add_column("#", justify="right", style="dim")
        table.add_column("text", ratio=5, min_width=12)
        table.add_column("source", ratio=3, max_width=32)
        table.add_column("dims", justify="right")
        table.add_column("norm", justify="right")
        table.add_column("first values", ratio=2, max_width=35)
        for i, (t, e) in enumerate(self._rows, 1):
            norm = float(np.linalg.norm(e.astype(np.float64)))
            table.add_row(
                str(i),
                _line(t.text),
                _Path(t.source, "cyan"),
                str(e.shape[0]),
                f"{norm:.4f}",
                _Values(e[: _Values.SHOWN].tolist()),
            )
        _console(self.stream).print(table)


class NpyWriter:
    """A ``.npy`` file written a block of rows at a time; the header is fixed at the end.

    The header is written first with room for any row count, and rewritten in place
    once the count is known, so memory does not grow with the number of rows. A stream
    that cannot seek (a FIFO) gets the rows spooled to a temporary file first.
    """

    _HEADER_BYTES = 128  # numpy's own header for a 2-D array fits well within this

    def __init__(self, stream: IO[bytes], dtype: Any, row_shape: tuple[int, ...]) -> None:
        import tempfile

        import numpy as np

        self.stream, self.dtype, self.row_shape, self.rows = stream, np.dtype(dtype), row_shape, 0
        self.digest = hashlib.blake2b(digest_size=16)  # of the rows' bytes, for the sidecar
        # Closed (and so deleted) in close().
        self._spool = None if stream.seekable() else tempfile.TemporaryFile()  # noqa: SIM115
        self._out = self._spool or stream
        self._start = self._out.tell()
        self._out.write(self._header())

    def _header(self) -> bytes:
        import numpy as np

        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.rows, *self.row_shape),
        }
        text = repr(header).encode("latin1")
        magic = np.lib.format.magic(1, 0)
        pad = self._HEADER_BYTES - len(magic) - 2 - len(text) - 1
        length = (self._HEADER_BYTES - len(magic) - 2).to_bytes(2, "little")
        return magic + length + text + b" " * pad + b"\n"

    def write(self, rows: Any) -> None:
        import numpy as np

        data = np.ascontiguousarray(rows, dtype=self.dtype).tobytes()
        self._out.write(data)
        self.digest.update(data)
        self.rows += len(rows)

    def close(self) -> None:
        end = self._out.tell()
        self._out.seek(self._start)
        self._out.write(self._header())
        self._out.seek(end)
        if self._spool is not None:
            import shutil

            self._spool.seek(0)
            shutil.copyfileobj(self._spool, self.stream)
            self._spool.close()


# --- similar -----------------------------------------------------------------------------


def write_hits(
    stream: IO[str],
    fmt: str,
    queries: Sequence[Text],
    results: Sequence[Sequence[Hit]],
    metric: str,
) -> None:
    """Write ranked results (each hit's ``item`` is its corpus Text), best first."""
    _writer(fmt, "similar")(stream, queries, results, metric)


def _hit_records(
    queries: Sequence[Text], results: Sequence[Sequence[Hit]], place: bool = False
) -> Iterator[dict[str, Any]]:
    """One record per hit; ``place`` adds a passage's path and lines (JSON only)."""
    for q, hits in zip(queries, results, strict=True):
        for h in hits:
            yield {
                "query": q.text,
                "rank": h.rank,
                "score": h.score,
                "text": h.item.text,
                "source": h.item.source,
                **(_place(h.item) if place else {}),
            }


def _jsonl_hits(stream: IO[str], queries: Sequence[Text], results: Any, metric: str) -> None:
    for record in _hit_records(queries, results, place=True):
        _json_line(stream, record)


def _json_hits(stream: IO[str], queries: Sequence[Text], results: Any, metric: str) -> None:
    records = _JsonList(stream)
    for record in _hit_records(queries, results, place=True):
        records.add(record)
    records.close()


def _grep_hits(stream: IO[str], queries: Sequence[Text], results: Any, metric: str) -> None:
    """One line per hit, best first: ``PATH:LINE: text`` (on one line), as ripgrep prints."""
    for hits in results:
        for h in hits:
            stream.write(f"{_grep_line(h.item)}: {' '.join(h.item.text.split())}\n")


def _delimited_hits(
    stream: IO[str], queries: Sequence[Text], results: Any, metric: str, delimiter: str
) -> None:
    write = _row_writer(stream, delimiter)
    write(["query", "rank", "score", "text", "source"])
    for record in _hit_records(queries, results):
        write(list(record.values()))


def _table_hits(stream: IO[str], queries: Sequence[Text], results: Any, metric: str) -> None:
    console = _console(stream)
    for query, hits in zip(queries, results, strict=True):
        console.print(_hits_table(query, hits, metric))


def _hits_table(query: Text, hits: Sequence[Hit], metric: str) -> Any:
    from rich.table import Table
    from rich.text import Text as RichText

    table = Table(title=f"[bold]{_escape(query.text)}[/] · {metric}", title_justify="left")
    table.add_column("rank", justify="right", style="dim")
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)  # the bar
    table.add_column("text", ratio=1)
    table.add_column("source", max_width=28)
    if not hits:
        table.caption = "no results above the threshold"
    scores = [h.score for h in hits]
    low, high = _bar_range(scores, metric)
    for hit in hits:
        fraction = (hit.score - low) / (high - low) if high > low else 1.0
        colour = _score_colour(fraction)
        table.add_row(
            str(hit.rank),
            RichText(f"{hit.score:.4f}", style=colour),
            RichText(_bar(fraction), style=colour),
            _line(hit.item.text),
            _Path(hit.item.source, "cyan"),
        )
    return table


def _bar_range(scores: Sequence[float], metric: str) -> tuple[float, float]:
    """Cosine has a natural 0..1 scale; other metrics are drawn relative to the results."""
    if metric == "cosine" or not scores:
        return 0.0, 1.0
    return min(min(scores), 0.0) if metric == "dot" else min(scores), max(scores)


def _bar(fraction: float, width: int = 10) -> str:
    cells = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * cells + "░" * (width - cells)


def _score_colour(fraction: float) -> str:
    return "green" if fraction >= 0.6 else "yellow" if fraction >= 0.3 else "red"


# --- matrix ------------------------------------------------------------------------------


def check_table_fits(rows: int, columns: int, width: int) -> None:
    """Refuse a matrix table that no screen can show, before any work is done."""
    max_columns = max(1, (width - 24) // _MATRIX_CELL_WIDTH)
    if rows > MAX_TABLE_ROWS or columns > max_columns:
        raise UsageError(
            f"a {rows}×{columns} matrix does not fit a {width}-column terminal table; "
            "write a file instead, e.g. --format csv -o scores.csv (or tsv, json, npy)"
        )


def write_matrix(
    stream: IO[Any],
    fmt: str,
    rows: Sequence[Text],
    columns: Sequence[Text] | None,
    scores: Any,
) -> None:
    """Write an all-pairs score matrix (``scores[i, j]`` for rows[i], columns[j]).

    ``columns=None``: the rows scored against themselves (N×N), labelled once.
    """
    _writer(fmt, "matrix")(stream, rows, columns, scores)


def _npy_scores(stream: IO[bytes], rows: Any, columns: Any, scores: Any) -> None:
    import numpy as np

    np.save(stream, scores)


def _list_matrix(
    stream: IO[str], rows: Sequence[Text], columns: Sequence[Text] | None, scores: Any
) -> None:
    """Each text, then every text it was scored with (itself included), in input order."""
    for row, values in zip(rows, scores, strict=True):
        stream.write(row.text + "\n")
        for column, score in zip(
            rows if columns is None else columns, values.tolist(), strict=True
        ):
            stream.write(f" - {score:.4f}: {_head(column.text)}\n")
        stream.write("\n")


def _json_matrix(
    stream: IO[str], rows: Sequence[Text], columns: Sequence[Text] | None, scores: Any
) -> None:
    texts = [t.text for t in rows]
    record = {
        "rows": texts,
        "columns": texts if columns is None else [t.text for t in columns],
        "scores": scores.tolist(),
    }
    json.dump(record, stream, ensure_ascii=False)
    stream.write("\n")


def _jsonl_matrix(
    stream: IO[str], rows: Sequence[Text], columns: Sequence[Text] | None, scores: Any
) -> None:
    for row, values in zip(rows, scores, strict=True):
        _json_line(stream, {"text": row.text, "source": row.source, "scores": values.tolist()})


def _delimited_matrix(
    stream: IO[str],
    rows: Sequence[Text],
    columns: Sequence[Text] | None,
    scores: Any,
    delimiter: str,
) -> None:
    # Streams row by row: a large matrix never exists as text in memory.
    write = _row_writer(stream, delimiter)
    write(["", *(t.text for t in (rows if columns is None else columns))])
    for row, values in zip(rows, scores, strict=True):
        write([row.text, *values.tolist()])


def _table_matrix(
    stream: IO[str], rows: Sequence[Text], columns: Sequence[Text] | None, scores: Any
) -> None:
    from rich.table import Table
    from rich.text import Text as RichText

    width = len(rows) if columns is None else len(columns)
    low, high = float(scores.min()), float(scores.max())
    table = Table(title=f"similarity, {len(rows)}×{width}", title_justify="left")
    table.add_column("", ratio=1, min_width=12)
    for j in range(width):
        table.add_column(str(j + 1), justify="right", no_wrap=True)
    for i, row in enumerate(rows):
        cells = [RichText(f"{v:.3f}", style=_heat(v, low, high)) for v in scores[i].tolist()]
        # The same texts both ways: a row's number is its column's.
        label = f"{i + 1} {row.text}" if columns is None else row.text
        table.add_row(_line(label), *cells)
    console = _console(stream)
    console.print(table)
    if columns is not None:
        legend = Table.grid(padding=(0, 1))
        for j, column in enumerate(columns, 1):
            legend.add_row(RichText(str(j), style="dim"), _line(column.text))
        console.print(legend)


# --- matrix --pairwise -------------------------------------------------------------------


def write_pairs(
    stream: IO[Any], fmt: str, a: Sequence[Text], b: Sequence[Text], scores: Any
) -> None:
    """Write one score per pair, in input order."""
    _writer(fmt, "pairs")(stream, a, b, scores)


def _pair_records(a: Sequence[Text], b: Sequence[Text], scores: Any) -> Iterator[dict[str, Any]]:
    for x, y, s in zip(a, b, scores.tolist(), strict=True):
        yield {"a": x.text, "b": y.text, "score": s}


def _jsonl_pairs(stream: IO[str], a: Sequence[Text], b: Sequence[Text], scores: Any) -> None:
    for record in _pair_records(a, b, scores):
        _json_line(stream, record)


def _json_pairs(stream: IO[str], a: Sequence[Text], b: Sequence[Text], scores: Any) -> None:
    records = _JsonList(stream)
    for record in _pair_records(a, b, scores):
        records.add(record)
    records.close()


def _delimited_pairs(
    stream: IO[str], a: Sequence[Text], b: Sequence[Text], scores: Any, delimiter: str
) -> None:
    # The score first, so `sort -g` orders the lines; a header as every CSV/TSV here has
    # (`sort -g` puts it before the numbers, `sort -gr` after them).
    write = _row_writer(stream, delimiter)
    write(["score", "a", "b"])
    for record in _pair_records(a, b, scores):
        write([record["score"], record["a"], record["b"]])


def _list_pairs(stream: IO[str], a: Sequence[Text], b: Sequence[Text], scores: Any) -> None:
    for record in _pair_records(a, b, scores):
        stream.write(f"{record['a']}\n - {record['score']:.4f}: {_head(record['b'])}\n")


def _table_pairs(stream: IO[str], a: Sequence[Text], b: Sequence[Text], scores: Any) -> None:
    from rich.table import Table

    table = Table(title=f"{len(a)} pair(s)", title_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("score", justify="right")
    table.add_column("a", ratio=1)
    table.add_column("b", ratio=1)
    low, high = (float(scores.min()), float(scores.max())) if len(a) else (0.0, 1.0)
    for i, (x, y, s) in enumerate(zip(a, b, scores.tolist(), strict=True), 1):
        table.add_row(str(i), f"[{_heat(s, low, high)}]{s:.4f}[/]", _line(x.text), _line(y.text))
    _console(stream).print(table)


# --- cache and servers (always tables) ---------------------------------------------------


def write_cache_stats(stream: IO[str], path: Any, size: int, models: Sequence[Any]) -> None:
    """The cache's place, size and per-model counts, as a table.

    Two fingerprints of one model (a reinstall, new weights) differ in their folder, the
    state of its files (``changed``, ``gone``: never used again) and when last used.
    """
    import time

    from rich.console import Group
    from rich.table import Table

    table = Table()
    table.add_column("model", ratio=1)
    table.add_column("entries", justify="right")
    table.add_column("hits", justify="right")
    table.add_column("misses", justify="right")
    table.add_column("last used")
    table.add_column("files")
    table.add_column("fingerprint", style="dim")
    for row in models:
        shown: Any = _Path(row.name)
        if row.folder and row.folder != row.name:  # an alias or hub id: where its files are
            shown = Group(shown, _Path(row.folder, "dim"))
        table.add_row(
            shown,
            f"{row.entries:,}",
            f"{row.hits:,}",
            f"{row.misses:,}",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(row.last_used)),
            row.files,
            row.fingerprint[:12],
        )
    if not models:
        table.caption = "empty"
    out = _Guarded(stream, None)
    console = _console(out)
    console.print(f"embedding cache: {path}", soft_wrap=True, highlight=False)
    console.print(f"size: {size / 2**20:,.1f} MB", highlight=False)
    console.print(table)
    out.flush()


def write_servers(stream: IO[str], servers: Sequence[dict[str, Any]]) -> None:
    """The running servers, as a table (a paused or loading one shows what is known)."""
    import time

    from rich.table import Table

    table = Table(title="modernbert-cli servers", title_justify="left")
    columns = ("model", "pid", "state", "requests", "up", "idle timeout", "http", "socket")
    for column in columns:
        table.add_column(column, justify="right" if column in ("pid", "requests") else "left")
    for server in servers:
        started, idle = server.get("started"), server.get("idle_timeout")
        requests = server.get("requests")
        table.add_row(
            _Path(server.get("model") or "?"),
            str(server.get("pid") or "?"),
            server.get("state", "running"),
            "?" if requests is None else f"{requests:,}",
            "?" if started is None else f"{(time.time() - started) / 60:.0f} min",
            "?" if idle is None else f"{idle / 60:g} min",
            _line(server.get("http") or "-"),
            _Path(server["socket"], "dim"),
        )
    if not servers:
        table.caption = "none running"
    out = _Guarded(stream, None)
    _console(out).print(table)
    out.flush()


# --- the table of formats ----------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    """An output format: the extensions that choose it, and its writer for each command.

    A command offers the formats that have a writer for it (``None``: not offered).
    """

    name: str
    extensions: tuple[str, ...] = ()
    binary: bool = False  # a file only (-o), never stdout
    embed: Callable[..., _EmbeddingsSink] | None = None  # (stream, meta, path) -> sink
    similar: Callable[..., None] | None = None  # (stream, queries, results, metric)
    matrix: Callable[..., None] | None = None  # (stream, rows, columns | None, scores)
    pairs: Callable[..., None] | None = None  # (stream, a, b, scores)

    @property
    def commands(self) -> tuple[str, ...]:
        return tuple(c for c in ("embed", "similar", "matrix", "pairs") if getattr(self, c))


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "table",
            (".txt",),
            embed=_TableEmbeddings,
            similar=_table_hits,
            matrix=_table_matrix,
            pairs=_table_pairs,
        ),
        Format("list", matrix=_list_matrix, pairs=_list_pairs),
        Format(
            "jsonl",
            (".jsonl", ".ndjson"),
            embed=partial(_JsonEmbeddings, lines=True),
            similar=_jsonl_hits,
            matrix=_jsonl_matrix,
            pairs=_jsonl_pairs,
        ),
        Format(
            "json",
            (".json",),
            embed=partial(_JsonEmbeddings, lines=False),
            similar=_json_hits,
            matrix=_json_matrix,
            pairs=_json_pairs,
        ),
        *(
            Format(
                name,
                (f".{name}",),
                embed=partial(_DelimitedEmbeddings, delimiter=delimiter),
                similar=partial(_delimited_hits, delimiter=delimiter),
                matrix=partial(_delimited_matrix, delimiter=delimiter),
                pairs=partial(_delimited_pairs, delimiter=delimiter),
            )
            for name, delimiter in (("csv", ","), ("tsv", "\t"))
        ),
        Format(
            "npy",
            (".npy",),
            binary=True,
            embed=_NpyEmbeddings,
            matrix=_npy_scores,
            pairs=_npy_scores,
        ),
        Format("parquet", (".parquet", ".pq"), binary=True, embed=_ParquetEmbeddings),
        Format("grep", similar=_grep_hits),
    )
}

EMBED_FORMATS = tuple(name for name, f in FORMATS.items() if f.embed)
SIMILAR_FORMATS = tuple(name for name, f in FORMATS.items() if f.similar)
MATRIX_FORMATS = tuple(name for name, f in FORMATS.items() if f.matrix and f.pairs)
_SUFFIX_FORMATS = {ext: f.name for f in FORMATS.values() for ext in f.extensions}


def _writer(fmt: str, command: str) -> Callable[..., None]:
    write = getattr(FORMATS[fmt], command)
    if write is None:
        raise ValueError(f"{command} cannot write {fmt}")
    return write
