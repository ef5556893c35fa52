"""What a user waits for at the shell: a warm one-off answer, whole process, beside its floors.

With ``modernbert-cli serve -m minilm --detach`` running, it times (each a fresh
process, start-up to exit, rounds interleaved, median of ``--repeats``):

- ``python -c pass`` and ``python -c "import typer, rich"``: the floors any Python
  CLI built on Typer and Rich pays;
- ``similar "what county is hayden in" -i sample_inputs/hayden.txt -m minilm``: the
  issue's one-off query (its texts are cached after the warm-up run, so the server
  answers from the cache), target ≤ 0.3 s;
- the same with ``--no-cache``: the server embeds the five texts every time;
- the same with ``--no-server --no-cache`` (``--cold`` rounds): what a one-off costs
  with neither (torch and the model loaded in the process).

Our modules run from bytecode, as an installed package does (pip compiles them): the
script gives the commands a bytecode folder of their own (``PYTHONPYCACHEPREFIX``) even
where ``PYTHONDONTWRITEBYTECODE`` is set. ``--instructions`` also counts the
instructions each command executes under valgrind, a measure the machine's load does
not move.

    python benchmarks/shell.py [--repeats 10] [--cold 3] [--instructions]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import host  # noqa: E402

QUERY = ["similar", "what county is hayden in", "-i", "sample_inputs/hayden.txt", "-m", "minilm"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cold", type=int, default=3, help="rounds with --no-server (slow)")
    parser.add_argument("--instructions", action="store_true", help="count them (valgrind)")
    args = parser.parse_args()

    print(host.describe())
    work = Path(tempfile.mkdtemp(prefix="modernbert-cli-shell-bench-"))
    env = host.command_env(work)
    py = [sys.executable]
    cli = [*py, "-m", "modernbert_cli"]
    commands = {
        "python -c pass": [*py, "-c", "pass"],
        'python -c "import typer, rich"': [*py, "-c", "import typer, rich"],
        "similar (warm server)": [*cli, *QUERY],
        "similar --no-cache (warm server)": [*cli, *QUERY, "--no-cache"],
    }
    cold = {"similar --no-server --no-cache": [*cli, *QUERY, "--no-server", "--no-cache"]}
    _run([*cli, "serve", "-m", "minilm", "--detach", "--idle-timeout", "30"], env)
    try:
        for command in [*commands.values(), *cold.values()]:
            _run(command, env)  # warm-up: bytecode written, the cache filled, files in memory
        times: dict[str, list[float]] = {name: [] for name in [*commands, *cold]}
        for round_ in range(args.repeats):
            for name, command in commands.items():
                times[name].append(_run(command, env))
            if round_ < args.cold:
                for name, command in cold.items():
                    times[name].append(_run(command, env))
        counts = {}
        if args.instructions:
            counts = {name: _instructions(command, env) for name, command in commands.items()}
    finally:
        _run([*cli, "serve", "stop", "-m", "minilm"], env, check=False)
        shutil.rmtree(work, ignore_errors=True)

    floor = statistics.median(times['python -c "import typer, rich"'])
    print(f"\n{'command (whole process)':<36} {'median':>8} {'min':>8} {'× typer+rich':>13}")
    for name, values in times.items():
        if not values:
            continue
        median = statistics.median(values)
        count = f"  {counts[name] / 1e6:,.0f} M instructions" if counts.get(name) else ""
        print(
            f"{name:<36} {median:>7.3f}s {min(values):>7.3f}s {median / floor:>12.2f}×"
            f"  (n={len(values)}){count}"
        )
    warm = statistics.median(times["similar (warm server)"])
    print(f"\nwarm one-off similar: {warm:.3f} s (target ≤ 0.3 s); load after: {host.load()}")


def _run(command: list[str], env: dict[str, str], check: bool = True) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True)
    elapsed = time.perf_counter() - start
    if check and done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr.decode()}")
    return elapsed


def _instructions(command: list[str], env: dict[str, str]) -> int | None:
    """Instructions the command executes (valgrind's callgrind), or None without valgrind."""
    if shutil.which("valgrind") is None:
        return None
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    return int(found.group(1)) if found else None


if __name__ == "__main__":
    main()
