"""Reading texts from arguments, files, folders and stdin.

Every text keeps its source (``notes.txt:12``, ``<stdin>:3``, ``<arg>:1`` or a
document's path) so results can point back to it. Everything that can go wrong is
an :class:`~modernbert_cli.errors.InputError` naming the file and line, raised before
any model is loaded.

An input that cannot be read twice (stdin, a pipe, a FIFO, ``<(…)``, a device) is read
once into a spool, so checking it and then streaming it see the same bytes. One rule
turns bytes into text everywhere (:func:`decode`), and one line, record or document
has a size limit, so no input can take memory without end.

>>> read_texts(InputSpec(texts=["a cat", "a dog"])).texts[0]
Text(text='a cat', source='<arg>:1')
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from modernbert_cli import walk as walking
from modernbert_cli.errors import InputError, UsageError

STDIN = "-"
STDIN_NAME = "<stdin>"
ARG_NAME = "<arg>"

# How much of a file is looked at to decide whether it is binary (as git and grep do).
_SNIFF_BYTES = 8192
# Piped input up to this size is held in memory; beyond it, in a temporary file.
_SPOOL_MEMORY = 8 << 20
# Bytes copied into a spool at a time.
_COPY_BYTES = 1 << 20
# One line or JSON record: far more than any model reads (8,192 tokens is some 40 KB),
# yet finite, so `-i /dev/zero` stops at once instead of filling memory.
MAX_LINE_BYTES = 64 << 20
# One --documents file: a whole book is a few MB; a larger file is a log or data dump.
MAX_DOCUMENT_BYTES = 256 << 20

# How a file is read, by its suffix; any other file is lines, or one document.
_PARQUET_SUFFIXES = (".parquet", ".pq")
_SUFFIX_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv"}
_NEWLINE = b"\n"  # for f-strings, which cannot hold a backslash before Python 3.12


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
    max_line_bytes: int = MAX_LINE_BYTES
    max_document_bytes: int = MAX_DOCUMENT_BYTES

    def __post_init__(self) -> None:
        if self.max_line_bytes < 1 or self.max_document_bytes < 1:
            raise UsageError("the size limits for a line and a document must be at least 1 byte")


@dataclass
class Inputs:
    """The texts read, and what was skipped on the way (for a note on stderr)."""

    texts: list[Text] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


@dataclass(frozen=True)
class Claim:
    """Who reads stdin: a label for messages (`-i -`), and its place among values like it."""

    label: str
    position: int = 0


class Stdin:
    """Standard input, and every other input that can be read only once, each spooled.

    The first read of such an input copies it into a spool (in memory up to
    ``_SPOOL_MEMORY``, then a temporary file); every later pass reads the spool, so a
    pipe gives the same texts as a file. Only one option may claim stdin (``-i -`` and
    ``--queries -`` cannot both read it), whether it names it ``-`` or ``/dev/stdin``.
    """

    def __init__(self, stream: BinaryIO | None, is_tty: bool) -> None:
        self._stream = stream
        self.is_tty = is_tty
        self._claim: Claim | None = None
        # Stdin under the key STDIN; a named pipe or device under its (device, inode).
        self._spools: dict[object, Any] = {}

    @property
    def piped(self) -> bool:
        return self._stream is not None and not self.is_tty

    def open(self, claim: Claim, spec: InputSpec, name: str = STDIN_NAME) -> BinaryIO:
        """The whole of stdin from its start; ``claim`` may open it again, nobody else may."""
        if self._claim not in (None, claim):
            raise UsageError(f"stdin can be read only once: {self._claim.label} already took it")
        if self._stream is None:
            raise InputError(f"{STDIN_NAME}: there is no standard input to read")
        self._claim = claim
        return self._spooled(STDIN, lambda: _Borrowed(self._stream), name, spec)

    def open_stream(
        self, path: str, name: str, status: os.stat_result, claim: Claim, spec: InputSpec
    ) -> BinaryIO:
        """A named input that is not a regular file, read once; stdin itself when it is stdin."""
        identity = (status.st_dev, status.st_ino)
        if identity == self._identity():  # /dev/stdin, /dev/fd/0: a second reader would starve
            return self.open(claim, spec, name)
        if stat.S_ISSOCK(status.st_mode):
            raise InputError(f"{name}: is a socket; give its data on stdin instead")
        return self._spooled(identity, lambda: _open(Path(path), name), name, spec)

    def _identity(self) -> tuple[int, int] | None:
        try:
            status = os.fstat(self._stream.fileno())  # type: ignore[union-attr]
        except (AttributeError, OSError, ValueError):  # no stream, or not a real one
            return None
        return status.st_dev, status.st_ino

    def _spooled(self, key: object, opener: Any, name: str, spec: InputSpec) -> BinaryIO:
        spool = self._spools.get(key)
        if spool is None:
            with opener() as stream:
                spool = self._spools[key] = _spool(stream, name, _is_document(name, spec), spec)
        spool.seek(0)
        return _Borrowed(spool)  # type: ignore[return-value]


class _Borrowed:
    """A stream lent out: closing the loan leaves it open for the next pass."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._stream)

    def __enter__(self) -> _Borrowed:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _spool(stream: BinaryIO, name: str, document: bool, spec: InputSpec) -> Any:
    """Copy a one-shot stream into a spool, stopping at once where a pass over it would.

    A binary head, a line over the limit or a document over the limit is an error
    here, before the rest is copied: `-i /dev/zero` or `-i /dev/urandom` ends at once.
    """
    import tempfile  # here: most inputs are files or arguments

    limit = spec.max_document_bytes if document else spec.max_line_bytes
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY)  # noqa: SIM115 (kept open)
    size, line, run = 0, 1, 0  # run: bytes of the current line so far
    try:
        # Chunks no larger than the limit: a line inside one chunk is within the limit.
        while chunk := stream.read(min(_COPY_BYTES, limit + 1)):
            if size < _SNIFF_BYTES:
                _check_head(chunk[: _SNIFF_BYTES - size], name)
            size += len(chunk)
            if document:
                if size > limit:
                    raise _document_too_large(name, limit)
            else:
                first = chunk.find(b"\n")
                run += len(chunk) if first < 0 else first
                if run > limit:
                    raise _line_too_long(name, line, limit)
                if first >= 0:
                    line += chunk.count(b"\n")
                    run = len(chunk) - chunk.rfind(b"\n") - 1
            spool.write(chunk)
    except OSError as error:
        spool.close()
        raise InputError(f"{name}: cannot read ({error.strerror or error})") from None
    except BaseException:
        spool.close()
        raise
    return spool


@dataclass
class Scan:
    """What a check of the inputs found; iterate it to read the same texts again."""

    count: int
    skipped: dict[str, int]
    spec: InputSpec = field(repr=False)
    stdin: Stdin = field(repr=False)

    def __iter__(self) -> Iterator[Text]:
        """The texts counted, read again (pipes from their spools), in order."""
        seen = 0
        for text in iter_texts(self.spec, self.stdin):
            seen += 1
            if seen > self.count:
                break
            yield text
        if seen != self.count:  # a file changed between the check and now
            where = _where(self.spec)
            raise InputError(
                f"{where}: changed while being read: {self.count} texts, then "
                f"{'more' if seen > self.count else seen}"
            )


def iter_texts(
    spec: InputSpec, stdin: Stdin | None = None, *, skipped: dict[str, int] | None = None
) -> Iterator[Text]:
    """Every text named by ``spec``, lazily, in order; stdin when piped and nothing else given.

    Memory stays flat however large the files; errors surface at the bad line, so
    call :func:`scan` first to have them before any work is done.
    """
    stdin = stdin if stdin is not None else Stdin(None, is_tty=True)
    out = Inputs(skipped=skipped if skipped is not None else {})
    for i, text in enumerate(spec.texts, 1):
        where = f"{ARG_NAME}:{i}"
        if text == STDIN:
            yield from _iter_file(STDIN, spec, stdin, out, Claim(f"the argument '{STDIN}'", i))
        elif not text.strip():
            raise InputError(f"{where}: the text is empty")
        else:
            yield Text(_checked_argument(text, where), where)
    for position, name in enumerate(spec.files):
        yield from _iter_file(name, spec, stdin, out, Claim(f"-i {_shown(name)}", position))
    if not spec.texts and not spec.files and stdin.piped:
        yield from _iter_file(STDIN, spec, stdin, out, Claim("piped input"))


def scan(spec: InputSpec, stdin: Stdin | None = None, *, what: str = "input") -> Scan:
    """Read all of the input once, keeping nothing: every error now, and the count.

    Iterate the result to read the texts; a pipe is read from its spool, not again.
    """
    stdin = stdin if stdin is not None else Stdin(None, is_tty=True)
    skipped: dict[str, int] = {}
    count = sum(1 for _ in iter_texts(spec, stdin, skipped=skipped))
    _check_found(count, spec, stdin, what, skipped)
    return Scan(count, skipped, spec, stdin)


def read_texts(spec: InputSpec, stdin: Stdin | None = None, *, what: str = "input") -> Inputs:
    """Read every text named by ``spec``; stdin too when it is piped and nothing else is given.

    Raises InputError when the result is empty, so callers never load a model for nothing.
    """
    out = Inputs()
    out.texts = list(iter_texts(spec, stdin, skipped=out.skipped))
    _check_found(len(out.texts), spec, stdin, what, out.skipped)
    return out


def query_text(query: str) -> Text:
    """The query given as an argument, checked as every argument is."""
    if not query.strip():
        raise UsageError("QUERY is empty")
    return Text(_checked_argument(query, "<query>"), "<query>")


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
    note = f" ({sum(skipped.values())} file(s) skipped)" if skipped else ""
    raise InputError(f"{_where(spec)}: no {what}: every text given was blank{note}")


def _where(spec: InputSpec) -> str:
    """The files (and stdin) of ``spec``, for a message about all of them."""
    names = [_display(n) for n in (*(t for t in spec.texts if t == STDIN), *spec.files)]
    return ", ".join(dict.fromkeys(names)) or STDIN_NAME


def read_file(
    name: str, spec: InputSpec, stdin: Stdin | None = None, *, option: str = "-i"
) -> list[Text]:
    """Read one file (or ``-`` for stdin) with the format options of ``spec``.

    ``option`` names the option that gave it, for the message when stdin is taken twice.
    """
    stdin = stdin if stdin is not None else Stdin(None, is_tty=True)
    texts = list(_iter_file(name, spec, stdin, Inputs(), Claim(f"{option} {_shown(name)}")))
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
    stdin = stdin if stdin is not None else Stdin(None, is_tty=True)
    stream, display, one_shot = _open_source(name, spec, stdin, Claim("--pairwise"))
    if stream is None:
        raise InputError(f"{display}: --pairwise without --against needs a .csv or .tsv file")
    with stream:
        kind = _SUFFIX_KINDS.get(_suffix(name))
        if kind is None and one_shot:  # a pipe has no name to go by
            kind = _sniff_table(stream, spec)
        if kind not in ("csv", "tsv"):
            raise InputError(f"{display}: --pairwise without --against needs a .csv or .tsv file")
        _check_head(_head(stream), display)
        lines = _csv_lines(stream, display, spec.max_line_bytes)
        return _pairs(csv.reader(lines, delimiter="\t" if kind == "tsv" else ","), display)


def _pairs(rows: Any, name: str) -> tuple[list[Text], list[Text]]:
    header = next(rows, None)
    if header is None or len(header) < 2:
        raise InputError(f"{name}: --pairwise needs two columns (a header row, then pairs)")
    a: list[Text] = []
    b: list[Text] = []
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        where = f"{name}:{rows.line_num}"
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise InputError(f"{where}: a pair needs two non-empty fields")
        a.append(Text(row[0].strip(), where))
        b.append(Text(row[1].strip(), where))
    if not a:
        raise InputError(f"{name}: no pairs in it")
    return a, b


# --- names -------------------------------------------------------------------------------


def _display(name: str) -> str:
    return STDIN_NAME if name == STDIN else _shown(name)


def _shown(name: str) -> str:
    """A path as text that can be written anywhere: bytes that are not UTF-8 as ``\\xNN``.

    Python hands such bytes of a file name over as lone surrogates, which no UTF-8
    output (JSON on stdout, a CSV file) can hold; ``\\xNN`` is how ``ls -b`` shows them.
    Skipping such files instead would silently drop texts that read perfectly well.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "".join(map(_escaped, name))
    return name


def _escaped(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"
    return char


def _checked_argument(text: str, where: str) -> str:
    """A command-line text as given, unless its bytes were not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        if 0xDC80 <= code <= 0xDCFF:
            raise InputError(
                f"{where}: invalid UTF-8 (byte 0x{code - 0xDC00:02x}); convert it to UTF-8"
            ) from None
        raise InputError(f"{where}: not valid Unicode (a lone surrogate \\u{code:04x})") from None
    return text


# --- files -------------------------------------------------------------------------------


def _iter_file(
    name: str, spec: InputSpec, stdin: Stdin, out: Inputs, claim: Claim
) -> Iterator[Text]:
    if _suffix(name) in _PARQUET_SUFFIXES and os.path.isfile(name):
        # Columnar and compressed: pyarrow reads it a row group at a time, by --column.
        from modernbert_cli.parquet import iter_parquet_texts

        yield from iter_parquet_texts(name, spec.column)
        return
    stream, display, one_shot = _open_source(name, spec, stdin, claim)
    if stream is None:
        if not spec.documents:
            raise InputError(
                f"{display}: is a directory (use --documents to read each file under it "
                "as one text)"
            )
        yield from _iter_folder(Path(name), spec, out)
        return
    with stream:
        kind = _kind(name, spec, stream, one_shot)
        yield from _parse(stream, display, kind, spec, out)


def _open_source(
    name: str, spec: InputSpec, stdin: Stdin, claim: Claim
) -> tuple[BinaryIO | None, str, bool]:
    """(stream from its start, name for messages, read once?); no stream for a folder.

    A regular file is opened afresh for every pass; anything else is read once and
    spooled, since a second open of a pipe finds it empty and of a FIFO waits for ever.
    """
    if name == STDIN:
        return stdin.open(claim, spec), STDIN_NAME, True
    display = _shown(name)
    with _reading(display):
        status = os.stat(name)
    if stat.S_ISDIR(status.st_mode):
        return None, display, False
    if stat.S_ISREG(status.st_mode):
        return _open(Path(name), display), display, False
    return stdin.open_stream(name, display, status, claim, spec), display, True


def _open(path: Path, name: str) -> BinaryIO:
    with _reading(name):
        return path.open("rb")


@contextmanager
def _reading(name: str) -> Iterator[None]:
    """An OSError while reading ``name`` as the one-line InputError that names it."""
    try:
        yield
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except OSError as error:
        raise InputError(f"{name}: cannot read ({error.strerror or error})") from None


def _suffix(name: str) -> str:
    return "" if name == STDIN else Path(name).suffix.lower()


def _is_document(name: str, spec: InputSpec) -> bool:
    """Whether a stream is read as one document, as :func:`_kind` decides."""
    hinted = spec.field is not None or spec.column is not None
    return spec.documents and not hinted and _suffix(name) not in _SUFFIX_KINDS


def _kind(name: str, spec: InputSpec, stream: BinaryIO, one_shot: bool) -> str:
    """How to read a source: by its suffix; a pipe has none, so --field means JSON lines
    and --column a table there."""
    kind = _SUFFIX_KINDS.get(_suffix(name))
    if kind is not None:
        return kind
    if one_shot and spec.field is not None:
        return "jsonl"
    if one_shot and spec.column is not None:
        return _sniff_table(stream, spec)
    return "document" if spec.documents else "lines"


def _sniff_table(stream: BinaryIO, spec: InputSpec) -> str:
    """TSV when the header line has a tab, else CSV; the stream is left at its start."""
    first_line = stream.readline(spec.max_line_bytes + 1)
    stream.seek(0)
    return "tsv" if b"\t" in first_line else "csv"


# --- bytes to text: one rule for every input ---------------------------------------------


class _NotUsable(InputError):
    """Bytes that are not text, or too many of them; ``reason`` is the folder's skip note."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _check_head(head: bytes, name: str) -> None:
    """A NUL byte near the start means a binary file, as git and grep decide."""
    if b"\x00" in head[:_SNIFF_BYTES]:
        raise _NotUsable("binary", f"{name}: binary file, not text")


def _head(stream: BinaryIO) -> bytes:
    head = stream.read(_SNIFF_BYTES)
    stream.seek(0)
    return head


def _text(raw: bytes, name: str, line: int) -> str:
    """UTF-8 without a NUL byte, or an error at the first fault (``raw`` starts at ``line``)."""
    try:
        text: str | None = raw.decode("utf-8")
        end = len(raw)
    except UnicodeDecodeError as error:
        text, end = None, error.start
    nul = raw.find(b"\x00", 0, end)
    if nul >= 0:
        where = f"{name}:{line + raw.count(_NEWLINE, 0, nul)}"
        raise _NotUsable("binary", f"{where}: binary data (a NUL byte), not text")
    if text is None:
        where = f"{name}:{line + raw.count(_NEWLINE, 0, end)}"
        bad = raw[end : end + 1].hex()
        raise _NotUsable("not UTF-8", f"{where}: invalid UTF-8 (byte 0x{bad}); convert it to UTF-8")
    return text


def decode(data: bytes, name: str) -> str:
    """Bytes to text by the rule every input follows: UTF-8 (a BOM is dropped), no NUL byte.

    A NUL in the first 8 KiB is a binary file; a later one, or invalid UTF-8, is an
    error naming its line.
    """
    _check_head(data, name)
    return _text(data.removeprefix(codecs.BOM_UTF8), name, 1)


def _decoded_lines(stream: BinaryIO, name: str, limit: int) -> Iterator[tuple[int, str]]:
    """(line number, line) pairs, decoded one line at a time by :func:`decode`'s rule.

    Only \\n ends a line; the CR of CRLF and a UTF-8 BOM are dropped. A line longer
    than ``limit`` bytes is an error, found without reading more of it.
    """
    number = 0
    while raw := stream.readline(limit + 1):
        number += 1
        if len(raw) > limit and not raw.endswith(b"\n"):
            raise _line_too_long(name, number, limit)
        if number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        yield number, _text(raw, name, number).removesuffix("\n").removesuffix("\r")


def _csv_lines(stream: BinaryIO, name: str, limit: int) -> Iterator[str]:
    """Decoded lines with their newline, as the csv module wants them."""
    for _, line in _decoded_lines(stream, name, limit):
        yield line + "\n"


def _read_document(stream: BinaryIO, name: str, limit: int) -> str:
    """A whole file as one text; its size is checked before it is read."""
    _check_head(_head(stream), name)
    if stream.seek(0, os.SEEK_END) > limit:
        raise _document_too_large(name, limit)
    stream.seek(0)
    data = stream.read(limit + 1)
    if len(data) > limit:  # it grew since
        raise _document_too_large(name, limit)
    return decode(data, name)


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def _line_too_long(name: str, line: int, limit: int) -> InputError:
    return _NotUsable(
        "line too long",
        f"{name}:{line}: a line longer than {_size(limit)}, the limit for one line or "
        "record (--max-line-bytes); is it text?",
    )


def _document_too_large(name: str, limit: int) -> InputError:
    return _NotUsable(
        f"larger than {_size(limit)}",
        f"{name}: larger than {_size(limit)}, the limit for one document",
    )


# --- formats -----------------------------------------------------------------------------


def _parse(stream: BinaryIO, name: str, kind: str, spec: InputSpec, out: Inputs) -> Iterator[Text]:
    if kind == "document":
        text = _read_document(stream, name, spec.max_document_bytes)
        if text.strip():
            yield Text(text.strip(), name)
        else:
            out.skip("empty")
        return
    _check_head(_head(stream), name)
    if kind == "lines":
        for number, line in _decoded_lines(stream, name, spec.max_line_bytes):
            if line.strip():
                yield Text(line.strip(), f"{name}:{number}")
    elif kind == "jsonl":
        yield from _parse_jsonl(_decoded_lines(stream, name, spec.max_line_bytes), name, spec.field)
    else:
        delimiter = "\t" if kind == "tsv" else ","
        table = _csv_lines(stream, name, spec.max_line_bytes)
        yield from _parse_table(table, name, delimiter, spec.column)


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
            value, what = record, "the string"
        elif isinstance(record, dict):
            if wanted not in record:
                keys = ", ".join(map(str, record)) or "none"
                hint = "" if field_name else "; choose one with --field"
                raise InputError(f"{where}: no field '{wanted}' (fields: {keys}){hint}")
            value, what = record[wanted], f"field '{wanted}'"
            if not isinstance(value, str):
                kind = type(value).__name__
                raise InputError(f"{where}: {what} is a {kind}, not a string")
        else:
            raise InputError(f"{where}: expected a JSON object with a '{wanted}' field")
        if value.strip():
            yield Text(_unicode(value.strip(), where, what), where)


def _unicode(value: str, where: str, what: str) -> str:
    """A JSON string can spell a lone surrogate (``"\\ud800"``), which no UTF-8 can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(value[error.start])
        raise InputError(
            f"{where}: {what} holds a lone surrogate (\\u{code:04x}), not valid Unicode"
        ) from None
    return value


def _parse_table(
    lines: Iterator[str], name: str, delimiter: str, column: str | None
) -> Iterator[Text]:
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return
        index = column_index(header, column, name)
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
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise InputError(f"{name}:{reader.line_num}: malformed {kind} ({error})") from None


def column_index(header: list[str], column: str | None, name: str) -> int:
    """Which column of a CSV/TSV header holds the texts: ``--column`` NAME or N (from 1),
    else the only one, else one named ``text``."""
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


def _iter_folder(root: Path, spec: InputSpec, out: Inputs) -> Iterator[Text]:
    """Each text file under ``root`` is one document, the files found as ripgrep finds
    them (:func:`modernbert_cli.walk.walk`: .gitignore in a git work tree, no hidden or
    binary files, no symbolic links); an oversized file is skipped (with a count), judged
    by its size before it is read."""

    def skip(skipped: walking.Skipped) -> None:
        hidden_folder = skipped.folder and skipped.reason == walking.HIDDEN
        out.skip("hidden folder" if hidden_folder else skipped.reason)

    for path in walking.walk(root, on_skip=skip):
        name = _shown(str(path))
        try:
            with _open(path, name) as stream:
                text = _read_document(stream, name, spec.max_document_bytes)
        except _NotUsable as error:
            out.skip(error.reason)
            continue
        except OSError as error:
            raise InputError(f"{name}: cannot read ({error.strerror or error})") from None
        if text.strip():
            yield Text(text.strip(), name)
        else:
            out.skip("empty")
