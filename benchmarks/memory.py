"""Peak memory of streamed batch jobs: does it grow with the input? (It should not.)

Runs the real CLI as a subprocess on files of ``--small`` and ``--large`` lines
(default 2,000 and 200,000 short passages) with a tiny random-weight ModernBERT
(the same code path as the real one, so the run is quick), and prints each
command's peak RSS (the kernel's ``ru_maxrss`` of the child) and the difference
between the two sizes. Target: within 300 MB, i.e. memory independent of N.

    python benchmarks/memory.py
    python benchmarks/memory.py --device cuda   # adds peak GPU memory per command
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import host  # noqa: E402
from benchmarks.texts import make_texts  # noqa: E402

TARGET_MB = 300

# Inside the child: run the CLI, then report torch's peak GPU memory on stderr.
_CHILD = """
import json, sys
from modernbert_cli.cli import run
code = run(json.loads(sys.argv[1]))
torch = sys.modules.get("torch")
if torch is not None and torch.cuda.is_available():
    peak = torch.cuda.max_memory_allocated() / 2**20
    sys.stderr.write(f"\\ngpu-peak-mb={peak:.0f}\\n")
sys.exit(code)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=200_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", help="model path (default: a tiny random ModernBERT)")
    args = parser.parse_args()
    print(host.describe())

    work = Path(tempfile.mkdtemp(prefix="modernbert-cli-memory-"))
    model = args.model or _tiny_model(work)
    # No cache: it is the streaming itself that is measured.
    common = ["-m", model, "--device", args.device, "--no-cache", "--no-server", "-q"]
    commands = {
        "embed → .npy": lambda f: ["embed", "-i", f, "-o", str(work / "out.npy"), *common],
        "embed → .jsonl": lambda f: ["embed", "-i", f, "-o", str(work / "out.jsonl"), *common],
        "similar -k 10": lambda f: [
            "similar",
            "a river in the north",
            "-i",
            f,
            "-f",
            "jsonl",
            *common,
        ],
    }
    sizes = (args.small, args.large)
    files = {n: _write_lines(work / f"lines-{n}.txt", n) for n in sizes}
    print(f"model {model}, device {args.device}; peak RSS of the whole process")
    print(f"{'command':<16} {'lines':>8} {'seconds':>8} {'peak RSS MB':>12} {'GPU MB':>8}")
    peaks: dict[str, dict[int, float]] = {}
    for name, make in commands.items():
        for n in sizes:
            seconds, rss, gpu = _measure(make(str(files[n])))
            peaks.setdefault(name, {})[n] = rss
            print(f"{name:<16} {n:>8,} {seconds:>8.1f} {rss:>12.0f} {gpu:>8}")
    print()
    for name, by_size in peaks.items():
        growth = by_size[args.large] - by_size[args.small]
        verdict = "ok" if growth <= TARGET_MB else "OVER TARGET"
        print(
            f"{name:<16} {args.large:,} lines use {growth:+.0f} MB vs {args.small:,} "
            f"(target ≤ {TARGET_MB} MB): {verdict}"
        )


def _tiny_model(work: Path) -> str:
    from modernbert_cli.testing import build_modernbert

    return str(build_modernbert(work / "tiny-modernbert", max_seq_length=512))


def _write_lines(path: Path, count: int) -> Path:
    with path.open("w") as out:
        for start in range(0, count, 10_000):
            texts = make_texts(min(10_000, count - start), 10, 60, seed=start)
            out.write("\n".join(texts) + "\n")
    return path


def _measure(cli_args: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, peak GPU MB or '-') of one CLI run in a fresh process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(cli_args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    stderr = process.stderr.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cli_args)}\n{stderr}")
    gpu = next((line.split("=")[1] for line in stderr.splitlines() if "gpu-peak-mb=" in line), "-")
    return seconds, usage.ru_maxrss / 1024, gpu


if __name__ == "__main__":
    main()
