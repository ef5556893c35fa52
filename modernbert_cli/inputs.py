"""Reading texts from arguments, files, folders and stdin.

Every text keeps its source (``notes.txt:12``, ``<stdin>:3``, ``<arg>:1`` or a
document's path) so results can point back to it. Everything that can go wrong is
an :class:`~modernbert_cli.errors.InputError` naming the file and line, raised before
any model is loaded.

>>> read_texts(InputSpec(texts=["a cat", "a dog"])).texts[0]
Text(text='a cat', source='<arg>:1')
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from modernbert_cli.errors import InputError, UsageError

STDIN = "-"
STDIN_NAME = "<stdin>"
ARG_NAME = "<arg>"

# How much of a file is looked at to decide whether it is binary (as git and grep do).
_SNIFF_BYTES = 8192
# Piped input up to this size is held in memory; beyond it, in a temporary file.
_SPOOL_MEMORY = 8 << 20

_JSONL_SUFFIXES = {".jsonl", ".ndjson"}
_CSV_SUFFIXES = {".csv"}
_TSV_SUFFIXES = {".tsv", ".tab"}


@dataclass(frozen=True)
class Text:
    """One text to embed and where it came from."""

    text: str
    source: str


@dataclass
class InputSpec:
    """Where to read texts from: the input options every command shares."""

    texts: Sequence[str] = ()
    files: Sequence[str] = ()
    field: str | None = None
    column: str | None = None
    documents: bool = False


@dataclass
class Inputs:
    """The texts read, and what was skipped on the way (for a note on stderr)."""

    texts: list[Text] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


class Stdin:
    """Standard input, spooled once so it can be checked, then streamed.

    Only one option may claim it (``-i -`` and ``--queries -`` cannot both read it).
    Small input stays in memory; beyond ``_SPOOL_MEMORY`` it goes to a temporary file,
    so a large pipe costs disk, not memory.
    """

    def __init__(self, stream: BinaryIO | None, is_tty: bool) -> None:
        self._stream = stream
        self.is_tty = is_tty
        self._taken_by: str | None = None
        self._spool: Any = None

    @property
    def piped(self) -> bool:
        return self._stream is not None and not self.is_tty

    def open(self, who: str) -> BinaryIO:
        """The whole of stdin from its start; ``who`` may open it again, nobody else may.

        ``who`` names the claimant for messages; a ``#suffix`` tells apart two claims
        by the same option (``-i - -i -``).
        """
        if self._taken_by not in (None, who):
            taker = self._taken_by.split("#", 1)[0]
            raise UsageError(f"stdin can be read only once: {taker} already took it")
        if self._stream is None:
            raise InputError(f"{STDIN_NAME}: there is no standard input to read")
        self._taken_by = who
        if self._spool is None:
            # Lives as long as this object: every pass over stdin reads it again.
            self._spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY)  # noqa: SIM115
            shutil.copyfileobj(self._stream, self._spool, 1 << 20)
        self._spool.seek(0)
        return _Borrowed(self._spool)  # type: ignore[return-value]

    def read(self, who: str) -> bytes:
        with self.open(who) as stream:
            return stream.read()


class _Borrowed:
    """The spool, lent out: closing the loan leaves it open for the next pass."""

    def __init__(self, spool: Any) -> None:
        self._spool = spool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._spool, name)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._spool)

    def __enter__(self) -> _Borrowed:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@dataclass
class Scan:
    """What a check of the inputs found: how many texts, and what was skipped."""

    count: int
    skipped: dict[str, int]


def iter_texts(
    spec: InputSpec,
    stdin: Stdin | None = None,
    *,
    stdin_if_piped: bool = True,
    skipped: dict[str, int] | None = None,
) -> Iterator[Text]:
    """Every text named by ``spec``, lazily, in order; stdin when piped and nothing else given.

    Memory stays flat however large the files; errors surface at the bad line, so
    call :func:`scan` first to have them before any work is done.
    """
    out = Inputs(skipped=skipped if skipped is not None else {})
    for i, text in enumerate(spec.texts, 1):
        if text == STDIN:
            yield from _iter_file(STDIN, spec, stdin, out, who=f"the argument '{STDIN}'#{i}")
        elif not text.strip():
            raise InputError(f"{ARG_NAME}:{i}: the text is empty")
        else:
            yield Text(text, f"{ARG_NAME}:{i}")
    for position, name in enumerate(spec.files):
        yield from _iter_file(name, spec, stdin, out, who=f"-i {STDIN}#{position}")
    if not spec.texts and not spec.files and stdin_if_piped and stdin is not None and stdin.piped:
        yield from _iter_file(STDIN, spec, stdin, out, who="piped input")


def scan(spec: InputSpec, stdin: Stdin | None = None, *, what: str = "input") -> Scan:
    """Read all of the input once, keeping nothing: every error now, and the count."""
    skipped: dict[str, int] = {}
    count = sum(1 for _ in iter_texts(spec, stdin, skipped=skipped))
    _check_found(count, spec, stdin, what, skipped)
    return Scan(count, skipped)


def read_texts(
    spec: InputSpec,
    stdin: Stdin | None = None,
    *,
    stdin_if_piped: bool = True,
    what: str = "input",
) -> Inputs:
    """Read every text named by ``spec``; stdin too when it is piped and nothing else is given.

    Raises InputError when the result is empty, so callers never load a model for nothing.
    """
    out = Inputs()
    out.texts = list(iter_texts(spec, stdin, stdin_if_piped=stdin_if_piped, skipped=out.skipped))
    _check_found(len(out.texts), spec, stdin, what, out.skipped)
    return out


def _check_found(
    count: int, spec: InputSpec, stdin: Stdin | None, what: str, skipped: dict[str, int]
) -> None:
    """No texts at all is an error, never a model loaded for nothing."""
    if count:
        return
    if not spec.texts and not spec.files and (stdin is None or not stdin.piped):
        raise InputError(
            f"no {what}: give texts as arguments, files with -i FILE, or pipe them on stdin"
        )
    names = [_display(n) for n in (*(t for t in spec.texts if t == STDIN), *spec.files)]
    where = ", ".join(dict.fromkeys(names)) or STDIN_NAME
    note = f" ({sum(skipped.values())} file(s) skipped)" if skipped else ""
    raise InputError(f"{where}: no {what}: every text given was blank{note}")


def read_file(name: str, spec: InputSpec, stdin: Stdin | None = None) -> list[Text]:
    """Read one file (or ``-`` for stdin) with the format options of ``spec``."""
    texts = list(_iter_file(name, spec, stdin, Inputs()))
    if not texts:
        raise InputError(f"{_display(name)}: no texts in it")
    return texts


def read_pairs(spec: InputSpec, stdin: Stdin | None = None) -> tuple[list[Text], list[Text]]:
    """Sentence pairs from one CSV/TSV file: its first two columns (after the header)."""
    names = [*spec.files, *spec.texts]
    if len(names) != 1:
        raise UsageError(
            "--pairwise without --against reads pairs from one CSV/TSV file: give it with -i FILE"
        )
    name = names[0]
    if name == STDIN:
        stream = _open_stdin(stdin, "--pairwise")
        kind = _sniff_table(stream)
    else:
        kind = _file_kind(Path(name), spec)
        if kind not in ("csv", "tsv"):
            raise InputError(f"{name}: --pairwise without --against needs a .csv or .tsv file")
        stream = _open(Path(name))
    delimiter = "\t" if kind == "tsv" else ","
    with stream:
        return _pairs(csv.reader(_csv_lines(stream, _display(name)), delimiter=delimiter), name)


def _pairs(rows: Any, name: str) -> tuple[list[Text], list[Text]]:
    header = next(rows, None)
    if header is None or len(header) < 2:
        raise InputError(
            f"{_display(name)}: --pairwise needs two columns (a header row, then pairs)"
        )
    a: list[Text] = []
    b: list[Text] = []
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        where = f"{_display(name)}:{rows.line_num}"
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise InputError(f"{where}: a pair needs two non-empty fields")
        a.append(Text(row[0].strip(), where))
        b.append(Text(row[1].strip(), where))
    if not a:
        raise InputError(f"{_display(name)}: no pairs in it")
    return a, b


def _display(name: str) -> str:
    return STDIN_NAME if name == STDIN else name


def _iter_file(
    name: str, spec: InputSpec, stdin: Stdin | None, out: Inputs, who: str = f"-i {STDIN}"
) -> Iterator[Text]:
    if name == STDIN:
        stream = _open_stdin(stdin, who)
        kind = _stdin_kind(spec, stream)
        display = STDIN_NAME
    else:
        path = Path(name)
        if path.is_dir():
            if not spec.documents:
                raise InputError(
                    f"{name}: is a directory (use --documents to read each file under it "
                    "as one text)"
                )
            yield from _iter_folder(path, out)
            return
        stream, kind, display = _open(path), _file_kind(path, spec), name
    with stream:
        yield from _parse(stream, display, kind, spec, out)


def _open_stdin(stdin: Stdin | None, who: str) -> BinaryIO:
    if stdin is None:
        raise InputError(f"{STDIN_NAME}: there is no standard input to read")
    return stdin.open(who)


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read ({error.strerror or error})") from None


def _read_bytes(path: Path) -> bytes:
    with _open(path) as stream:
        try:
            return stream.read()
        except OSError as error:
            raise InputError(f"{path}: cannot read ({error.strerror or error})") from None


def _file_kind(path: Path, spec: InputSpec) -> str:
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix in _CSV_SUFFIXES:
        return "csv"
    if suffix in _TSV_SUFFIXES:
        return "tsv"
    return "document" if spec.documents else "lines"


def _stdin_kind(spec: InputSpec, stream: BinaryIO) -> str:
    """Stdin has no name to go by: --field means JSON lines, --column a table."""
    if spec.field is not None:
        return "jsonl"
    if spec.column is not None:
        return _sniff_table(stream)
    return "document" if spec.documents else "lines"


def _sniff_table(stream: BinaryIO) -> str:
    """TSV when the header line has a tab, else CSV; the stream is left at its start."""
    first_line = stream.readline() if hasattr(stream, "readline") else b""
    stream.seek(0)
    return "tsv" if b"\t" in first_line else "csv"


def _is_binary(data: bytes) -> bool:
    return b"\x00" in data[:_SNIFF_BYTES]


def decode(data: bytes, name: str) -> str:
    """Bytes to text: UTF-8 (a BOM is dropped), binary data refused with a clear message."""
    if b"\x00" in data:  # the whole file, not just the sniffed head: a NUL is never text
        raise InputError(f"{name}: binary file, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        bad = data[error.start : error.start + 1].hex()
        raise InputError(
            f"{name}:{line}: invalid UTF-8 (byte 0x{bad}); convert it to UTF-8"
        ) from None


def _decoded_lines(stream: BinaryIO, name: str) -> Iterator[tuple[int, str]]:
    """(line number, line) pairs, decoded one line at a time; only \\n ends a line.

    The CR of CRLF and a UTF-8 BOM are dropped; a NUL byte or invalid UTF-8 is an
    error naming the line.
    """
    for number, raw in enumerate(stream, 1):
        if number == 1:
            if b"\x00" in raw[:_SNIFF_BYTES]:
                raise InputError(f"{name}: binary file, not text")
            raw = raw.removeprefix(codecs.BOM_UTF8)
        if b"\x00" in raw:
            raise InputError(f"{name}:{number}: binary data (a NUL byte), not text")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            bad = raw[error.start : error.start + 1].hex()
            raise InputError(
                f"{name}:{number}: invalid UTF-8 (byte 0x{bad}); convert it to UTF-8"
            ) from None
        yield number, line.removesuffix("\n").removesuffix("\r")


def _csv_lines(stream: BinaryIO, name: str) -> Iterator[str]:
    """Decoded lines with their newline, as the csv module wants them."""
    for _, line in _decoded_lines(stream, name):
        yield line + "\n"


def _parse(stream: BinaryIO, name: str, kind: str, spec: InputSpec, out: Inputs) -> Iterator[Text]:
    if kind == "document":
        text = decode(stream.read(), name)
        if text.strip():
            yield Text(text.strip(), name)
        else:
            out.skip("empty")
    elif kind == "lines":
        for number, line in _decoded_lines(stream, name):
            if line.strip():
                yield Text(line.strip(), f"{name}:{number}")
    elif kind == "jsonl":
        yield from _parse_jsonl(_decoded_lines(stream, name), name, spec.field)
    else:
        delimiter = "\t" if kind == "tsv" else ","
        yield from _parse_table(_csv_lines(stream, name), name, delimiter, spec.column)


def _parse_jsonl(
    lines: Iterator[tuple[int, str]], name: str, field_name: str | None
) -> Iterator[Text]:
    wanted = field_name or "text"
    for number, line in lines:
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{where}: invalid JSON ({error.msg})") from None
        if isinstance(record, str) and field_name is None:
            value = record
        elif isinstance(record, dict):
            if wanted not in record:
                keys = ", ".join(map(str, record)) or "none"
                hint = "" if field_name else "; choose one with --field"
                raise InputError(f"{where}: no field '{wanted}' (fields: {keys}){hint}")
            value = record[wanted]
            if not isinstance(value, str):
                kind = type(value).__name__
                raise InputError(f"{where}: field '{wanted}' is a {kind}, not a string")
        else:
            raise InputError(f"{where}: expected a JSON object with a '{wanted}' field")
        if value.strip():
            yield Text(value.strip(), where)


def _parse_table(
    lines: Iterator[str], name: str, delimiter: str, column: str | None
) -> Iterator[Text]:
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return
        index = _column_index(header, column, name)
        start = reader.line_num + 1  # a quoted field can span lines: point at the first
        for row in reader:
            where, start = f"{name}:{start}", reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if index >= len(row):
                count = len(row)
                raise InputError(
                    f"{where}: row has {count} field(s), column '{header[index]}' is #{index + 1}"
                )
            if row[index].strip():
                yield Text(row[index].strip(), where)
    except csv.Error as error:
        kind = _table_kind(delimiter)
        raise InputError(f"{name}:{reader.line_num}: malformed {kind} ({error})") from None


def _table_kind(delimiter: str) -> str:
    return "TSV" if delimiter == "\t" else "CSV"


def _column_index(header: list[str], column: str | None, name: str) -> int:
    names = ", ".join(header)
    if column is None:
        if len(header) == 1:
            return 0
        if "text" in header:
            return header.index("text")
        raise InputError(f"{name}: several columns ({names}); choose one with --column")
    if column in header:
        return header.index(column)
    if column.isdigit():
        index = int(column)
        if 1 <= index <= len(header):
            return index - 1
        raise InputError(f"{name}: no column #{index}; --column counts from 1 to {len(header)}")
    raise InputError(f"{name}: no column '{column}' (columns: {names})")


def _iter_folder(root: Path, out: Inputs) -> Iterator[Text]:
    """Each text file under ``root`` is one document; hidden folders and binary files skipped."""
    for directory, subdirs, files in os.walk(root):
        hidden = [d for d in subdirs if d.startswith(".")]
        for d in hidden:
            out.skip("hidden folder")
            subdirs.remove(d)
        subdirs.sort()
        for file_name in sorted(files):
            path = Path(directory, file_name)
            if file_name.startswith("."):
                out.skip("hidden")
                continue
            if not path.is_file():
                out.skip("not a regular file")
                continue
            data = _read_bytes(path)
            if _is_binary(data):
                out.skip("binary")
                continue
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError:
                out.skip("not UTF-8")
                continue
            if text.strip():
                yield Text(text.strip(), str(path))
            else:
                out.skip("empty")
