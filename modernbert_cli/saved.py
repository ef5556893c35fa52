"""Saved embeddings that say what they are, and reading them back so a corpus is embedded
once and queried often.

Two kinds of file are written by ``embed`` and read here:

- ``.jsonl`` / ``.json``: one record per text, ``{"text", "source", "model",
  "embedding", "meta"}``. ``meta`` says what the vector is (see :func:`describe`); it is
  in every record, so a file cut with ``head`` or joined with ``cat`` still says it,
  and ``jq``/pandas read the file as before (one more field, nothing to skip);
- ``.npy``: the bare N×D array (numpy's header has no room for more), with
  ``FILE.npy.json`` beside it: the same description, plus the row count, a digest of the
  rows and one of the texts, which are given again with ``-i`` (same files, same order).

A reader that cannot be sure what it holds refuses, with the reason: vectors of another
precision than float32 cannot be scored (int8's calibration ranges are not kept, so its
values cannot be turned back into floats), and a ``.npy`` that does not match its
description is not trusted. Files from before descriptions existed are read when their
values are floats (``SavedCorpus.meta`` is then None) and refused otherwise.

>>> corpus = load("corpus.jsonl")  # doctest: +SKIP
>>> corpus.embeddings.shape, corpus.meta["precision"]  # doctest: +SKIP
((36, 768), 'float32')
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modernbert_cli.errors import InputError
from modernbert_cli.inputs import Text, decode

if TYPE_CHECKING:
    import numpy as np

VERSION = 1  # of the description; a reader refuses a newer one
SIDECAR_SUFFIX = ".json"
_SIDECAR_FORMAT = "modernbert-cli embeddings"
# What a description may carry beyond precision and dimensions, in this order.
OPTIONAL_FIELDS = (
    "fingerprint",
    "normalized",
    "prompt",
    "prompt_name",
    "truncate_dim",
    "max_seq_length",
)
# The numpy type each precision is stored as (sentence-transformers' quantize_embeddings).
_PRECISION_DTYPES = {
    "float32": "f",
    "int8": "i",
    "binary": "i",
    "uint8": "u",
    "ubinary": "u",
}
_RERUN = "re-run embed without --precision"


@dataclass
class SavedCorpus:
    texts: list[Text]
    embeddings: np.ndarray  # float32
    model: str | None  # None for an old .npy, which did not record it
    meta: dict[str, Any] | None = None  # describe()'s record; None for an old file


# --- writing -----------------------------------------------------------------------------


def describe(meta: Mapping[str, Any], embeddings: np.ndarray) -> dict[str, Any]:
    """What a set of embeddings is: the ``meta`` record every saved vector carries.

    ``meta`` gives ``precision`` (default float32) and any of :data:`OPTIONAL_FIELDS`
    (e.g. from ``Embedder.describe()`` and the encode options); the dimensions are taken
    from ``embeddings`` themselves (unpacked for binary precisions).

    >>> describe({"precision": "float32", "normalized": True}, np.zeros((2, 8), "f4"))
    {'version': 1, 'precision': 'float32', 'dimensions': 8, 'normalized': True}
    """
    import numpy as np

    precision = str(meta.get("precision", "float32"))
    kind = _PRECISION_DTYPES.get(precision)
    if kind is None or np.dtype(embeddings.dtype).kind != kind:
        raise ValueError(f"precision {precision!r} does not match embeddings of {embeddings.dtype}")
    stored = int(embeddings.shape[1])
    record: dict[str, Any] = {
        "version": VERSION,
        "precision": precision,
        "dimensions": stored * 8 if precision.endswith("binary") else stored,
    }
    record.update((key, meta[key]) for key in OPTIONAL_FIELDS if key in meta)
    return record


def sidecar(
    meta: Mapping[str, Any],
    described: Mapping[str, Any],
    *,
    rows: int,
    dtype: str,
    data_digest: str,
    texts_digest: str,
) -> dict[str, Any]:
    """The ``FILE.npy.json`` of an array: its description, and what ties it to the array."""
    return {
        "format": _SIDECAR_FORMAT,
        "model": meta.get("model"),
        **described,
        "rows": rows,
        "dtype": dtype,
        "data_blake2b": data_digest,
        "texts_blake2b": texts_digest,
    }


def sidecar_path(path: str | Path) -> Path:
    """``corpus.npy`` → ``corpus.npy.json``."""
    return Path(f"{path}{SIDECAR_SUFFIX}")


def digest_texts(digest: Any, texts: Iterable[str]) -> None:
    """Feed ``texts`` to a hashlib digest, each length-prefixed so no two lists collide."""
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)


def _digest_rows(embeddings: np.ndarray) -> str:
    import numpy as np

    data = np.ascontiguousarray(embeddings).reshape(-1).view(np.uint8)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# --- reading -----------------------------------------------------------------------------


def load(path: str, texts: Sequence[Text] = ()) -> SavedCorpus:
    """Load saved float32 embeddings; ``texts`` label the rows of a ``.npy`` file."""
    file = Path(path)
    if file.is_dir():
        raise InputError(f"{path}: is a directory, not an embeddings file")
    if not file.is_file():
        raise InputError(f"{path}: no such file")
    suffix = file.suffix.lower()
    if suffix == ".npy":
        return _load_npy(file, texts)
    if suffix in (".jsonl", ".ndjson", ".json"):
        if texts:
            raise InputError(f"{path}: holds its own texts; do not add others with -i or arguments")
        return _load_json(file, suffix == ".json")
    raise InputError(f"{path}: embeddings must be a .jsonl, .json or .npy file written by embed")


def _load_npy(file: Path, texts: Sequence[Text]) -> SavedCorpus:
    import numpy as np

    try:
        embeddings = np.load(file, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise InputError(f"{file}: not a readable .npy file ({error})") from None
    if embeddings.ndim != 2:
        raise InputError(
            f"{file}: expected a 2-D array of embeddings, got shape {embeddings.shape}"
        )
    described = _read_sidecar(file)
    if described is None:
        _check_old_values(file, embeddings.dtype.kind, f"and no {sidecar_path(file).name}")
    else:
        _check_description(file, described, embeddings.shape[1])
        _check_sidecar(file, described, embeddings)
    if not texts:
        raise InputError(
            f"{file}: a .npy file holds only vectors; give the texts it was made from with -i"
        )
    if len(texts) != len(embeddings):
        raise InputError(
            f"{file}: {len(embeddings)} embeddings but {len(texts)} texts given with -i; "
            "give the same inputs that embed was given"
        )
    if described is not None and "texts_blake2b" in described:
        digest = hashlib.blake2b(digest_size=16)
        digest_texts(digest, (t.text for t in texts))
        if digest.hexdigest() != described["texts_blake2b"]:
            raise InputError(
                f"{file}: the texts given with -i are not the ones it was made from; "
                "give the same inputs, in the same order, that embed was given"
            )
    model = None if described is None else described.get("model")
    meta = None if described is None else _meta_of(described)
    return SavedCorpus(list(texts), embeddings.astype(np.float32, copy=False), model, meta)


def _read_sidecar(file: Path) -> dict[str, Any] | None:
    path = sidecar_path(file)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise InputError(f"{path}: cannot read it ({error.strerror or error})") from None
    try:
        described = json.loads(decode(raw, str(path)))
    except json.JSONDecodeError as error:
        raise InputError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None
    if not isinstance(described, dict) or described.get("format") != _SIDECAR_FORMAT:
        raise InputError(f"{path}: not the description embed writes beside {file.name}")
    return described


def _check_sidecar(file: Path, described: Mapping[str, Any], embeddings: np.ndarray) -> None:
    """The array must be the one its description was written with."""
    name = sidecar_path(file).name
    if described.get("rows") != len(embeddings) or described.get("dtype") != str(embeddings.dtype):
        raise InputError(
            f"{file}: does not match {name} ({len(embeddings)} rows of {embeddings.dtype}, "
            f"described as {described.get('rows')} of {described.get('dtype')}); "
            "re-run embed to write both again"
        )
    if "data_blake2b" in described and _digest_rows(embeddings) != described["data_blake2b"]:
        raise InputError(
            f"{file}: its values are not the ones {name} describes (changed since embed "
            "wrote them?); re-run embed to write both again"
        )


def _meta_of(described: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("version", "precision", "dimensions", *OPTIONAL_FIELDS)
    return {key: described[key] for key in keys if key in described}


def _check_description(where: Path | str, meta: Any, dimensions: int) -> None:
    """Only float32 vectors of the dimensions described, in a version this reader knows."""
    if not isinstance(meta, dict):
        raise InputError(f"{where}: 'meta' must be an object describing the embedding")
    version = meta.get("version")
    if not isinstance(version, int) or version < 1:
        raise InputError(f"{where}: the description has no valid 'version'")
    if version > VERSION:
        raise InputError(
            f"{where}: written by a newer modernbert-cli (description version {version}); "
            "upgrade to read it"
        )
    precision = meta.get("precision")
    if precision != "float32":
        raise InputError(
            f"{where}: holds {precision} embeddings (embed --precision {precision}); "
            f"scoring needs float32 ones: {_RERUN}"
        )
    if meta.get("dimensions") != dimensions:
        raise InputError(
            f"{where}: described as {meta.get('dimensions')} dimensions but holds {dimensions}"
        )


def _check_old_values(where: Path | str, kind: str, missing: str) -> None:
    """A file without a description: floats are float32 embeddings; anything else is unknown."""
    if kind != "f":
        raise InputError(
            f"{where}: holds integer values {missing} saying how they were made (embed "
            f"--precision int8/uint8/binary?); scoring needs float32 embeddings: {_RERUN}"
        )


def _load_json(file: Path, whole: bool) -> SavedCorpus:
    import numpy as np

    text = decode(file.read_bytes(), str(file))
    if whole:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"{file}:{error.lineno}: invalid JSON ({error.msg})") from None
        if not isinstance(records, list):
            raise InputError(f"{file}: expected a JSON list of records written by embed")
        numbered = [(f"{file}: record {n}", record) for n, record in enumerate(records, 1)]
    else:
        numbered = []
        for number, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    numbered.append((f"{file}:{number}", json.loads(line)))
                except json.JSONDecodeError as error:
                    raise InputError(f"{file}:{number}: invalid JSON ({error.msg})") from None
    if not numbered:
        raise InputError(f"{file}: no embeddings in it")
    texts, vectors, models = [], [], set()
    first_where, meta = None, None
    for where, record in numbered:
        if not isinstance(record, dict) or "text" not in record or "embedding" not in record:
            raise InputError(f"{where}: expected a record with 'text' and 'embedding' fields")
        if first_where is None:
            first_where, meta = where, record.get("meta")
        elif record.get("meta") != meta:
            difference = _difference(meta, record.get("meta"))
            raise InputError(
                f"{where}: its 'meta' differs from {first_where}'s ({difference}); "
                "one file must hold one kind of embeddings"
            )
        texts.append(Text(record["text"], record.get("source") or where))
        vectors.append(record["embedding"])
        models.add(record.get("model"))
    if len(models) > 1:
        raise InputError(
            f"{file}: mixes embeddings of several models ({', '.join(map(str, models))})"
        )
    try:
        values = np.asarray(vectors)
    except ValueError:
        raise InputError(f"{file}: embeddings of different lengths") from None
    if values.ndim != 2 or values.dtype.kind not in "iuf":
        raise InputError(f"{file}: embeddings must be lists of numbers of one length")
    if meta is None:
        _check_old_values(file, values.dtype.kind, "and no 'meta'")
    else:
        _check_description(first_where, meta, values.shape[1])
    return SavedCorpus(texts, values.astype(np.float32), models.pop(), meta)


def _difference(a: Any, b: Any) -> str:
    if not isinstance(a, dict) or not isinstance(b, dict):
        return "one has none" if (a is None) != (b is None) else "not an object"
    key = next(k for k in (*a, *b) if a.get(k) != b.get(k))
    return f"{key} {a.get(key)!r} vs {b.get(key)!r}"
