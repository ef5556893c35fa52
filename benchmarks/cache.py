"""The embedding cache and start-up, measured against their targets in one run.

1. ``similar "<new query>" -i corpus.txt`` over a 5,000-line corpus with minilm on the
   CPU, after a first run with another query, against ``embed "x" --no-cache`` (the
   fixed cost of starting and loading the model): target ratio ≤ 1.3, and the cache's
   counters must move by 5,000 hits and 1 miss.
2. ``modernbert-cli --help`` against ``python -c "import typer, rich"``: target ≤ 2×.
3. A cache of 100,000 entries looks up 10,000 texts (half present): target < 1 s.

Each command runs in a fresh process; runs are interleaved and medians quoted.

    python benchmarks/cache.py
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import host  # noqa: E402
from benchmarks.texts import make_texts  # noqa: E402
from modernbert_cli.cache import EmbeddingCache, text_key  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=10_000)
    args = parser.parse_args()
    print(host.describe())

    work = Path(tempfile.mkdtemp(prefix="modernbert-cli-cache-bench-"))
    env = host.command_env(work)
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(make_texts(args.corpus, 10, 60, seed=7)) + "\n")
    cli = [sys.executable, "-m", "modernbert_cli"]
    common = ["-m", "minilm", "--device", "cpu", "-q"]

    # 1. A warm cache makes the corpus free.
    first = _timed([*cli, "similar", "the first question", "-i", str(corpus), *common], env)
    print(f"first similar over {args.corpus:,} lines (fills the cache): {first:.2f} s")
    baseline, cached, deltas = [], [], []
    for i in range(args.repeats):
        baseline.append(_timed([*cli, "embed", "x", "--no-cache", *common], env))
        before = _counters(work / "cache")
        query = f"a new question number {i} about rivers"
        cached.append(_timed([*cli, "similar", query, "-i", str(corpus), *common], env))
        after = _counters(work / "cache")
        deltas.append((after[0] - before[0], after[1] - before[1]))
    base, warm = statistics.median(baseline), statistics.median(cached)
    print(f'embed "x" --no-cache (fixed start-up cost), median: {base:.2f} s')
    print(f"similar with a new query over the cached corpus, median: {warm:.2f} s")
    print(f"ratio {warm / base:.2f} (target ≤ 1.3); hits/misses per run: {sorted(set(deltas))}")

    # 2. Help answers before torch is even looked at.
    help_times, import_times = [], []
    for _ in range(10):
        help_times.append(_timed([*cli, "--help"], env))
        import_times.append(_timed([sys.executable, "-c", "import typer, rich"], env))
    h, i = statistics.median(help_times), statistics.median(import_times)
    print(f"--help {h * 1000:.0f} ms vs import typer, rich {i * 1000:.0f} ms: {h / i:.2f}x (≤ 2)")

    # 3. Lookups in a large cache.
    store = EmbeddingCache(work / "lookup" / "embeddings.sqlite3")
    rng = np.random.default_rng(0)
    keys = [text_key(f"entry {n}") for n in range(args.entries)]
    for start in range(0, args.entries, 10_000):
        batch = keys[start : start + 10_000]
        vectors = rng.standard_normal((len(batch), 384), dtype=np.float32)
        store.store("fingerprint", "bench", zip(batch, vectors, [False] * len(batch), strict=True))
    half = args.lookups // 2
    wanted = keys[:half] + [text_key(f"absent {n}") for n in range(args.lookups - half)]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        found = store.lookup("fingerprint", wanted)
        times.append(time.perf_counter() - start)
    size = store.size_bytes() / 2**20
    print(
        f"lookup of {args.lookups:,} texts in {args.entries:,} entries ({size:,.0f} MB): "
        f"{statistics.median(times) * 1000:.0f} ms median, {len(found):,} found (target < 1 s)"
    )


def _timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr.decode()}")
    return elapsed


def _counters(folder: Path) -> tuple[int, int]:
    """Total hits and misses recorded in the cache so far."""
    store = EmbeddingCache(folder / "embeddings.sqlite3")
    stats = store.stats()
    store.close()
    return sum(s.hits for s in stats), sum(s.misses for s in stats)


if __name__ == "__main__":
    main()
