"""Every output format, in one place: Rich tables for people, clean data for programs.

Which format is used is decided by :func:`choose_format`; where the bytes go (stdout,
or a file written atomically) by :func:`open_output`. Renderers take plain data
(texts, numpy arrays, :class:`~modernbert_cli.scoring.Hit` lists) and a stream.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from modernbert_cli.errors import OutputError, StdoutClosed, UsageError
from modernbert_cli.inputs import Text

if TYPE_CHECKING:
    from modernbert_cli.hits import Hit

EMBED_FORMATS = ("table", "jsonl", "json", "csv", "tsv", "npy")
SIMILAR_FORMATS = ("table", "jsonl", "json", "csv", "tsv", "grep")
MATRIX_FORMATS = ("table", "list", "jsonl", "json", "csv", "tsv", "npy")

_SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".npy": "npy",
    ".txt": "table",
}

# Beyond this a matrix table cannot be read on a screen; a file format is suggested.
MAX_TABLE_ROWS = 200
_MATRIX_CELL_WIDTH = 9  # "-0.123" with its padding and border, per column


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
    if fmt == "npy" and output is None:
        raise UsageError("--format npy writes binary data: give a file with -o FILE.npy")
    return fmt


@contextmanager
def open_output(path: str | None, binary: bool = False) -> Iterator[IO[Any]]:
    """stdout, or ``path`` written atomically: a failure half-way leaves no partial file."""
    if path is None or path == "-":
        try:
            yield sys.stdout.buffer if binary else sys.stdout
            sys.stdout.flush()
        except BrokenPipeError:
            raise StdoutClosed() from None
        return
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"-o {path}: is a directory")
    directory = target.parent if str(target.parent) else Path(".")
    import tempfile  # here: a command that writes to stdout does without it

    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise OutputError(f"-o {path}: cannot write there ({error.strerror or error})") from None
    try:
        mode = "wb" if binary else "w"
        encoding = None if binary else "utf-8"
        newline = None if binary else ""
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as stream:
            yield stream
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"-o {path}: cannot write ({error.strerror or error})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _console(stream: IO[str]) -> Any:
    from rich.console import Console

    # Rich decides colour from the stream: none when it is not a terminal or
    # NO_COLOR is set. Files get a fixed, comfortable width.
    is_stdout = stream is sys.stdout
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


def _tsv_field(text: str) -> str:
    """TSV cannot quote: tabs, newlines and backslashes are escaped (\\t, \\n, \\\\)."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _row_writer(stream: IO[str], fmt: str):
    if fmt == "csv":
        writer = csv.writer(stream, lineterminator="\n")
        return writer.writerow

    def write_tsv(row: Sequence[Any]) -> None:
        stream.write("\t".join(_tsv_field(str(cell)) for cell in row) + "\n")

    return write_tsv


def _json_line(stream: IO[str], record: dict[str, Any]) -> None:
    stream.write(json.dumps(record, ensure_ascii=False) + "\n")


def _place(item: Any) -> dict[str, Any]:
    """A passage's file and line range, for JSON records (nothing for other texts)."""
    if getattr(item, "path", None) is None or getattr(item, "start", None) is None:
        return {}
    return {"path": item.path, "lines": [item.start, item.end]}


def _location(item: Any, width: int = 28) -> str:
    """Where an item is, for a table cell of ``width``: a passage's ``PATH:START-END`` with
    the path cut in the middle, so that its file name and lines stay in sight."""
    source = str(getattr(item, "source", "") or "")
    path = getattr(item, "path", None)
    if path is None or len(source) <= width:
        return source
    tail = source[len(path) :]  # ":START-END"
    name = os.path.basename(path)
    room = width - len(tail) - len(name) - 2  # "…/" before the file name
    if room < 4:  # not even the name fits: keep its end
        return "…" + (name + tail)[-(width - 1) :]
    head = path[: len(path) - len(name) - 1]
    return f"{head[: room // 2]}…{head[len(head) - (room - room // 2) :]}/{name}{tail}"


def _grep_line(item: Any) -> str:
    """``PATH:LINE`` as grep and ripgrep print it (editors open it there: vim -q, VS Code)."""
    if getattr(item, "path", None) is not None and getattr(item, "start", None) is not None:
        return f"{item.path}:{item.start}"
    source = str(getattr(item, "source", "") or "")
    where, _, line = source.rpartition(":")
    return source if where and line.isdigit() else f"{source}:1"


# --- embed -------------------------------------------------------------------------------


class EmbeddingsWriter:
    """Writes embeddings chunk by chunk in ``fmt``, so no format needs the whole set at once.

    The table is the exception: it is drawn once, at :meth:`close`.
    """

    def __init__(self, stream: IO[Any], fmt: str, model_name: str) -> None:
        self.stream, self.fmt, self.model = stream, fmt, model_name
        self.count = 0
        self._npy: NpyWriter | None = None
        self._rows: list[tuple[Text, Any]] = []  # the table's, held for drawing
        self._write_row = _row_writer(stream, fmt) if fmt in ("csv", "tsv") else None

    def write(self, texts: Sequence[Text], embeddings: Any) -> None:
        if self.fmt == "npy":
            self._npy = self._npy or NpyWriter(self.stream, embeddings.dtype, embeddings.shape[1:])
            self._npy.write(embeddings)
        elif self.fmt == "table":
            self._rows.extend(zip(texts, embeddings, strict=True))
        elif self._write_row is not None:
            if self.count == 0:
                dims = (f"dim_{i}" for i in range(embeddings.shape[1]))
                self._write_row(["text", "source", *dims])
            for t, e in zip(texts, embeddings, strict=True):
                self._write_row([t.text, t.source, *e.tolist()])
        else:
            for n, (t, e) in enumerate(zip(texts, embeddings, strict=True), self.count):
                record = {"text": t.text, "source": t.source, **_place(t), "model": self.model}
                line = json.dumps({**record, "embedding": e.tolist()}, ensure_ascii=False)
                if self.fmt == "jsonl":
                    self.stream.write(line + "\n")
                else:  # one JSON list, written an element at a time
                    self.stream.write(("[" if n == 0 else ",\n") + line)
        self.count += len(texts)

    def close(self) -> None:
        if self.fmt == "json":
            self.stream.write("[]\n" if self.count == 0 else "]\n")
        elif self.fmt == "npy" and self._npy is not None:
            self._npy.close()
        elif self.fmt == "table":
            import numpy as np

            texts = [t for t, _ in self._rows]
            embeddings = np.asarray([e for _, e in self._rows])
            _embeddings_table(self.stream, texts, embeddings, self.model)


class NpyWriter:
    """A ``.npy`` file written a block of rows at a time; the header is fixed at the end.

    The header is written first with room for any row count, and rewritten in place
    once the count is known, so memory does not grow with the number of rows.
    """

    _HEADER_BYTES = 128  # numpy's own header for a 2-D array fits well within this

    def __init__(self, stream: IO[bytes], dtype: Any, row_shape: tuple[int, ...]) -> None:
        self.stream, self.dtype, self.row_shape, self.rows = stream, dtype, row_shape, 0
        self._start = stream.tell()
        stream.write(self._header())

    def _header(self) -> bytes:
        import numpy as np

        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(self.dtype)),
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

        self.stream.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.rows += len(rows)

    def close(self) -> None:
        end = self.stream.tell()
        self.stream.seek(self._start)
        self.stream.write(self._header())
        self.stream.seek(end)


def _embeddings_table(stream: IO[str], texts: Sequence[Text], embeddings: Any, model: str) -> None:
    import numpy as np
    from rich.table import Table

    norms = np.linalg.norm(embeddings.astype(np.float64), axis=1)
    table = Table(title=f"{len(texts)} embedding(s) · {model}", title_justify="left")
    table.add_column("#", justify="right", style="dim")
    table.add_column("text", ratio=1)
    table.add_column("source", max_width=28)
    table.add_column("dims", justify="right")
    table.add_column("norm", justify="right")
    table.add_column("first values", no_wrap=True)
    for i, (t, e, n) in enumerate(zip(texts, embeddings, norms, strict=True), 1):
        head = " ".join(_short_number(v) for v in e[:4].tolist())
        table.add_row(
            str(i),
            _line(t.text),
            _line(_location(t), "cyan"),
            str(e.shape[0]),
            f"{n:.4f}",
            head + " …",
        )
    _console(stream).print(table)


def _short_number(value: float | int) -> str:
    return f"{value:+.4f}" if isinstance(value, float) else str(value)


# --- similar -----------------------------------------------------------------------------


def write_hits(
    stream: IO[str],
    fmt: str,
    queries: Sequence[Text],
    results: Sequence[Sequence[Hit]],
    metric: str,
) -> None:
    """Write ranked results (each hit's ``item`` is its corpus Text), best first."""
    if fmt == "table":
        console = _console(stream)
        for query, hits in zip(queries, results, strict=True):
            console.print(_hits_table(query, hits, metric))
        return
    if fmt == "grep":
        # One line per hit, best first: PATH:LINE: text (on one line), as ripgrep prints.
        for hits in results:
            for h in hits:
                stream.write(f"{_grep_line(h.item)}: {' '.join(h.item.text.split())}\n")
        return
    rows = (
        {
            "query": q.text,
            "rank": h.rank,
            "score": h.score,
            "text": h.item.text,
            "source": h.item.source,
            **(_place(h.item) if fmt in ("jsonl", "json") else {}),
        }
        for q, hits in zip(queries, results, strict=True)
        for h in hits
    )
    if fmt == "jsonl":
        for row in rows:
            _json_line(stream, row)
    elif fmt == "json":
        json.dump(list(rows), stream, ensure_ascii=False)
        stream.write("\n")
    else:
        write = _row_writer(stream, fmt)
        write(["query", "rank", "score", "text", "source"])
        for row in rows:
            write(list(row.values()))


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
            _line(_location(hit.item), "cyan"),
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


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


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
    stream: IO[Any], fmt: str, rows: Sequence[Text], columns: Sequence[Text], scores: Any
) -> None:
    """Write an all-pairs score matrix (``scores[i, j]`` for rows[i], columns[j])."""
    import numpy as np

    if fmt == "npy":
        np.save(stream, scores)
    elif fmt == "table":
        _matrix_table(stream, rows, columns, scores)
    elif fmt == "list":
        for i, row in enumerate(rows):
            stream.write(row.text + "\n")
            for j, column in enumerate(columns):
                if rows is columns and i == j:
                    continue
                stream.write(f" - {scores[i, j]:.4f}: {_head(column.text, 100)}\n")
            stream.write("\n")
    elif fmt == "json":
        json.dump(
            {
                "rows": [t.text for t in rows],
                "columns": [t.text for t in columns],
                "scores": scores.tolist(),
            },
            stream,
            ensure_ascii=False,
        )
        stream.write("\n")
    elif fmt == "jsonl":
        for i, row in enumerate(rows):
            _json_line(
                stream, {"text": row.text, "source": row.source, "scores": scores[i].tolist()}
            )
    else:
        # Streams row by row: a large matrix never exists as text in memory.
        write = _row_writer(stream, fmt)
        write(["", *(t.text for t in columns)])
        for row, values in zip(rows, scores, strict=True):
            write([row.text, *values.tolist()])


def _head(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _matrix_table(
    stream: IO[str], rows: Sequence[Text], columns: Sequence[Text], scores: Any
) -> None:
    from rich.table import Table
    from rich.text import Text as RichText

    low, high = float(scores.min()), float(scores.max())
    table = Table(title=f"similarity, {len(rows)}×{len(columns)}", title_justify="left")
    table.add_column("", ratio=1, min_width=12)
    for j in range(len(columns)):
        table.add_column(str(j + 1), justify="right", no_wrap=True)
    for i, row in enumerate(rows):
        cells = [RichText(f"{v:.3f}", style=_heat(v, low, high)) for v in scores[i].tolist()]
        label = f"{i + 1} {row.text}" if rows is columns else row.text
        table.add_row(_line(label), *cells)
    console = _console(stream)
    console.print(table)
    if rows is not columns:
        legend = Table.grid(padding=(0, 1))
        for j, column in enumerate(columns, 1):
            legend.add_row(RichText(str(j), style="dim"), _line(column.text))
        console.print(legend)


def _heat(value: float, low: float, high: float) -> str:
    """A heat-map cell: cool blue for the lowest score, hot red for the highest."""
    fraction = (value - low) / (high - low) if high > low else 1.0
    palette = ["bright_blue", "cyan", "green", "yellow", "bright_red"]
    return "bold " + palette[min(len(palette) - 1, int(fraction * len(palette)))]


# --- matrix --pairwise -------------------------------------------------------------------


def write_pairs(
    stream: IO[Any], fmt: str, a: Sequence[Text], b: Sequence[Text], scores: Any
) -> None:
    """Write one score per pair, in input order."""
    import numpy as np

    if fmt == "npy":
        np.save(stream, scores)
        return
    triples = zip(a, b, scores.tolist(), strict=True)
    if fmt == "table":
        from rich.table import Table

        table = Table(title=f"{len(a)} pair(s)", title_justify="left")
        table.add_column("#", justify="right", style="dim")
        table.add_column("score", justify="right")
        table.add_column("a", ratio=1)
        table.add_column("b", ratio=1)
        low, high = float(scores.min()), float(scores.max())
        for i, (x, y, s) in enumerate(triples, 1):
            table.add_row(
                str(i), f"[{_heat(s, low, high)}]{s:.4f}[/]", _line(x.text), _line(y.text)
            )
        _console(stream).print(table)
    elif fmt == "jsonl":
        for x, y, s in triples:
            _json_line(stream, {"a": x.text, "b": y.text, "score": s})
    elif fmt == "json":
        json.dump(
            [{"a": x.text, "b": y.text, "score": s} for x, y, s in triples],
            stream,
            ensure_ascii=False,
        )
        stream.write("\n")
    elif fmt == "list":
        for x, y, s in triples:
            stream.write(f"{x.text}\n - {s:.4f}: {_head(y.text, 100)}\n")
    else:
        # No header: each line is one self-describing record, ready for `sort -g`.
        write = _row_writer(stream, fmt)
        for x, y, s in triples:
            write([s, x.text, y.text])


# --- cache -------------------------------------------------------------------------------


def write_cache_stats(stream: IO[str], path: Any, size: int, models: Sequence[Any]) -> None:
    """The cache's place, size and per-model counts, as a table."""
    from rich.table import Table

    console = _console(stream)
    console.print(f"embedding cache: {path}", soft_wrap=True, highlight=False)
    console.print(f"size: {size / 2**20:,.1f} MB", highlight=False)
    table = Table()
    table.add_column("model", ratio=1)
    table.add_column("entries", justify="right")
    table.add_column("hits", justify="right")
    table.add_column("misses", justify="right")
    table.add_column("fingerprint", style="dim")
    for row in models:
        table.add_row(
            _line(row.name),
            f"{row.entries:,}",
            f"{row.hits:,}",
            f"{row.misses:,}",
            row.fingerprint[:12],
        )
    if not models:
        table.caption = "empty"
    console.print(table)


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
            _line(server.get("model") or "?"),
            str(server.get("pid") or "?"),
            server.get("state", "running"),
            "?" if requests is None else f"{requests:,}",
            "?" if started is None else f"{(time.time() - started) / 60:.0f} min",
            "?" if idle is None else f"{idle / 60:g} min",
            _line(server.get("http") or "-"),
            _line(server["socket"], "dim"),
        )
    if not servers:
        table.caption = "none running"
    _console(stream).print(table)
