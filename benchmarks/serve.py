"""A warm server against in-process work, in one run (minilm, CPU, no cache).

1. One-off query: ``similar "what county is hayden in" -i sample_inputs/hayden.txt``
   with a warm ``serve`` against ``--no-server``: target ≥ 10× faster and < 0.5 s.
2. Throughput: ``embed`` of a 10,000-line file to .npy through the server against
   in-process; the fixed cost of each path (``embed "x"``) is subtracted, so the
   figure compares embedding speed: target within 10%.

Each command is a fresh process; runs are interleaved; medians quoted. The cache is
off (``--no-cache``) so that it is the server that is measured.

    python benchmarks/serve.py
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import host  # noqa: E402
from benchmarks.texts import make_texts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--model", default="minilm")
    args = parser.parse_args()
    print(host.describe())

    work = Path(tempfile.mkdtemp(prefix="modernbert-cli-serve-bench-"))
    env = host.command_env(work)
    cli = [sys.executable, "-m", "modernbert_cli"]
    model = ["-m", args.model, "--device", "cpu"]
    common = [*model, "--no-cache", "-q"]
    _run([*cli, "serve", "--detach", *model, "--idle-timeout", "30"], env)
    try:
        query = [*cli, "similar", "what county is hayden in", "-i", "sample_inputs/hayden.txt"]
        warm, cold = [], []
        for _ in range(args.repeats):
            warm.append(_run([*query, *common], env))
            cold.append(_run([*query, *common, "--no-server"], env))
        w, c = statistics.median(warm), statistics.median(cold)
        print(f"one-off similar: warm server {w:.3f} s, --no-server {c:.3f} s")
        print(f"  {c / w:.1f}x faster (target ≥ 10x), {w:.3f} s (target < 0.5 s)")

        lines = work / "lines.txt"
        lines.write_text("\n".join(make_texts(args.lines, 10, 60, seed=3)) + "\n")
        embed = [*cli, "embed", "-i", str(lines), "-o", str(work / "out.npy")]
        fixed = [*cli, "embed", "x", "-o", str(work / "x.npy")]
        rows = {"server": [], "in-process": []}
        for _ in range(max(1, args.repeats // 2)):
            for label, extra in (("server", []), ("in-process", ["--no-server"])):
                total = _run([*embed, *common, *extra], env)
                start = _run([*fixed, *common, *extra], env)
                rows[label].append((total, total - start))
        (st, sw), (it, iw) = (
            tuple(statistics.median(v[i] for v in rows[k]) for i in (0, 1)) for k in rows
        )
        print(f"embed of {args.lines:,} lines: server {st:.1f} s, in-process {it:.1f} s (wall)")
        print(
            f"  embedding alone (wall minus the fixed cost): server {args.lines / sw:,.0f} "
            f"texts/s, in-process {args.lines / iw:,.0f} texts/s: ratio {iw / sw:.2f} "
            "(target ≥ 0.9)"
        )
    finally:
        _run([*cli, "serve", "stop", "-m", args.model], env, check=False)


def _run(command: list[str], env: dict[str, str], check: bool = True) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True)
    elapsed = time.perf_counter() - start
    if check and done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr.decode()}")
    return elapsed


if __name__ == "__main__":
    main()
