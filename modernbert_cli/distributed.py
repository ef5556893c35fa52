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
from modernbert_cli.embedder import Embedder
from modernbert_cli.errors import (
    CliError,
    InputError,
    ModelError,
    OutputError,
    SettingError,
    UsageError,
)
from modernbert_cli.inputs import Text
from modernbert_cli.parquet import ParquetEmbeddingsWriter
from modernbert_cli.settings import DEFAULT_MODEL, PRECISIONS

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
    if precision not in PRECISIONS:
        raise SettingError("precision", f"choose from {', '.join(PRECISIONS)}", precision)
    options = _worker_options(embedder_options, gpus_per_worker)
    encode = {
        "normalize": normalize,
        "precision": precision,
        "truncate_dim": truncate_dim,
        "prompt": prompt,
        "prompt_name": prompt_name,
    }
    _check_prompts(options, prompt, prompt_name)  # a bad model path fails here, before Ray
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
        options["dtype"] = _resolve_dtype(ray, options, gpus_per_worker, cpus_per_worker)
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
        raise SettingError("workers", "must be at least 1", workers)
    if gpus < 0:
        raise SettingError("gpus_per_worker", "cannot be negative", gpus)
    if cpus <= 0:
        raise SettingError("cpus_per_worker", "must be more than 0", cpus)
    if part_size is not None and part_size < 1:
        raise SettingError("part_size", "must be at least 1", part_size)
    if prompt is not None and prompt_name is not None:
        raise SettingError("prompt", "cannot be given with {prompt_name}")


# --- the model: the one place that says what a worker runs ---------------------------------


def _make_embedder(options: dict[str, Any]) -> Embedder:
    """The embedder a worker builds once and keeps: one-process embed's engine."""
    return Embedder(**options)


def _describe(options: dict[str, Any]) -> dict[str, Any]:
    """Model, fingerprint and the settings that change a vector, without loading the model
    (the driver of a cluster may have no GPU, nor the model's weights)."""
    embedder = Embedder(**options)  # a bad model path fails here
    return {
        "model": embedder.name,
        "fingerprint": embedder.files_fingerprint(),
        **embedder.vector_settings(),
    }


def _check_prompts(options: dict[str, Any], prompt: str | None, prompt_name: str | None) -> None:
    """The model is there, and a prompt name it does not define is refused now, not by
    every worker (when the driver has the model's files; else the first worker does)."""
    from modernbert_cli.model import ModelFiles

    embedder = Embedder(**options)  # a bad path fails here, torch-free
    if prompt_name is not None and ModelFiles.find(options["model"]).directory is not None:
        embedder.check(prompt=prompt, prompt_name=prompt_name)


def _worker_options(options: dict[str, Any], gpus_per_worker: float) -> dict[str, Any]:
    """The embedder options a worker gets: a device that matches what Ray gave it."""
    # Every text of a run is embedded once: a cache or a warm server would only cost.
    options = {"model": DEFAULT_MODEL, **options, "cache": False, "server": False}
    device = str(options.get("device") or "auto")
    if device == "auto":
        # Ray shows a worker only the GPUs it was given: none unless asked for.
        options["device"] = "cuda" if gpus_per_worker > 0 else "cpu"
    elif device.startswith("cuda") and gpus_per_worker == 0:
        raise SettingError(
            "device", "needs {gpus_per_worker}: Ray gives a worker no GPU otherwise", device
        )
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
        raise UsageError(f"Ray is not installed: {INSTALL_HINT}") from None
    return ray


def _connect(ray: Any, address: str, note: Callable[[str], None]) -> Callable[[], None]:
    """Join or start Ray as ``address`` says; returns how to leave it again.

    A remote address is tried first with a plain connection of a few seconds: Ray
    itself would retry a dead one for minutes.
    """
    if address not in ("local", "auto"):
        _probe(address, address)
    elif address == "auto" and os.environ.get("RAY_ADDRESS", "auto") not in ("auto", "local"):
        _probe(address, os.environ["RAY_ADDRESS"], "RAY_ADDRESS=")
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
    except Exception as error:  # Ray raises many kinds; all mean "cannot start or join"
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        if isinstance(error, ConnectionError):
            hint = " (set RAY_ADDRESS, or run `ray start --head`)" if address == "auto" else ""
            reason = f"no Ray cluster to join{hint}: {_first_line(error)}"
        else:
            reason = f"cannot start Ray: {_first_line(error)}"
        raise SettingError("address", reason, address) from None
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
    room = [("CPU", cpus, "cpus_per_worker")] + ([("GPU", gpus, "gpus_per_worker")] if gpus else [])
    fit = workers
    for kind, each, setting in room:
        have = float(resources.get(kind, 0))
        if have < each:
            if address == "local":
                raise SettingError(setting, f"this machine's Ray has {have:g} {kind}s", each)
            note(f"the cluster has {have:g} {kind}s for now, a worker needs {each:g}: waiting")
            return workers
        fit = min(fit, int(have // each))
    if fit < workers:
        if address == "local":
            note(f"{workers} workers do not fit on this machine: running {fit}")
            return fit
        note(f"the cluster holds {fit} of the {workers} workers for now")
    return workers


def _probe(address: str, target: str, via: str = "") -> None:
    """A plain TCP connection to ``target``, or one SettingError line saying why not."""
    import threading

    parsed = urlparse(target if "://" in target else f"tcp://{target}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if parsed.scheme not in ("ray", "tcp") or not host or port is None:
        raise SettingError("address", f"{via}{target}: give {ADDRESSES}", address)
    outcome: list[OSError | None] = []

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
    where = f"{via}{target}: " if via else ""
    if isinstance(error, socket.gaierror):
        reason = f"unknown host '{host}'"
    elif isinstance(error, TimeoutError):
        reason = f"no answer from {host}:{port} within {_CONNECT_TIMEOUT_S:g} s"
    else:
        reason = f"cannot connect to {host}:{port} ({error.strerror or error})"
    raise SettingError("address", where + reason, address)


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
            _raise(result)
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
        raise SettingError(
            "precision",
            "calibrates its ranges on the texts themselves: give at least two",
            encode["precision"],
        )
    task = ray.remote(num_gpus=gpus, num_cpus=cpus)(_calibration_ranges)
    result = json.loads(ray.get(task.remote(json.dumps(manifest), options, encode)))
    if "error" in result:
        _raise(result)
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
    from modernbert_cli.model import embedding_quantizer

    quantize_embeddings = embedding_quantizer()
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
            row = {"part": int(number), "error": "", "kind": "", "setting": "", **_PART_ROW}
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
        from modernbert_cli import __version__

        metadata = {  # what a part is, for whoever reads it without the manifest
            **encode,
            "dimensions": encode["truncate_dim"] or self.embedder.dimensions,  # loads it
            "similarity": self.embedder.similarity_fn_name,
            "modernbert_cli": __version__,
            "run": self.manifest["run"],
            "part": number,
        }
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
                    _raise(row)
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
    """A CliError as data (strings only, as every row of a worker has them): what a Ray
    task hands back instead of a wrapped traceback."""
    setting = ""
    if isinstance(error, SettingError):
        value = [error.value] if error.has_value else []  # a value, or none given
        setting = json.dumps([error.setting, error.template, *value], default=str)
    kind = next((name for name, cls in _ERRORS.items() if isinstance(error, cls)), "UsageError")
    return {"error": str(error), "kind": kind, "setting": setting}


def _raise(result: dict[str, Any]) -> None:
    """Raise again, in the driver, an error a task or worker handed back as data."""
    if result.get("setting"):
        raise SettingError(*json.loads(result["setting"]))
    raise _ERRORS[result["kind"]](result["error"])


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
