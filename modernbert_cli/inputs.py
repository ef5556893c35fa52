"""Reading texts from arguments, files, folders and stdin.

Every text keeps its source (``notes.txt:12``, ``<stdin>:3``, ``<arg>:1`` or a
document's path) so results can point back to it. Everything that can go wrong is
an :class:`~modernbert_cli.errors.InputError` naming the file and line, raised before
any model is loaded.

>>> read_texts(InputSpec(texts=["a cat", "a dog"])).texts[0]
Text(text='a cat', source='<arg>:1')
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from modernbert_cli.errors import InputError, UsageError

STDIN = "-"
STDIN_NAME = "<stdin>"
ARG_NAME = "<arg>"

# How much of a file is looked at to decide whether it is binary (as git and grep do).
_SNIFF_BYTES = 8192

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
    """Standard input, readable once, so two options cannot both claim it."""

    def __init__(self, stream: BinaryIO | None, is_tty: bool) -> None:
        self._stream = stream
        self.is_tty = is_tty
        self._taken_by: str | None = None

    @property
    def piped(self) -> bool:
        return self._stream is not None and not self.is_tty

    def read(self, who: str) -> bytes:
        if self._taken_by is not None:
            raise UsageError(f"stdin can be read only once: {self._taken_by} already took it")
        if self._stream is None:
            raise InputError(f"{STDIN_NAME}: there is no standard input to read")
        self._taken_by = who
        return self._stream.read()


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
    for i, text in enumerate(spec.texts, 1):
        if text == STDIN:
            _read_file(STDIN, spec, stdin, out)
        elif not text.strip():
            raise InputError(f"{ARG_NAME}:{i}: the text is empty")
        else:
            out.texts.append(Text(text, f"{ARG_NAME}:{i}"))
    for name in spec.files:
        _read_file(name, spec, stdin, out)
    if not spec.texts and not spec.files and stdin_if_piped and stdin is not None and stdin.piped:
        _read_file(STDIN, spec, stdin, out)
    if not out.texts:
        if not spec.texts and not spec.files and (stdin is None or not stdin.piped):
            raise InputError(
                f"no {what}: give texts as arguments, files with -i FILE, or pipe them on stdin"
            )
        names = [_display(n) for n in (*(t for t in spec.texts if t == STDIN), *spec.files)]
        where = ", ".join(dict.fromkeys(names)) or STDIN_NAME
        skipped = f" ({sum(out.skipped.values())} file(s) skipped)" if out.skipped else ""
        raise InputError(f"{where}: no {what}: every text given was blank{skipped}")
    return out


def read_file(name: str, spec: InputSpec, stdin: Stdin | None = None) -> list[Text]:
    """Read one file (or ``-`` for stdin) with the format options of ``spec``."""
    out = Inputs()
    _read_file(name, spec, stdin, out)
    if not out.texts:
        raise InputError(f"{_display(name)}: no texts in it")
    return out.texts


def read_pairs(spec: InputSpec, stdin: Stdin | None = None) -> tuple[list[Text], list[Text]]:
    """Sentence pairs from one CSV/TSV file: its first two columns (after the header)."""
    names = [*spec.files, *spec.texts]
    if len(names) != 1:
        raise UsageError(
            "--pairwise without --against reads pairs from one CSV/TSV file: give it with -i FILE"
        )
    name = names[0]
    if name == STDIN:
        if stdin is None:
            raise InputError(f"{STDIN_NAME}: there is no standard input to read")
        data = stdin.read("--pairwise")
        kind = "tsv" if b"\t" in data.split(b"\n", 1)[0] else "csv"
    else:
        path = Path(name)
        kind = _file_kind(path, spec)
        if kind not in ("csv", "tsv"):
            raise InputError(f"{name}: --pairwise without --against needs a .csv or .tsv file")
        data = _read_bytes(path)
    text = decode(data, _display(name))
    delimiter = "\t" if kind == "tsv" else ","
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
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


def _read_file(name: str, spec: InputSpec, stdin: Stdin | None, out: Inputs) -> None:
    if name == STDIN:
        if stdin is None:
            raise InputError(f"{STDIN_NAME}: there is no standard input to read")
        data = stdin.read(f"-i {STDIN}")
        kind = _stdin_kind(spec, data)
        _parse(data, STDIN_NAME, kind, spec, out)
        return
    path = Path(name)
    if path.is_dir():
        if not spec.documents:
            raise InputError(
                f"{name}: is a directory (use --documents to read each file under it as one text)"
            )
        _read_folder(path, out)
        return
    data = _read_bytes(path)
    _parse(data, name, _file_kind(path, spec), spec, out)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
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


def _stdin_kind(spec: InputSpec, data: bytes) -> str:
    """Stdin has no name to go by: --field means JSON lines, --column a table."""
    if spec.field is not None:
        return "jsonl"
    if spec.column is not None:
        first_line = data.split(b"\n", 1)[0]
        return "tsv" if b"\t" in first_line else "csv"
    return "document" if spec.documents else "lines"


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


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) pairs; only \\n ends a line (CR of CRLF is dropped)."""
    for number, line in enumerate(text.split("\n"), 1):
        yield number, line.rstrip("\r")


def _parse(data: bytes, name: str, kind: str, spec: InputSpec, out: Inputs) -> None:
    text = decode(data, name)
    if kind == "document":
        if text.strip():
            out.texts.append(Text(text.strip(), name))
        else:
            out.skip("empty")
    elif kind == "lines":
        out.texts.extend(
            Text(line.strip(), f"{name}:{number}") for number, line in _lines(text) if line.strip()
        )
    elif kind == "jsonl":
        out.texts.extend(_parse_jsonl(text, name, spec.field))
    else:
        out.texts.extend(_parse_table(text, name, "\t" if kind == "tsv" else ",", spec.column))


def _parse_jsonl(text: str, name: str, field_name: str | None) -> Iterator[Text]:
    wanted = field_name or "text"
    for number, line in _lines(text):
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


def _parse_table(text: str, name: str, delimiter: str, column: str | None) -> Iterator[Text]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
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


def _read_folder(root: Path, out: Inputs) -> None:
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
                out.texts.append(Text(text.strip(), str(path)))
            else:
                out.skip("empty")
