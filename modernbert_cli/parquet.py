"""Parquet in and out: embeddings written row group by row group, texts read a batch at a time.

An embeddings file has three columns — ``text`` (string), ``source`` (string) and
``embedding`` (a fixed-size list of float32, or of int8/uint8 for those precisions and
the packed bits of binary/ubinary) — and says what it is: the model and settings it was
made with are JSON in the schema metadata under ``modernbert_cli``.

Paths may be local or any URI pyarrow knows (``s3://bucket/key``, ``gs://…``).
pyarrow is imported inside the functions: it is an optional extra, and ``--help``
must not pay for it.

>>> with ParquetEmbeddingsWriter("out.parquet", {"model": "minilm"}) as writer:  # doctest: +SKIP
...     writer.write(texts, vectors)
>>> next(iter_parquet_texts("corpus.parquet", "body"))  # doctest: +SKIP
Text(text='…', source='corpus.parquet:1')
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from modernbert_cli.errors import InputError, OutputError, UsageError
from modernbert_cli.inputs import Text

METADATA_KEY = b"modernbert_cli"
MANIFEST = "manifest.json"  # in a folder of parts (embed --ray): what they are, which exist
INSTALL_HINT = "pip install 'modernbert-cli[parquet]'"
# Rows read per batch from an input file: memory stays flat however large it is.
READ_BATCH_ROWS = 8192
_VALUE_TYPES = {"float32": "float32", "int8": "int8", "uint8": "uint8"}


def import_pyarrow() -> Any:
    """pyarrow, or a UsageError that says how to install it."""
    # The submodules the callers use (pa.fs, pyarrow.parquet) are not loaded by pyarrow.
    try:
        import pyarrow
        import pyarrow.fs
        import pyarrow.parquet
    except ImportError:
        raise UsageError(f"Parquet needs pyarrow: {INSTALL_HINT}") from None
    return pyarrow


def filesystem(path: str) -> tuple[Any, str]:
    """The pyarrow filesystem holding ``path``, and the path within it (local ones absolute)."""
    pa = import_pyarrow()
    if "://" in path:
        try:
            return pa.fs.FileSystem.from_uri(path)
        except (pa.ArrowException, ValueError, OSError) as error:
            raise UsageError(f"{path}: {_first_line(error)}") from None
    return pa.fs.LocalFileSystem(), os.path.abspath(path)


# --- writing ------------------------------------------------------------------------------


class ParquetEmbeddingsWriter:
    """Writes ``text``, ``source`` and ``embedding`` columns, one row group per :meth:`write`.

    ``sink`` is a path (written atomically: a temporary file in the same folder, renamed
    at :meth:`close`; local paths and pyarrow URIs) or an open binary stream, which the
    caller owns. ``settings`` (model, fingerprint, precision, …) go into the schema
    metadata as JSON.
    """

    def __init__(self, sink: str | os.PathLike[str] | IO[bytes] | Any, settings: dict[str, Any]):
        self.settings = dict(settings)
        self.count = 0
        self._sink = sink
        self._writer: Any = None
        self._stream: Any = None  # the temporary file we opened, for a path
        self._target: tuple[Any, str, str] | None = None  # (filesystem, tmp, final)
        pa = import_pyarrow()
        if isinstance(sink, (str, os.PathLike)):
            fs, final = filesystem(os.fspath(sink))
            folder, name = os.path.split(final)
            # A hidden name in the same folder: a rename there is atomic (and on object
            # stores, the final object appears whole or not at all).
            tmp = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp" if folder else f".{name}.tmp"
            try:
                info = fs.get_file_info(final)
                if info.type == pa.fs.FileType.Directory:
                    raise OutputError(f"-o {os.fspath(sink)}: is a directory")
                self._stream = fs.open_output_stream(tmp)
            except (OSError, pa.ArrowException) as error:
                raise OutputError(
                    f"-o {os.fspath(sink)}: cannot write there ({_first_line(error)})"
                ) from None
            self._target = (fs, tmp, final)

    def __enter__(self) -> ParquetEmbeddingsWriter:
        return self

    def __exit__(self, kind: Any, *rest: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def write(self, texts: Sequence[Text], embeddings: np.ndarray) -> None:
        """Append one row group: ``texts[i]`` and its vector ``embeddings[i]``."""
        if len(texts) != len(embeddings):
            raise ValueError(f"{len(texts)} texts but {len(embeddings)} embeddings")
        table = embeddings_table(texts, embeddings, self.settings)
        if self._writer is None:
            self._open(table.schema)
        self._guard(lambda: self._writer.write_table(table, row_group_size=max(len(texts), 1)))
        self.count += len(texts)

    def close(self) -> None:
        """Finish the file (and move it into place, for a path)."""
        if self._writer is None:  # no rows: still a valid file, with the schema it would have
            dims = int(self.settings.get("dimensions") or 0)
            dtype = _VALUE_TYPES.get(_storage_dtype(self.settings.get("precision")), "float32")
            self._open(embeddings_schema(dims, dtype, self.settings))
        self._guard(self._writer.close)
        if self._target is not None:
            fs, tmp, final = self._target
            self._guard(self._stream.close)
            self._guard(lambda: fs.move(tmp, final))
            self._target = None

    def abort(self) -> None:
        """Stop without a file: the temporary one is removed; an existing target is kept."""
        if self._writer is not None:
            with contextlib.suppress(Exception):  # the file is thrown away anyway
                self._writer.close()
        if self._target is not None:
            fs, tmp, _ = self._target
            with contextlib.suppress(Exception):  # best effort: a stray hidden .tmp is harmless
                self._stream.close()
                fs.delete_file(tmp)
            self._target = None

    def _open(self, schema: Any) -> None:
        import pyarrow.parquet as pq

        sink = self._stream if self._stream is not None else self._sink
        self._writer = self._guard(
            # The vectors do not repeat: a dictionary would only cost time.
            lambda: pq.ParquetWriter(sink, schema, use_dictionary=["text", "source"])
        )

    def _guard(self, step: Any) -> Any:
        """Run a write step; an I/O failure becomes one OutputError line (no partial file)."""
        pa = import_pyarrow()
        try:
            return step()
        except (OSError, pa.ArrowException) as error:
            where = self._target[2] if self._target else getattr(self._sink, "name", "output")
            self.abort()
            raise OutputError(f"-o {where}: cannot write ({_first_line(error)})") from None


def embeddings_schema(dimensions: int, dtype: str, settings: dict[str, Any]) -> Any:
    """The schema of an embeddings file: text, source, a fixed-size list, and our metadata."""
    pa = import_pyarrow()
    return pa.schema(
        [
            pa.field("text", pa.string(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(getattr(pa, dtype)(), dimensions), nullable=False),
        ],
        metadata={METADATA_KEY: json.dumps(settings, sort_keys=True).encode()},
    )


def embeddings_table(
    texts: Sequence[Text], embeddings: np.ndarray, settings: dict[str, Any]
) -> Any:
    """One pyarrow Table of texts, sources and vectors (no copy of the vectors)."""
    pa = import_pyarrow()
    array = np.ascontiguousarray(embeddings)
    if array.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got shape {array.shape}")
    dtype = _VALUE_TYPES.get(array.dtype.name)
    if dtype is None:
        raise ValueError(f"cannot store {array.dtype} embeddings (float32, int8 or uint8)")
    schema = embeddings_schema(array.shape[1], dtype, settings)
    values = pa.array(array.reshape(-1), type=getattr(pa, dtype)())
    vectors = pa.FixedSizeListArray.from_arrays(values, array.shape[1])
    return pa.Table.from_arrays(
        [
            pa.array([t.text for t in texts], pa.string()),
            pa.array([t.source for t in texts], pa.string()),
            vectors,
        ],
        schema=schema,
    )


def _storage_dtype(precision: Any) -> str:
    """The numpy dtype quantize_embeddings gives for a precision (binary packs into int8)."""
    return {"int8": "int8", "binary": "int8", "uint8": "uint8", "ubinary": "uint8"}.get(
        str(precision), "float32"
    )


# --- reading ------------------------------------------------------------------------------


def open_parquet(path: str, name: str | None = None) -> Any:
    """A ``pyarrow.parquet.ParquetFile``, or one InputError line (naming ``name``) saying why."""
    pa = import_pyarrow()
    import pyarrow.parquet as pq

    fs, inner = filesystem(path)
    path = name or path
    try:
        info = fs.get_file_info(inner)
        if info.type == pa.fs.FileType.NotFound:
            raise InputError(f"{path}: no such file")
        if info.type == pa.fs.FileType.Directory:
            raise InputError(f"{path}: is a directory, not a Parquet file")
        return pq.ParquetFile(fs.open_input_file(inner))
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except (OSError, pa.ArrowException) as error:
        raise InputError(f"{path}: not a readable Parquet file ({_first_line(error)})") from None


def text_column(file: Any, path: str, column: str | None) -> str:
    """The column holding the texts: ``column`` (a name, or a number from 1), else ``text``,
    else the only string column; it must hold strings."""
    pa = import_pyarrow()
    schema = file.schema_arrow
    names = schema.names
    listed = ", ".join(names) or "none"
    if column is None:
        strings = [f.name for f in schema if _is_string(pa, f.type)]
        if "text" in names:
            column = "text"
        elif len(strings) == 1:
            column = strings[0]
        else:
            raise InputError(f"{path}: several columns ({listed}); choose one with --column")
    elif column not in names:
        if column.isdigit() and 1 <= int(column) <= len(names):
            column = names[int(column) - 1]
        elif column.isdigit():
            raise InputError(f"{path}: no column #{column}; --column counts from 1 to {len(names)}")
        else:
            raise InputError(f"{path}: no column '{column}' (columns: {listed})")
    kind = schema.field(column).type
    if not _is_string(pa, kind):
        raise InputError(f"{path}: column '{column}' holds {kind}, not strings")
    return column


def iter_parquet_texts(
    path: str, column: str | None = None, *, start_row: int = 0, stop_row: int | None = None
) -> Iterator[Text]:
    """The texts of one column, a batch of rows at a time, sourced ``PATH:ROW`` (from 1).

    As for every input, texts are stripped and empty ones (or nulls) skipped.
    ``start_row``/``stop_row`` (0-based, stop exclusive) read only a slice, touching
    only the row groups that hold it.
    """
    yield from (text for _, text in iter_parquet_rows(path, column, start_row, stop_row))


def iter_parquet_rows(
    path: str,
    column: str | None = None,
    start_row: int = 0,
    stop_row: int | None = None,
    *,
    name: str | None = None,
) -> Iterator[tuple[int, Text]]:
    """(0-based row, Text) for each non-empty text in rows ``start_row`` to ``stop_row``.

    ``name`` is how sources and messages show the file (default: ``path``).
    """
    pa = import_pyarrow()
    file = open_parquet(path, name)
    path = name or path
    column = text_column(file, path, column)
    meta = file.metadata
    stop = meta.num_rows if stop_row is None else min(stop_row, meta.num_rows)
    groups: list[int] = []  # the row groups that hold the slice
    row = first = 0  # first: the row the first of those groups starts at
    for group in range(meta.num_row_groups):
        if row >= stop:
            break
        rows = meta.row_group(group).num_rows
        if row + rows > start_row:
            first = first if groups else row
            groups.append(group)
        row += rows
    if not groups:
        return
    row = first
    try:
        for batch in file.iter_batches(READ_BATCH_ROWS, row_groups=groups, columns=[column]):
            values = batch.column(0)
            if pa.types.is_dictionary(values.type):
                values = values.dictionary_decode()
            for value in values.to_pylist():
                if start_row <= row < stop and value is not None and value.strip():
                    yield row, Text(value.strip(), f"{path}:{row + 1}")
                row += 1
            if row >= stop:
                break
    except (OSError, pa.ArrowException) as error:
        raise InputError(f"{path}: cannot read ({_first_line(error)})") from None


@dataclass
class ParquetEmbeddings:
    """An embeddings file read back: texts with sources, vectors, and what made them."""

    texts: list[Text]
    embeddings: np.ndarray
    settings: dict[str, Any]


def read_embeddings(path: str) -> ParquetEmbeddings:
    """Read an embeddings file of :class:`ParquetEmbeddingsWriter`, or a finished folder of
    parts (``embed --ray``); a folder whose run did not finish is refused, never half read."""
    pa = import_pyarrow()
    import pyarrow.parquet as pq

    fs, inner = filesystem(path)
    try:
        if fs.get_file_info(inner).type == pa.fs.FileType.Directory:
            files, run = _finished_parts(fs, inner, path)
        else:
            files, run = [inner], None
        tables = [pq.read_table(f, filesystem=fs) for f in files]
    except (OSError, pa.ArrowException) as error:
        raise InputError(f"{path}: not a readable Parquet file ({_first_line(error)})") from None
    settings: dict[str, Any] = {}
    for file, table in zip(files, tables, strict=True):
        metadata = table.schema.metadata or {}
        if METADATA_KEY not in metadata or "embedding" not in table.column_names:
            raise InputError(f"{file}: not an embeddings file written by modernbert-cli")
        settings = json.loads(metadata[METADATA_KEY])
        if run is not None and settings.get("run") != run:
            raise InputError(f"{file}: a part of another run than {path}'s manifest says")
    settings.pop("part", None)  # a part's number: not a setting of the whole
    table = pa.concat_tables([t.replace_schema_metadata(None) for t in tables])
    vectors = table.column("embedding").combine_chunks()
    flat = vectors.flatten().to_numpy(zero_copy_only=False)
    texts = [
        Text(t, s)
        for t, s in zip(
            table.column("text").to_pylist(), table.column("source").to_pylist(), strict=True
        )
    ]
    return ParquetEmbeddings(texts, flat.reshape(len(texts), vectors.type.list_size), settings)


def _finished_parts(fs: Any, folder: str, path: str) -> tuple[list[str], str]:
    """The part files a folder's manifest lists, all of them there, and its run."""
    try:
        with fs.open_input_stream(f"{folder}/{MANIFEST}") as stream:
            manifest = json.loads(stream.read())
        names = [part["name"] for part in manifest["parts"]]
        run = str(manifest["run"])
    except FileNotFoundError:
        raise InputError(
            f"{path}: a folder without {MANIFEST}, not one embed --ray wrote"
        ) from None
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path}: {MANIFEST} is damaged") from None
    listing = fs.get_file_info(import_pyarrow().fs.FileSelector(folder))
    there = {os.path.basename(info.path) for info in listing}
    missing = [name for name in names if name not in there]
    if missing:
        raise InputError(
            f"{path}: {len(missing)} of {len(names)} parts are missing ({missing[0]}, …): "
            "the run did not finish; run the same command again"
        )
    return [f"{folder}/{name}" for name in names], run


def _is_string(pa: Any, kind: Any) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or getattr(pa.types, "is_string_view", lambda _: False)(kind)
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
