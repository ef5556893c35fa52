"""Reading back embeddings that ``embed`` wrote, so a corpus is embedded once and queried often.

Two kinds of file are understood:

- ``.jsonl`` / ``.json`` from ``embed --format jsonl|json``: texts, sources, the model
  and the vectors, all in one file;
- ``.npy`` from ``embed -o FILE.npy``: vectors only, so the texts they were made from
  are given again with ``-i`` (same files, same order).

>>> corpus = load("corpus.jsonl")  # doctest: +SKIP
>>> corpus.embeddings.shape  # doctest: +SKIP
(36, 768)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from modernbert_cli.errors import InputError
from modernbert_cli.inputs import Text, decode

if TYPE_CHECKING:
    import numpy as np


@dataclass
class SavedCorpus:
    texts: list[Text]
    embeddings: np.ndarray
    model: str | None  # None for .npy, which does not record it


def load(path: str, texts: Sequence[Text] = ()) -> SavedCorpus:
    """Load saved embeddings; ``texts`` label the rows of a ``.npy`` file."""
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
    if not texts:
        raise InputError(
            f"{file}: a .npy file holds only vectors; give the texts it was made from with -i"
        )
    if len(texts) != len(embeddings):
        raise InputError(
            f"{file}: {len(embeddings)} embeddings but {len(texts)} texts given with -i; "
            "give the same inputs that embed was given"
        )
    return SavedCorpus(list(texts), embeddings, None)


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
        numbered = [(str(file), record) for record in records]
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
    for where, record in numbered:
        if not isinstance(record, dict) or "text" not in record or "embedding" not in record:
            raise InputError(f"{where}: expected a record with 'text' and 'embedding' fields")
        texts.append(Text(record["text"], record.get("source") or where))
        vectors.append(record["embedding"])
        models.add(record.get("model"))
    if len(models) > 1:
        raise InputError(
            f"{file}: mixes embeddings of several models ({', '.join(map(str, models))})"
        )
    try:
        embeddings = np.asarray(vectors, dtype=np.float32)
    except ValueError:
        raise InputError(f"{file}: embeddings of different lengths") from None
    if embeddings.ndim != 2:
        raise InputError(f"{file}: embeddings must be lists of numbers")
    return SavedCorpus(texts, embeddings, models.pop())
