"""The cost of the Ray path: `embed --ray local` with 1 and 2 workers vs one process, in one run.

(Not named ray.py: run as a script, it would shadow the ray package.)

On the same texts (a file of short synthetic passages) it times:

- ``one process``: the engine as one-process ``embed`` runs it (``Embedder``, no cache),
  model load included, all cores to one process;
- ``ray, N workers``: ``run_ray_embed(address="local")`` into a fresh folder, all
  included: starting Ray, scanning the input, starting the workers, loading the model in
  each, writing Parquet parts. The cores are shared out among the workers.

For each it prints texts/s end to end and in the steady state (ray: from the first part
written to the last; one process: the encode alone), and the ratio to one process. On a
machine of a few cores the end-to-end figure is mostly start-up; the steady one is what
a long run sees.

    python benchmarks/cluster.py                       # minilm, 3,000 texts, a few minutes
    python benchmarks/cluster.py --texts 20000 --part-size 2000 --model modernbert-base
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.texts import make_texts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="minilm, or modernbert-base (random)")
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--part-size", type=int, default=500)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="mbcli-ray-bench-"))
    model = _model_path(args.model, work)
    source = work / "texts.txt"
    texts = make_texts(args.texts, 8, 40, seed=3)
    source.write_text("\n".join(texts) + "\n")
    print(f"{args.texts} texts of 8-40 words, model {args.model}, {cores} cores, ", end="")
    print(f"part size {args.part_size}")

    try:
        rows = [("one process", *_one_process(model, texts))]
        splits = []
        for workers in (int(w) for w in args.workers.split(",")):
            total, steady, split = _ray(model, source, work, workers, args)
            rows.append((f"ray, {workers} worker(s)", total, steady))
            splits.append((workers, split))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base_total, base_steady = rows[0][1], rows[0][2]
    print(f"\n{'path':<20} {'end to end':>14} {'ratio':>7} {'steady':>14} {'ratio':>7}")
    for name, total, steady in rows:
        print(
            f"{name:<20} {total:>8,.0f} txt/s {total / base_total:>6.2f}x "
            f"{steady:>8,.0f} txt/s {steady / base_steady:>6.2f}x"
        )
    print("\nworker time per step (all parts): where a GPU would wait on reading and writing")
    for workers, split in splits:
        whole = sum(split.values()) or 1.0
        shares = ", ".join(f"{step} {seconds / whole:.1%}" for step, seconds in split.items())
        print(f"  {workers} worker(s): {shares}")


def _one_process(model: str, texts: list[str]) -> tuple[float, float]:
    from modernbert_cli import Embedder

    start = time.perf_counter()
    embedder = Embedder(model, device="cpu", cache=False, server=False).load()
    begun = time.perf_counter()
    embedder.embed(texts)
    end = time.perf_counter()
    return len(texts) / (end - start), len(texts) / (end - begun)


def _ray(model: str, source: Path, work: Path, workers: int, args) -> tuple[float, float, dict]:
    from modernbert_cli.distributed import run_ray_embed

    marks: list[tuple[float, int]] = []  # (time, texts done) after each part
    start = time.perf_counter()
    result = run_ray_embed(
        [str(source)],
        str(work / f"out-{workers}"),
        embedder_options={"model": model},
        address="local",
        workers=workers,
        cpus_per_worker=max(1, (os.cpu_count() or 1) // workers),
        part_size=args.part_size,
        progress=lambda p: marks.append((time.perf_counter(), p.texts_done)),
    )
    end = time.perf_counter()
    done = [(t, n) for t, n in marks if n > 0]
    steady = (done[-1][1] - done[0][1]) / (done[-1][0] - done[0][0]) if len(done) > 1 else 0.0
    return result.texts / (end - start), steady, result.worker_seconds


def _model_path(name: str, work: Path) -> str:
    if name == "modernbert-base":
        from modernbert_cli.testing import build_modernbert

        return str(build_modernbert(work / "modernbert-base-random", size="base"))
    return name


if __name__ == "__main__":
    main()
