"""Batch embedding on Ray Data: a pool of workers writes a folder of Parquet parts, resumably.

The run, in order:

1. the inputs are listed (local paths, folders, or any URI pyarrow knows, e.g. ``s3://``)
   in a fixed order, with their sizes and modification times;
2. each file is scanned once, in parallel on the cluster: every error (bad UTF-8, a
   missing JSON field, …) surfaces before a model is loaded, texts are counted, and the
   byte offset of every ``part_size``-th text is noted;
3. texts are cut into parts by their ordinal — a part is a list of file segments, each
   starting at a noted offset — so the same inputs always give the same parts;
4. a pool of Ray Data workers (``map_batches`` over a stateful class) each load the model
   once and embed whole parts with the same engine as one-process ``embed``; each part is
   written atomically (a temporary file, then a rename) as ``part-00000.parquet``, …

``manifest.json`` in the output folder records the model, the settings, the inputs and
the parts. Running again writes only the parts that are missing; a folder made with
another model, other settings or other inputs is refused, never mixed in.

Ray is an optional extra and imported inside the functions, like torch.

>>> run_ray_embed(["corpus.txt"], "out/", address="local",  # doctest: +SKIP
...               embedder_options={"model": "minilm"})
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any
from urllib.parse import urlparse

import numpy as np

from modernbert_cli import parts
from modernbert_cli.errors import CliError, InputError, ModelError, OutputError, UsageError
from modernbert_cli.inputs import Text
from modernbert_cli.parquet import ParquetEmbeddingsWriter

INSTALL_HINT = "pip install 'modernbert-cli[ray]'"
ADDRESSES = "local, auto, ray://HOST:PORT or HOST:PORT"
# Texts per part when not given: a part should take a worker about a minute or more (so
# its fixed costs — a task, opening files, a Parquet footer — stay small) and not hours
# (Ctrl-C loses the parts in flight). ~200 short texts/s on a laptop CPU; ~15,000/s on an
# H200 (ModernBERT-base, bf16, compiled; docs/cluster.md).
CPU_PART_SIZE = 10_000
GPU_PART_SIZE = 500_000
# int8/uint8 ranges come from the first texts, as one-process embed calibrates on its
# first chunk (cli.CHUNK_TEXTS): the same texts give the same ranges, and so the same ints.
CALIBRATION_TEXTS = 8192
# Texts a worker reads, embeds and writes at a time (a row group of its part), as
# one-process embed does (cli.CHUNK_TEXTS): the measured GPU speeds are for such calls.
CHUNK_TEXTS = 8192
_CONNECT_TIMEOUT_S = 5.0
# What a worker reports of each part (one type per column: Ray Data keeps them as Arrow):
# texts, and the seconds it spent reading (a GPU waits), embedding and writing (it waits).
_PART_ROW = {"texts": 0, "truncated": 0, "read_s": 0.0, "embed_s": 0.0, "write_s": 0.0}
_ERRORS: dict[str, type[CliError]] = {
    cls.__name__: cls for cls in (UsageError, InputError, ModelError, OutputError)
}


@dataclass(frozen=True)
class RayProgress:
    """Where a run stands: parts and texts done (of all, earlier runs included)."""

    parts_done: int
    parts_total: int
    texts_done: int
    texts_total: int
    texts_per_s: float  # of this run's own work
    seconds: float

    def line(self) -> str:
        """One line for stderr: ``embedding: 3/10 parts, 30,000/100,000 texts, 2,345 texts/s``."""
        rate = f", {self.texts_per_s:,.0f} texts/s" if self.texts_per_s else ""
        return (
            f"embedding: {self.parts_done}/{self.parts_total} parts, "
            f"{self.texts_done:,}/{self.texts_total:,} texts{rate}"
        )


@dataclass(frozen=True)
class RayResult:
    """What a run did."""

    output_dir: str
    parts_total: int
    parts_written: int  # by this run
    parts_kept: int  # already there from an earlier run
    texts: int
    truncated: int  # texts cut at the token limit, in the parts this run wrote
    seconds: float
    # Worker seconds, summed over the parts this run wrote: "read", "embed", "write".
    # Reading and writing are time a worker's GPU waits (docs/cluster.md).
    worker_seconds: dict[str, float]


def run_ray_embed(
    inputs: Sequence[str],
    output_dir: str,
    *,
    embedder_options: dict[str, Any],
    address: str = "local",
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    part_size: int | None = None,
    normalize: bool = False,
    precision: str = "float32",
    truncate_dim: int | None = None,
    prompt: str | None = None,
    prompt_name: str | None = None,
    field: str | None = None,
    column: str | None = None,
    progress: Callable[[RayProgress], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> RayResult:
    """Embed every text of ``inputs`` into ``output_dir``: Parquet parts and a manifest.

    ``embedder_options`` are the keyword arguments of ``Embedder`` (``model``, ``dtype``,
    ``max_batch_tokens``, …). Resumable: parts already in ``output_dir`` are kept.
    ``part_size`` None: the folder's own when resuming, else one for CPU or GPU workers.
    """
    started = time.monotonic()
    note = note or (lambda message: None)
    ray = _import_ray()
    _check_options(workers, gpus_per_worker, cpus_per_worker, part_size, prompt, prompt_name)
    from modernbert_cli.encoder import PRECISIONS

    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision}: choose from {', '.join(PRECISIONS)}")
    options = _worker_options(embedder_options, gpus_per_worker)
    encode = {
        "normalize": normalize,
        "precision": precision,
        "truncate_dim": truncate_dim,
        "prompt": prompt,
        "prompt_name": prompt_name,
    }
    settings = {**_describe(options), **encode}  # a bad model path fails here, before Ray
    _check_prompt_name(options["model"], prompt_name)
    sources = parts.list_inputs(inputs)
    out = parts.OutputFolder(output_dir)
    previous = out.manifest()
    if part_size is None:
        default = GPU_PART_SIZE if gpus_per_worker > 0 else CPU_PART_SIZE
        part_size = int(previous.get("part_size") or default) if previous else default
    shape = {"inputs": parts.input_identity(sources), "field": field, "column": column}
    if previous is not None:  # refuse what can be told without Ray before starting it
        parts.check_same(out.display, previous, shape, part_size, None)

    shutdown = _connect(ray, address, note)
    try:
        workers = _fit_workers(ray, address, workers, gpus_per_worker, cpus_per_worker, note)
        dtype = _resolve_dtype(ray, options, gpus_per_worker, cpus_per_worker)
        if dtype != options.get("dtype"):
            options["dtype"] = dtype
            settings = {**_describe(options), **encode}
        run_id = parts.fingerprint({"settings": settings, "part_size": part_size, **shape})
        if previous is not None and previous.get("run") == run_id:
            manifest = previous
        else:
            if previous is not None:
                parts.check_same(out.display, previous, shape, part_size, settings)
            manifest = _plan(ray, sources, field, column, part_size)
            manifest.update(run=run_id, settings=settings, field=field, column=column)
            once = {**options, "compile": "off"}  # compiling for 8,192 texts would not pay
            manifest["ranges"] = _calibrate(
                ray, manifest, once, encode, gpus_per_worker, cpus_per_worker
            )
            out.write_manifest(manifest)
        options["compile"] = _resolve_compile(options, manifest["texts"], workers)
        return _embed_parts(
            ray,
            out,
            manifest,
            options,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            cpus_per_worker=cpus_per_worker,
            progress=progress,
            note=note,
            started=started,
        )
    finally:
        shutdown()


def _check_options(
    workers: int,
    gpus: float,
    cpus: float,
    part_size: int | None,
    prompt: str | None,
    prompt_name: str | None,
) -> None:
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if gpus < 0:
        raise UsageError("--gpus-per-worker cannot be negative")
    if cpus <= 0:
        raise UsageError("--cpus-per-worker must be more than 0")
    if part_size is not None and part_size < 1:
        raise UsageError("--part-size must be at least 1")
    if prompt is not None and prompt_name is not None:
        raise UsageError("--prompt and --prompt-name exclude each other")


# --- the model: the one place that says what a worker runs ---------------------------------


def _make_embedder(options: dict[str, Any]) -> Any:
    """The embedder a worker builds once and keeps (``Embedder(**options)`` once it lands)."""
    return _EncoderEmbedder(**options)


def _describe(options: dict[str, Any]) -> dict[str, Any]:
    """Model, fingerprint and the settings that change a vector, without loading the model
    (``Embedder(**options).describe()`` once it lands)."""
    from modernbert_cli import model as model_loading
    from modernbert_cli.cache import fingerprint

    name = model_loading.canonical_name(options["model"])
    files = model_loading.ModelFiles.find(options["model"])  # a bad path fails here
    vector_settings = {
        "max_seq_length": options.get("max_seq_length"),
        "dtype": options.get("dtype", "auto"),
        "quantize": options.get("quantize", "none"),
        "trust_remote_code": bool(options.get("trust_remote_code", False)),
    }
    return {
        "model": name,
        "fingerprint": fingerprint(files.directory, name, vector_settings),
        **vector_settings,
    }


class _EncoderEmbedder:
    """``Embedder``'s ``embed`` over today's Encoder: no cache, no server, loaded on first use."""

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        max_seq_length: int | None = None,
        max_batch_tokens: int | None = None,
        batch_size: int | None = None,
        dtype: str = "auto",
        compile: str = "auto",
        quantize: str = "none",
        trust_remote_code: bool = False,
        cache: bool = False,
        cache_max_mb: int = 2048,
        server: bool = False,
    ) -> None:
        from modernbert_cli.engine import EngineOptions
        from modernbert_cli.model import ModelSpec

        # Every text of a run is embedded once: a cache or a server would only cost.
        del cache, cache_max_mb, server
        self.spec = ModelSpec(model, device, max_seq_length, trust_remote_code)
        self.engine_options = EngineOptions(
            max_batch_tokens=max_batch_tokens,
            max_batch_size=batch_size,
            dtype=dtype,
            compile=compile,
            quantize=quantize,
        )
        self._encoder: Any = None

    @property
    def truncated(self) -> int:
        return 0 if self._encoder is None else int(self._encoder.truncated)

    def embed(
        self,
        texts: Sequence[str],
        prompt: str | None = None,
        prompt_name: str | None = None,
        role: str | None = None,
        normalize: bool = False,
        precision: str = "float32",
        truncate_dim: int | None = None,
    ) -> np.ndarray:
        from modernbert_cli.encoder import EncodeOptions

        if self._encoder is None:
            from modernbert_cli import model as model_loading
            from modernbert_cli.encoder import Encoder

            loaded = model_loading.load(self.spec)
            self._encoder = Encoder(
                loaded,
                model_loading.canonical_name(self.spec.name),
                model_loading.pick_devices(self.spec.device),
                self.engine_options,
            )
        options = EncodeOptions(normalize, precision, truncate_dim, prompt, prompt_name)
        return self._encoder.encode(texts, options, role)  # type: ignore[arg-type]


def _check_prompt_name(model: str, prompt_name: str | None) -> None:
    """A prompt name the model does not define is refused now, not by every worker."""
    from modernbert_cli import model as model_loading

    files = model_loading.ModelFiles.find(model)
    if prompt_name is None or files.directory is None:
        return
    known = sorted(k for k, v in (files.config().get("prompts") or {}).items() if v)
    if prompt_name not in known:
        defined = f"the prompts {', '.join(known)}" if known else "no prompts"
        raise UsageError(f"--prompt-name '{prompt_name}': model '{model}' defines {defined}")


def _worker_options(options: dict[str, Any], gpus_per_worker: float) -> dict[str, Any]:
    """The embedder options a worker gets: a device that matches what Ray gave it."""
    if "model" not in options:
        raise UsageError("embedder_options needs a 'model'")
    options = {**options, "cache": False, "server": False}
    device = str(options.get("device") or "auto")
    if device == "auto":
        # Ray shows a worker only the GPUs it was given: none unless asked for.
        options["device"] = "cuda" if gpus_per_worker > 0 else "cpu"
    elif device.startswith("cuda") and gpus_per_worker == 0:
        raise UsageError(f"--device {device} with --ray needs --gpus-per-worker (1 per GPU)")
    return options


def _resolve_dtype(ray: Any, options: dict[str, Any], gpus: float, cpus: float) -> str:
    """The dtype workers will run in, asked of a worker: bf16 where its GPU has it.

    Fixing it for the whole run keeps a cluster of mixed GPUs from mixing dtypes.
    """
    dtype = str(options.get("dtype") or "auto")
    if dtype != "auto" or gpus == 0:
        return "float32" if dtype == "auto" else dtype
    probe = ray.remote(num_gpus=gpus, num_cpus=cpus)(_worker_dtype)
    return str(ray.get(probe.remote(options["device"])))


def _resolve_compile(options: dict[str, Any], texts: int, workers: int) -> str:
    """``compile="auto"`` decided for the whole run, by one-process embed's rule: on a GPU,
    for a worker's share of 20,000 texts or more (its chunks alone are smaller)."""
    from modernbert_cli.engine import COMPILE_MIN_TEXTS

    choice = str(options.get("compile") or "auto")
    if choice != "auto":
        return choice
    on_gpu = str(options.get("device", "")).startswith("cuda")
    return "on" if on_gpu and texts / workers >= COMPILE_MIN_TEXTS else "off"


def _worker_dtype(device: str) -> str:
    from modernbert_cli.engine import effective_dtype

    return effective_dtype(device, "auto")


# --- Ray ---------------------------------------------------------------------------------


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise UsageError(f"--ray needs Ray: {INSTALL_HINT}") from None
    return ray


def _connect(ray: Any, address: str, note: Callable[[str], None]) -> Callable[[], None]:
    """Join or start Ray as ``address`` says; returns how to leave it again.

    A remote address is tried first with a plain connection of a few seconds: Ray
    itself would retry a dead one for minutes.
    """
    if address not in ("local", "auto"):
        _probe(address, *_host_port(address))
    elif address == "auto" and os.environ.get("RAY_ADDRESS", "auto") not in ("auto", "local"):
        _probe(
            f"auto (RAY_ADDRESS={os.environ['RAY_ADDRESS']})",
            *_host_port(os.environ["RAY_ADDRESS"]),
        )
    if ray.is_initialized():  # the caller's own Ray session (a notebook, the tests): use it
        return lambda: None
    # Workers' output stays in Ray's logs: stderr carries our notes and errors only.
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    temp_dir = None
    if address == "local":
        # A session folder of its own: no clash with another user's /tmp/ray.
        temp_dir = tempfile.mkdtemp(prefix="mbcli-ray-")
        kwargs.update(num_cpus=os.cpu_count() or 1, include_dashboard=False, _temp_dir=temp_dir)
    else:
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except ConnectionError as error:
        hint = (
            " (set RAY_ADDRESS, or start one with `ray start --head`)" if address == "auto" else ""
        )
        raise UsageError(
            f"--ray {address}: no Ray cluster to join{hint}: {_first_line(error)}"
        ) from None
    except Exception as error:  # Ray raises many kinds; all mean "cannot start or join"
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise UsageError(f"--ray {address}: cannot start Ray: {_first_line(error)}") from None
    resources = ray.cluster_resources()
    note(
        f"Ray {'started here' if address == 'local' else 'joined'}: "
        f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"
    )

    def shutdown() -> None:
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)

    return shutdown


def _fit_workers(
    ray: Any, address: str, workers: int, gpus: float, cpus: float, note: Callable[[str], None]
) -> int:
    """As many workers as this Ray can hold: a local one cannot grow, so asking for more
    would wait for ever; a cluster may add nodes, so there it is only a note."""
    resources = ray.cluster_resources()
    room = [("CPU", cpus, "--cpus-per-worker")] + (
        [("GPU", gpus, "--gpus-per-worker")] if gpus else []
    )
    fit = workers
    for kind, each, flag in room:
        have = float(resources.get(kind, 0))
        if have < each:
            message = f"{flag} {each:g}: Ray has {have:g} {kind}s"
            if address == "local":
                raise UsageError(message)
            note(f"{message} for now; waiting for the cluster to add some")
            return workers
        fit = min(fit, int(have // each))
    if fit < workers:
        if address == "local":
            note(f"{workers} workers do not fit on this machine: running {fit}")
            return fit
        note(f"the cluster holds {fit} of the {workers} workers for now")
    return workers


def _host_port(address: str) -> tuple[str, int]:
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme not in ("ray", "tcp") or not parsed.hostname or port is None:
        raise UsageError(f"--ray {address}: give {ADDRESSES}")
    return parsed.hostname, port


def _probe(address: str, host: str, port: int) -> None:
    """A plain TCP connection to the address, or one UsageError line saying why not."""
    import threading

    outcome: list[BaseException | None] = []

    def connect() -> None:  # in a thread: a name lookup has no timeout of its own
        try:
            socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(error)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(_CONNECT_TIMEOUT_S + 1)
    error = outcome[0] if outcome else TimeoutError()
    if error is None:
        return
    if isinstance(error, socket.gaierror):
        raise UsageError(f"--ray {address}: unknown host '{host}'")
    if isinstance(error, TimeoutError):
        raise UsageError(
            f"--ray {address}: no answer from {host}:{port} within {_CONNECT_TIMEOUT_S:g} s"
        )
    reason = getattr(error, "strerror", None) or error
    raise UsageError(f"--ray {address}: cannot connect to {host}:{port} ({reason})")


def _quiet_data(ray: Any) -> None:
    """Ray Data's progress bars and execution logs off: stderr is ours, and says less."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = False  # parts finish in any order
    with contextlib.suppress(AttributeError):
        context.print_on_execution_start = False
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


# --- planning: scans on the cluster, parts by ordinal -----------------------------------------


def _scan_task(item: dict[str, Any]) -> dict[str, Any]:
    """A Ray Data task: scan a group of files; an input error comes back as data."""
    job = json.loads(item["job"])
    try:
        result: dict[str, Any] = {
            "sources": parts.scan_files(job["sources"], job["field"], job["column"], job["step"])
        }
    except CliError as error:
        result = _error(error)
    return {"group": item["group"], "result": json.dumps(result)}


def _plan(
    ray: Any,
    sources: list[dict[str, Any]],
    field: str | None,
    column: str | None,
    part_size: int,
) -> dict[str, Any]:
    """Scan the inputs in parallel on the cluster, then cut them into parts."""
    _quiet_data(ray)
    items = [
        {
            "group": i,
            "job": json.dumps(
                {"sources": group, "field": field, "column": column, "step": part_size}
            ),
        }
        for i, group in enumerate(parts.scan_groups(sources))
    ]
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map(_scan_task)
    scanned: list[dict[str, Any]] = []
    for row in sorted(dataset.take_all(), key=lambda row: row["group"]):
        result = json.loads(row["result"])
        if "error" in result:
            raise _ERRORS[result["kind"]](result["error"])
        scanned.extend(result["sources"])
    return parts.plan_parts(scanned, part_size)


# --- int8/uint8 calibration -----------------------------------------------------------------


def _calibrate(
    ray: Any,
    manifest: dict[str, Any],
    options: dict[str, Any],
    encode: dict[str, Any],
    gpus: float,
    cpus: float,
) -> list[list[float]] | None:
    """int8/uint8 ranges from the first texts, fixed for the run (and kept in the manifest)."""
    if encode["precision"] not in ("int8", "uint8"):
        return None
    if manifest["texts"] < 2:
        raise UsageError(
            f"--precision {encode['precision']} calibrates its ranges on the texts "
            "themselves: give at least two"
        )
    task = ray.remote(num_gpus=gpus, num_cpus=cpus)(_calibration_ranges)
    result = json.loads(ray.get(task.remote(json.dumps(manifest), options, encode)))
    if "error" in result:
        raise _ERRORS[result["kind"]](result["error"])
    return result["ranges"]


def _calibration_ranges(manifest: str, options: dict[str, Any], encode: dict[str, Any]) -> str:
    plan = json.loads(manifest)
    texts: list[Text] = []
    try:
        for part in plan["parts"]:
            texts += parts.read_part(plan, part, CALIBRATION_TEXTS - len(texts))
            if len(texts) >= CALIBRATION_TEXTS:
                break
        vectors = _make_embedder(options).embed(
            [t.text for t in texts], **{**encode, "precision": "float32"}
        )
    except CliError as error:
        return json.dumps(_error(error))
    return json.dumps({"ranges": [vectors.min(axis=0).tolist(), vectors.max(axis=0).tolist()]})


def _quantize(vectors: np.ndarray, precision: str, ranges: Any) -> np.ndarray:
    if precision == "float32":
        return vectors
    try:  # sentence-transformers >= 6
        from sentence_transformers.util.quantization import quantize_embeddings
    except ImportError:
        from sentence_transformers.quantization import quantize_embeddings

    if precision in ("int8", "uint8"):
        bounds = np.asarray(ranges, dtype=np.float32)
        return quantize_embeddings(vectors, precision=precision, ranges=bounds)
    return quantize_embeddings(vectors, precision=precision)


# --- the workers ---------------------------------------------------------------------------


class _PartWorker:
    """A Ray Data worker: builds the embedder once, then embeds and writes whole parts."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.manifest = job["manifest"]
        self.embedder = _make_embedder(job["options"])

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows: list[dict[str, Any]] = []
        for number in batch["part"]:
            row = {"part": int(number), "error": "", "kind": "", **_PART_ROW}
            try:
                row.update(self._write(int(number)))
            except CliError as failure:
                row.update(_error(failure))
            rows.append(row)
        return {key: [row[key] for row in rows] for key in rows[0]}

    def _write(self, number: int) -> dict[str, Any]:
        """Read, embed and write one part, a chunk at a time, the three overlapped.

        While the model embeds a chunk, a thread reads the next and another writes the
        last, so a GPU waits on neither; the seconds it did wait are reported. Memory
        holds a few chunks, whatever the part size.
        """
        from concurrent.futures import ThreadPoolExecutor

        part = self.manifest["parts"][number]
        folder = parts.OutputFolder(self.job["output"])
        if folder.part_is_done(part, self.manifest["run"]):  # a retried task: it got there
            return {"texts": 0}
        encode = self.manifest["settings"]
        before = self.embedder.truncated
        waited = {"read_s": 0.0, "embed_s": 0.0, "write_s": 0.0}
        metadata = {**encode, "run": self.manifest["run"], "part": number}
        chunks = _read_ahead(_chunked(parts.iter_part(self.manifest, part), CHUNK_TEXTS))
        with (  # the executor closes first: no write is in flight when the file is closed
            ParquetEmbeddingsWriter(folder.path(part["name"]), metadata) as writer,
            ThreadPoolExecutor(1) as behind,
        ):
            pending = None
            while True:
                clock = time.perf_counter()
                texts = next(chunks, None)
                waited["read_s"] += time.perf_counter() - clock
                if texts is None:
                    break
                clock = time.perf_counter()
                vectors = self.embedder.embed(
                    [t.text for t in texts],
                    prompt=encode["prompt"],
                    prompt_name=encode["prompt_name"],
                    normalize=encode["normalize"],
                    truncate_dim=encode["truncate_dim"],
                )
                vectors = _quantize(vectors, encode["precision"], self.manifest.get("ranges"))
                waited["embed_s"] += time.perf_counter() - clock
                clock = time.perf_counter()
                if pending is not None:
                    pending.result()  # one chunk in writing at a time: memory stays flat
                pending = behind.submit(writer.write, texts, vectors)
                waited["write_s"] += time.perf_counter() - clock
            clock = time.perf_counter()
            if pending is not None:
                pending.result()
            waited["write_s"] += time.perf_counter() - clock
        return {"texts": writer.count, "truncated": self.embedder.truncated - before, **waited}


def _chunked(texts: Iterator[Text], size: int) -> Iterator[list[Text]]:
    while chunk := list(islice(texts, size)):
        yield chunk


def _read_ahead(chunks: Iterator[list[Text]]) -> Iterator[list[Text]]:
    """The chunks of ``chunks``, the next one read in a thread while this one is used."""
    import queue
    import threading

    ready: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def offer(item: Any) -> bool:
        """Put ``item`` in the queue unless the consumer has gone."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for chunk in chunks:
                if not offer(chunk):
                    return
            offer(None)
        except BaseException as error:  # handed to the consumer, raised there
            offer(error)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _embed_parts(
    ray: Any,
    out: parts.OutputFolder,
    manifest: dict[str, Any],
    options: dict[str, Any],
    *,
    workers: int,
    gpus_per_worker: float,
    cpus_per_worker: float,
    progress: Callable[[RayProgress], None] | None,
    note: Callable[[str], None],
    started: float,
) -> RayResult:
    """Run the pool over the parts not yet written; report each part as it lands."""
    planned = manifest["parts"]
    out.remove_stale_temporaries()
    done = {i for i, part in enumerate(planned) if out.part_is_done(part, manifest["run"])}
    kept = len(done)
    todo = [i for i in range(len(planned)) if i not in done]
    texts_done = sum(planned[i]["texts"] for i in done)
    if kept:
        note(f"{out.display}: {kept} of {len(planned)} part(s) already written; doing the rest")
    begun = time.monotonic()
    fresh = truncated = 0
    steps = {"read": 0.0, "embed": 0.0, "write": 0.0}

    def report() -> None:
        if progress is not None:
            elapsed = time.monotonic() - begun
            rate = fresh / elapsed if elapsed > 0 else 0.0
            progress(
                RayProgress(
                    len(done),
                    len(planned),
                    texts_done,
                    manifest["texts"],
                    rate,
                    time.monotonic() - started,
                )
            )

    report()
    rows: Any = iter(())
    try:
        if todo:
            from ray.data import ActorPoolStrategy

            _quiet_data(ray)
            job = {"manifest": manifest, "options": options, "output": out.root}
            items = [{"part": i} for i in todo]
            dataset = ray.data.from_items(items, override_num_blocks=len(todo)).map_batches(
                _PartWorker,
                fn_constructor_kwargs={"job": job},
                batch_size=1,
                compute=ActorPoolStrategy(size=min(workers, len(todo))),
                num_gpus=gpus_per_worker,
                num_cpus=cpus_per_worker,
            )
            rows = iter(dataset.iter_rows())
            for row in rows:
                if row["error"]:
                    raise _ERRORS[row["kind"]](row["error"])
                number = int(row["part"])
                done.add(number)
                fresh += planned[number]["texts"]
                texts_done += planned[number]["texts"]
                truncated += int(row["truncated"])
                for step in steps:
                    steps[step] += float(row[f"{step}_s"])
                report()
    except BaseException:
        with contextlib.suppress(Exception):  # the error that stopped us matters more
            getattr(rows, "close", lambda: None)()  # stops the pool
            out.write_manifest({**manifest, "done": sorted(done)})
        raise
    out.write_manifest({**manifest, "done": sorted(done)})
    return RayResult(
        output_dir=out.display,
        parts_total=len(planned),
        parts_written=len(planned) - kept,
        parts_kept=kept,
        texts=manifest["texts"],
        truncated=truncated,
        seconds=time.monotonic() - started,
        worker_seconds=steps,
    )


def _error(error: CliError) -> dict[str, str]:
    """A CliError as data: what a Ray task hands back instead of a wrapped traceback."""
    kind = next((name for name, cls in _ERRORS.items() if isinstance(error, cls)), "UsageError")
    return {"error": str(error), "kind": kind}


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
