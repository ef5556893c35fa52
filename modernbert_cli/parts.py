"""Inputs cut into parts, and the folder the parts go to: the bookkeeping of a resumable run.

Nothing here needs Ray: :mod:`modernbert_cli.distributed` runs these functions in its
tasks and workers.

- :func:`list_inputs` names every input file in a fixed order, with size and mtime;
- :func:`scan_files` reads files through once (every error before a model loads),
  counts texts and notes the byte offset of every ``part_size``-th one;
- :func:`plan_parts` cuts the texts into parts by ordinal — the same inputs always give
  the same parts, which is what makes a run resumable;
- :func:`read_part` reads one part's texts straight from their offsets;
- :class:`OutputFolder` holds ``manifest.json`` and the ``part-*.parquet`` files.

Texts are read by one-process ``embed``'s rules (stripped, blank ones skipped, sources
``FILE:LINE``; JSON lines with ``--field``, CSV/TSV with ``--column``) and Parquet
columns by :mod:`modernbert_cli.parquet`'s (``FILE:ROW``).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from modernbert_cli.errors import InputError, OutputError, UsageError
from modernbert_cli.inputs import Text, column_index
from modernbert_cli.parquet import (
    MANIFEST,
    METADATA_KEY,
    filesystem,
    import_pyarrow,
    iter_parquet_rows,
    open_parquet,
    text_column,
)

MANIFEST_FORMAT = 1
# A scan task takes files until it has this many bytes (or files).
SCAN_GROUP_BYTES = 64 << 20
SCAN_GROUP_FILES = 256
_SNIFF_BYTES = 8192
_KINDS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


# --- the inputs --------------------------------------------------------------------------


def list_inputs(inputs: Sequence[str]) -> list[dict[str, Any]]:
    """Every input file, in a fixed order: as given, and a folder's files sorted by path.

    Hidden files (``.x``) and markers such as ``_SUCCESS`` under a folder are skipped.
    """
    pa = import_pyarrow()
    if not inputs:
        raise InputError("no input: give files or folders with -i (local paths or URIs)")
    sources: list[dict[str, Any]] = []
    for given in inputs:
        if given == "-":
            raise UsageError("--ray reads files, not stdin: give them with -i FILE")
        fs, path = filesystem(given)
        try:
            info = fs.get_file_info(path)
            if info.type == pa.fs.FileType.NotFound:
                raise InputError(f"{given}: no such file or folder")
            if info.type == pa.fs.FileType.Directory:
                found = fs.get_file_info(pa.fs.FileSelector(path, recursive=True))
                files = sorted(
                    (f for f in found if f.type == pa.fs.FileType.File),
                    key=lambda f: f.path,
                )
                root = path.rstrip("/")
                for file in files:
                    relative = file.path[len(root) + 1 :]
                    if any(part[:1] in (".", "_") for part in relative.split("/")):
                        continue
                    sources.append(_source(given.rstrip("/") + "/" + relative, file))
            else:
                sources.append(_source(given, info))
        except PermissionError:
            raise InputError(f"{given}: permission denied") from None
        except (OSError, pa.ArrowException) as error:
            raise InputError(f"{given}: cannot read ({_first_line(error)})") from None
    if not sources:
        raise InputError(f"{', '.join(inputs)}: no input files in it")
    return sources


def _source(name: str, info: Any) -> dict[str, Any]:
    uri = name if "://" in name else os.path.abspath(name)
    suffix = os.path.splitext(name)[1].lower()
    return {
        "name": name,  # as sources show it: what the user gave, plus the path below a folder
        "uri": uri,  # what a worker opens: absolute, or a URI
        "kind": _KINDS.get(suffix, "lines"),
        "size": int(info.size),
        "mtime_ns": int(info.mtime_ns or 0),
    }


def input_identity(sources: Sequence[dict[str, Any]]) -> list[list[Any]]:
    return [[s["uri"], s["size"], s["mtime_ns"]] for s in sources]


def records(
    source: dict[str, Any],
    field: str | None,
    column: str | None,
    offset: int = 0,
    line: int = 1,
) -> Iterator[tuple[int, int, Text]]:
    """(byte offset or row, line, Text) of each text of a file, from ``offset`` on.

    The rules are one-process ``embed``'s: texts stripped, blank ones skipped, the
    source ``FILE:LINE``. A table's column is found from its header at the start of the
    file and kept in ``source`` for reads that start further on.
    """
    name, kind = source["name"], source["kind"]
    if kind == "parquet":
        if offset == 0:
            source["column"] = text_column(open_parquet(source["uri"], name), name, column)
        rows = iter_parquet_rows(source["uri"], source["column"], offset, name=name)
        for row, text in rows:
            yield row, row + 1, text
        return
    with _open_at(source["uri"], name, offset) as stream:
        lines = _lines(stream, name, offset, line)
        if kind == "lines":
            for start, number, _, text in lines:
                if text.strip():
                    yield start, number, Text(text.strip(), f"{name}:{number}")
        elif kind == "jsonl":
            for start, number, _, text in lines:
                value = _json_text(text, f"{name}:{number}", field) if text.strip() else ""
                if value:
                    yield start, number, Text(value, f"{name}:{number}")
        else:
            yield from _table_records(lines, source, column, offset, line)


@contextlib.contextmanager
def _open_at(uri: str, name: str, offset: int) -> Iterator[Any]:
    import io

    pa = import_pyarrow()
    fs, path = filesystem(uri)
    try:
        raw = fs.open_input_file(path)
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except (OSError, pa.ArrowException) as error:
        raise InputError(f"{name}: cannot read ({_first_line(error)})") from None
    with io.BufferedReader(raw, 1 << 20) as stream:
        stream.seek(offset)
        yield stream


def _lines(stream: Any, name: str, offset: int, number: int) -> Iterator[tuple[int, int, int, str]]:
    """(start offset, line number, end offset, decoded line) of each line; only \\n ends one.

    As one-process input: a BOM and the CR of CRLF dropped, a NUL byte or invalid
    UTF-8 an error naming the line.
    """
    for raw in stream:
        start, end = offset, offset + len(raw)
        offset = end
        if start == 0:
            if b"\x00" in raw[:_SNIFF_BYTES]:
                raise InputError(f"{name}: binary file, not text")
            raw = raw.removeprefix(codecs.BOM_UTF8)
        if b"\x00" in raw:
            raise InputError(f"{name}:{number}: binary data (a NUL byte), not text")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            bad = raw[error.start : error.start + 1].hex()
            raise InputError(
                f"{name}:{number}: invalid UTF-8 (byte 0x{bad}); convert it to UTF-8"
            ) from None
        yield start, number, end, text.removesuffix("\n").removesuffix("\r")
        number += 1


def _json_text(line: str, where: str, field: str | None) -> str:
    """The text of one JSON line (stripped), or an error naming the line."""
    wanted = field or "text"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise InputError(f"{where}: invalid JSON ({error.msg})") from None
    if isinstance(record, str) and field is None:
        value = record
    elif isinstance(record, dict):
        if wanted not in record:
            keys = ", ".join(map(str, record)) or "none"
            hint = "" if field else "; choose one with --field"
            raise InputError(f"{where}: no field '{wanted}' (fields: {keys}){hint}")
        value = record[wanted]
        if not isinstance(value, str):
            raise InputError(f"{where}: field '{wanted}' is a {type(value).__name__}, not a string")
    else:
        raise InputError(f"{where}: expected a JSON object with a '{wanted}' field")
    return value.strip()


def _table_records(
    lines: Iterator[tuple[int, int, int, str]],
    source: dict[str, Any],
    column: str | None,
    offset: int,
    line: int,
) -> Iterator[tuple[int, int, Text]]:
    """A CSV/TSV file's records, each with the offset and line it starts at."""
    name = source["name"]
    delimiter = "\t" if source["kind"] == "tsv" else ","
    kind = "TSV" if delimiter == "\t" else "CSV"
    position = [offset, line]  # where the next line the reader takes starts

    def feed() -> Iterator[str]:
        for _, number, end, text in lines:
            position[:] = [end, number + 1]
            yield text + "\n"

    reader = csv.reader(feed(), delimiter=delimiter)
    try:
        if offset == 0:
            header = next(reader, None)
            if header is None:
                return
            source["column_index"] = column_index(header, column, name)
            source["header"] = header
        index, header = source["column_index"], source["header"]
        while True:
            start, number = position
            row = next(reader, None)
            if row is None:
                return
            if not any(cell.strip() for cell in row):
                continue
            where = f"{name}:{number}"
            if index >= len(row):
                raise InputError(
                    f"{where}: row has {len(row)} field(s), column '{header[index]}' "
                    f"is #{index + 1}"
                )
            if row[index].strip():
                yield start, number, Text(row[index].strip(), where)
    except csv.Error as error:
        at = line - 1 + reader.line_num
        raise InputError(f"{name}:{at}: malformed {kind} ({error})") from None


# --- planning: which texts go in which part ------------------------------------------------


def scan_files(
    sources: Sequence[dict[str, Any]], field: str | None, column: str | None, step: int
) -> list[dict[str, Any]]:
    """Read some files through once: every error now, their texts counted, and the offset
    and line of every ``step``-th text noted (where a part may start)."""
    scanned = []
    for source in sources:
        source = dict(source)
        marks: list[list[int]] = []
        count = 0
        for start, line, _ in records(source, field, column):
            if count % step == 0:
                marks.append([start, line])
            count += 1
        scanned.append({**source, "texts": count, "marks": marks})
    return scanned


def scan_groups(sources: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The inputs in groups for scan tasks: few tasks for many small files, one per big one."""
    groups: list[list[dict[str, Any]]] = [[]]
    size = 0
    for source in sources:
        if groups[-1] and (size >= SCAN_GROUP_BYTES or len(groups[-1]) >= SCAN_GROUP_FILES):
            groups.append([])
            size = 0
        groups[-1].append(source)
        size += source["size"]
    return groups


def plan_parts(scanned: list[dict[str, Any]], part_size: int) -> dict[str, Any]:
    """Cut the scanned inputs' texts into parts of at most ``part_size``, in input order.

    A file's texts fill parts of ``part_size`` from its start; its remainder, and small
    files, share parts. Every part boundary inside a file is therefore a multiple of
    ``part_size`` texts into it, where the scan noted the offset.
    """
    total = sum(s["texts"] for s in scanned)
    if total == 0:
        names = ", ".join(s["name"] for s in scanned[:3]) + (", …" if len(scanned) > 3 else "")
        raise InputError(f"{names}: no input: every text given was blank")
    parts: list[list[list[int]]] = []
    pending: list[list[int]] = []
    pending_texts = 0
    inputs = []
    for index, scan in enumerate(scanned):
        source = dict(scan)
        marks = source.pop("marks")
        inputs.append(source)
        full, rest = divmod(source["texts"], part_size)
        if full and pending:
            parts.append(pending)
            pending, pending_texts = [], 0
        for k in range(full):
            parts.append([[index, part_size, *marks[k]]])
        if rest:
            if pending_texts + rest > part_size:
                parts.append(pending)
                pending, pending_texts = [], 0
            pending.append([index, rest, *marks[full]])
            pending_texts += rest
    if pending:
        parts.append(pending)
    width = max(5, len(str(len(parts) - 1)))
    return {
        "format": MANIFEST_FORMAT,
        "inputs": inputs,
        "part_size": part_size,
        "texts": total,
        # each segment: [input index, texts, byte offset (a row, for Parquet), line]
        "parts": [
            {
                "name": f"part-{i:0{width}d}.parquet",
                "texts": sum(s[1] for s in segments),
                "segments": segments,
            }
            for i, segments in enumerate(parts)
        ],
    }


def iter_part(
    manifest: dict[str, Any], part: dict[str, Any], limit: int | None = None
) -> Iterator[Text]:
    """The texts of one part (or its first ``limit``), read lazily from their offsets."""
    given = 0
    for index, count, offset, line in part["segments"]:
        source = dict(manifest["inputs"][index])
        want = count if limit is None else min(count, limit - given)
        got = 0
        if want > 0:
            found = records(source, manifest["field"], manifest["column"], offset, line)
            with contextlib.closing(found):
                for _, _, text in found:
                    yield text
                    got += 1
                    if got == want:
                        break
        if got < want:
            raise InputError(f"{source['name']}: has changed since the run began")
        given += got
        if limit is not None and given >= limit:
            return


def read_part(
    manifest: dict[str, Any], part: dict[str, Any], limit: int | None = None
) -> list[Text]:
    """The texts of one part (or its first ``limit``), as a list."""
    return list(iter_part(manifest, part, limit))


# --- the output folder ---------------------------------------------------------------------


class OutputFolder:
    """The ``-o DIR`` of a run: its manifest and part files (local or a URI)."""

    def __init__(self, display: str) -> None:
        self.display = display
        self.fs, inner = filesystem(display)
        self.root = display.rstrip("/") if "://" in display else inner
        self._inner = inner.rstrip("/")

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def manifest(self) -> dict[str, Any] | None:
        """The manifest of an earlier run, None for a new or empty folder; anything else is
        refused."""
        pa = import_pyarrow()
        try:
            info = self.fs.get_file_info(self._inner)
            if info.type == pa.fs.FileType.NotFound:
                return None
            if info.type != pa.fs.FileType.Directory:
                raise UsageError(f"-o {self.display}: is a file; --ray writes a folder of parts")
            entries = self.fs.get_file_info(pa.fs.FileSelector(self._inner))
            names = {os.path.basename(e.path) for e in entries}
            if MANIFEST not in names:
                if any(not name.startswith(".") for name in names):
                    raise UsageError(
                        f"-o {self.display}: the folder is not empty and has no {MANIFEST}; "
                        "give a new or empty folder"
                    )
                return None
            with self.fs.open_input_stream(f"{self._inner}/{MANIFEST}") as stream:
                manifest = json.loads(stream.read())
        except (OSError, pa.ArrowException) as error:
            raise OutputError(f"-o {self.display}: cannot read ({_first_line(error)})") from None
        except ValueError:
            raise UsageError(
                f"-o {self.display}: {MANIFEST} is damaged; give another folder"
            ) from None
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise UsageError(
                f"-o {self.display}: {MANIFEST} is not one this version writes; give another folder"
            )
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        pa = import_pyarrow()
        tmp = f"{self._inner}/.{MANIFEST}.tmp"
        try:
            self.fs.create_dir(self._inner, recursive=True)
            with self.fs.open_output_stream(tmp) as stream:
                stream.write(json.dumps(manifest, indent=1).encode() + b"\n")
            self.fs.move(tmp, f"{self._inner}/{MANIFEST}")
        except (OSError, pa.ArrowException) as error:
            raise OutputError(f"-o {self.display}: cannot write ({_first_line(error)})") from None

    def part_is_done(self, part: dict[str, Any], run: str) -> bool:
        """Whether a whole part of this very run is there (its footer says so)."""
        pa = import_pyarrow()
        import pyarrow.parquet as pq

        try:
            metadata = pq.read_metadata(f"{self._inner}/{part['name']}", filesystem=self.fs)
        except (OSError, pa.ArrowException):
            return False
        mine = json.loads((metadata.metadata or {}).get(METADATA_KEY, b"{}"))
        return mine.get("run") == run and metadata.num_rows == part["texts"]

    def remove_stale_temporaries(self) -> None:
        """Temporary files of workers stopped mid-write (Ctrl-C, a lost node)."""
        pa = import_pyarrow()
        with contextlib.suppress(OSError, pa.ArrowException):
            for entry in self.fs.get_file_info(pa.fs.FileSelector(self._inner)):
                name = os.path.basename(entry.path)
                if name.startswith(".part-") and name.endswith(".tmp"):
                    self.fs.delete_file(entry.path)


def check_same(
    where: str,
    previous: dict[str, Any],
    shape: dict[str, Any],
    part_size: int,
    settings: dict[str, Any] | None,
) -> None:
    """Refuse to add to a folder that another model, settings or inputs began.

    ``settings`` None: compare only what is known before Ray starts.
    """
    fix = "give another folder (or delete this one to start again)"
    if settings is not None:
        old = previous.get("settings", {})
        changed = [
            f"{key} {old.get(key)!r} → {settings.get(key)!r}"
            for key in sorted(set(old) | set(settings))
            if old.get(key) != settings.get(key)
        ]
        if changed:
            raise UsageError(
                f"-o {where}: holds embeddings made otherwise ({'; '.join(changed)}); {fix}"
            )
    old_inputs = input_identity(previous.get("inputs", []))
    if old_inputs != shape["inputs"]:
        raise UsageError(
            f"-o {where}: was begun on other inputs ({_difference(old_inputs, shape['inputs'])}); "
            f"{fix}"
        )
    for key, flag in (("field", "--field"), ("column", "--column")):
        if previous.get(key) != shape[key]:
            was, now = previous.get(key), shape[key]
            raise UsageError(f"-o {where}: was begun with {flag} {was!r}, not {now!r}; {fix}")
    if previous.get("part_size") != part_size:
        raise UsageError(
            f"-o {where}: was begun with --part-size {previous.get('part_size')}, "
            f"not {part_size}; give the same, or {fix}"
        )


def _difference(old: list[list[Any]], new: list[list[Any]]) -> str:
    """The first way two input lists differ, in words."""
    before = {uri: rest for uri, *rest in old}
    after = {uri: rest for uri, *rest in new}
    for uri, rest in after.items():
        if uri not in before:
            return f"{uri} was not among them"
        if before[uri] != rest:
            return f"{uri} has changed since"
    for uri in before:
        if uri not in after:
            return f"{uri} is not given now"
    return "they were given in another order"


def fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
