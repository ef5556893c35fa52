"""--passages: speed against plain lines, and a new query over a cached folder, in one run.

1. Throughput (in-process, minilm, CPU, no cache): the same text embedded as lines
   (what ``embed -i FILE`` does) and as passages (``embed --passages -i FILE``, cutting
   included): texts/s and tokens/s of each, and their ratios.
2. Cutting: MB/s of cutting a folder with no split cache, and with every file's
   passages kept (``modernbert_cli.split_cache``).
3. A new query over a cached folder of about 50 MB of text (generated under /tmp): the
   whole process ``similar "<new query>" --passages -i FOLDER -m minilm`` against the
   fixed start-up, ``similar "<new query>" "y" -m minilm`` — without a server (both load
   the model for their new query) and with a warm one (``serve --detach``: both send
   their query to it). Runs are interleaved, medians quoted; a new query every run.
4. Memory: peak RSS of the folder query over 50 MB and over 5 MB of text.

The caches are filled through the library's own path (``Splitter.for_embedder`` and
``Embedder.embed``: the command line's keys, fingerprint and split cache), but the
model's vectors are replaced by random ones of minilm's shape: real vectors for the
~130k passages of 50 MB take about an hour on a 2-core CPU, and a cached run's cost does
not depend on their values (the answers are meaningless, the timings are not).

    python benchmarks/passages_speed.py [--mb 50 --small-mb 5 --repeats 3 --threads 1]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
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

FILE_KB = 50  # a folder of notes and docs: files of about this size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=50.0, help="size of the big folder")
    parser.add_argument("--small-mb", type=float, default=5.0, help="size of the small one")
    parser.add_argument("--throughput-kb", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the folders and caches")
    args = parser.parse_args()
    print(host.describe())

    threads = str(args.threads)
    os.environ.update(OMP_NUM_THREADS=threads, RAYON_NUM_THREADS=threads)
    work = Path(tempfile.mkdtemp(prefix="modernbert-cli-passages-bench-"))
    env = host.command_env(work)
    os.environ.update(MODERNBERT_CLI_CACHE_DIR=env["MODERNBERT_CLI_CACHE_DIR"])
    print(f"load: {_load()}; {args.threads} thread(s); work folder {work}", flush=True)
    try:
        throughput(work, args.throughput_kb, args.repeats)
        big = make_folder(work / "big", args.mb, seed=1)
        small = make_folder(work / "small", args.small_mb, seed=2)
        cutting(small)
        for folder in (big, small):
            prime(folder)
        queries(big, small, env, args.repeats)
    finally:
        _run(["serve", "stop", "--all"], env, check=False)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load: {_load()}")


# 1. Throughput -------------------------------------------------------------------------


def throughput(work: Path, kb: int, repeats: int) -> None:
    from modernbert_cli import Embedder
    from modernbert_cli.passages import Splitter, Tokens

    text_file = work / "lines.txt"
    lines = _lines(kb << 10, seed=0)
    text_file.write_text("\n".join(lines) + "\n")
    emb = Embedder("minilm", device="cpu", cache=False, server=False)
    emb.embed(lines[:64])  # the model loaded and warm
    limit = emb.max_seq_length
    tokens = Tokens.for_model(emb.encoder.files.directory)  # type: ignore[union-attr,arg-type]

    def count(texts: list[str]) -> int:
        return sum(min(limit, len(s) + tokens.special) for s in tokens.spans(texts))

    rows: dict[str, list[tuple[int, int, float]]] = {"lines": [], "passages": []}
    for _ in range(repeats):
        start = time.perf_counter()
        emb.embed(lines)
        rows["lines"].append((len(lines), count(lines), time.perf_counter() - start))
        start = time.perf_counter()
        splitter = Splitter.for_embedder(emb)  # cache off, as the Embedder's
        texts = [p.text for p in splitter.passages([text_file])]
        emb.embed(texts)
        rows["passages"].append((len(texts), count(texts), time.perf_counter() - start))
    print(
        f"\n1. {kb} KB of text as {len(lines):,} lines and as passages "
        f"(128 tokens, overlap 32), minilm in-process, {repeats} interleaved repeats, medians"
    )
    print("| as | texts | tokens | s | texts/s | tokens/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    rates = {}
    for name, runs in rows.items():
        texts, n_tokens = runs[0][:2]
        seconds = statistics.median(r[2] for r in runs)
        rates[name] = (texts / seconds, n_tokens / seconds, seconds)
        print(
            f"| {name} | {texts:,} | {n_tokens:,} | {seconds:.1f} "
            f"| {texts / seconds:,.1f} | {n_tokens / seconds:,.0f} |"
        )
    print(
        f"passages/lines: tokens/s {rates['passages'][1] / rates['lines'][1]:.2f}x, "
        f"time for the same text {rates['passages'][2] / rates['lines'][2]:.2f}x",
        flush=True,
    )


# 2. Cutting ----------------------------------------------------------------------------


def cutting(folder: Path) -> None:
    from modernbert_cli import Embedder
    from modernbert_cli.passages import Splitter

    size = _folder_mb(folder)
    times = {}
    for name, cache in (("no split cache", False), ("first cut, kept", True), ("kept", True)):
        splitter = Splitter.for_embedder(Embedder("minilm", cache=cache, server=False))
        start = time.perf_counter()
        count = sum(1 for _ in splitter.passages([folder]))
        times[name] = time.perf_counter() - start
    print(f"\n2. Cutting {size:.1f} MB ({count:,} passages), in-process")
    for name, seconds in times.items():
        print(f"- {name}: {seconds:.2f} s, {size / seconds:,.2f} MB/s")
    ratio = times["no split cache"] / times["kept"]
    print(f"kept passages are read back {ratio:,.0f}x faster than cut", flush=True)


# 3 and 4. A new query over a cached folder ---------------------------------------------


def prime(folder: Path) -> None:
    """The split cache and the embedding cache filled for ``folder`` as ``similar
    --passages`` fills them, with random vectors of minilm's shape."""
    from modernbert_cli import Embedder
    from modernbert_cli.embedder import chunks
    from modernbert_cli.passages import Splitter

    emb = Embedder("minilm", device="cpu", server=False)
    rng = np.random.default_rng(0)
    dimensions = 384

    def random_vectors(texts, prompt, role):
        vectors = rng.standard_normal((len(texts), dimensions), dtype=np.float32)
        return vectors, np.zeros(len(texts), dtype=bool)

    emb.encoder.compute_prompted = random_vectors  # type: ignore[method-assign]
    start = time.perf_counter()
    splitter = Splitter.for_embedder(emb, prompt=emb.prompt_text(role="document"))
    count = 0
    for chunk in chunks(splitter.passages([folder])):
        emb.embed([p.text for p in chunk], role="document")
        count += len(chunk)
    emb.close()
    print(
        f"primed {folder.name}: {_folder_mb(folder):.1f} MB, {count:,} passages "
        f"in {time.perf_counter() - start:.0f} s",
        flush=True,
    )


def queries(big: Path, small: Path, env: dict[str, str], repeats: int) -> None:
    common = ["-m", "minilm", "--device", "cpu", "-f", "jsonl", "-k", "10"]
    n = iter(range(10**6))

    def new() -> str:
        return f"where is the river crossing number {next(n)} {random.random():.6f}"

    def fixed(server: bool) -> tuple[float, int]:
        extra = [] if server else ["--no-cache"]
        return _run(["similar", new(), "y", *common, *extra], env)

    def folder(path: Path) -> tuple[float, int]:
        return _run(["similar", new(), "--passages", "-i", str(path), *common], env)

    def bare() -> tuple[float, int]:  # a cached text: no model, no server, no torch
        return _run(["embed", "y", "-m", "minilm", "--device", "cpu", "--no-server"], env)

    _run(["embed", "y", "-m", "minilm", "--device", "cpu", "--no-server"], env)
    folder(big)  # the page cache warm, as for a folder searched a moment ago
    results: dict[str, list[tuple[float, int]]] = {}
    for server in (False, True):
        if server:
            _run(["serve", "--detach", "-m", "minilm", "--device", "cpu"], env)
            fixed(True)
        mode = "warm server" if server else "no server"
        for _ in range(repeats):
            results.setdefault(f"fixed start-up ({mode})", []).append(fixed(server))
            results.setdefault(f"query over {_folder_mb(big):.0f} MB ({mode})", []).append(
                folder(big)
            )
            results.setdefault(f"query over {_folder_mb(small):.0f} MB ({mode})", []).append(
                folder(small)
            )
            if not server:
                results.setdefault("bare start-up (cached text, no model)", []).append(bare())
        _run(["serve", "stop", "--all"], env, check=False)
    print(f"\n3-4. Whole processes, {repeats} interleaved runs each, medians; a new query each")
    print("| command | s | peak RSS |")
    print("| --- | ---: | ---: |")
    medians = {}
    for name, runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        rss = max(r[1] for r in runs)
        medians[name] = (seconds, rss)
        print(f"| {name} | {seconds:.2f} | {rss / 1024:,.0f} MB |")
    size = f"{_folder_mb(big):.0f} MB"
    for mode in ("no server", "warm server"):
        query, base = (
            medians[f"query over {size} ({mode})"][0],
            medians[f"fixed start-up ({mode})"][0],
        )
        print(f"{mode}: query / fixed start-up = {query:.2f} / {base:.2f} = {query / base:.2f}x")
    small_size = f"{_folder_mb(small):.0f} MB"
    for mode in ("no server", "warm server"):
        rss_big = medians[f"query over {size} ({mode})"][1] / 1024
        rss_small = medians[f"query over {small_size} ({mode})"][1] / 1024
        print(f"peak RSS {size} vs {small_size} ({mode}): {rss_big:,.0f} vs {rss_small:,.0f} MB")


# Helpers ---------------------------------------------------------------------------------


def make_folder(root: Path, mb: float, seed: int) -> Path:
    """Files of about FILE_KB of prose-like lines in paragraphs, in a few subfolders."""
    rng = random.Random(seed)
    total = int(mb * (1 << 20))
    written = 0
    index = 0
    while written < total:
        path = root / f"part{index % 10}" / f"note{index:05}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = _lines(FILE_KB << 10, seed=rng.randrange(1 << 30))
        for at in range(8, len(lines), rng.randint(6, 12)):
            lines[at] = ""  # paragraphs
        data = "\n".join(lines) + "\n"
        path.write_text(data)
        written += len(data.encode())
        index += 1
    old = time.time() - 3600  # files written an hour ago: not racy (see split_cache)
    for path in root.rglob("*.md"):
        os.utime(path, (old, old))
    return root


def _lines(size: int, seed: int) -> list[str]:
    lines, total = [], 0
    for text in _texts(seed):
        lines.append(text)
        total += len(text) + 1
        if total >= size:
            return lines
    raise AssertionError("unreachable")


def _texts(seed: int):
    while True:
        yield from make_texts(500, 8, 60, seed=seed)
        seed += 1


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / (1 << 20)


def _run(args: list[str], env: dict[str, str], check: bool = True) -> tuple[float, int]:
    """Wall seconds and peak RSS (KB) of ``python -m modernbert_cli ARGS``.

    The RSS comes from /usr/bin/time: a child forked from this (large) process would
    report this process's RSS as its own peak, which survives exec.
    """
    with tempfile.TemporaryDirectory() as scratch:
        report, stderr = Path(scratch) / "rss", Path(scratch) / "stderr"
        command = ["/usr/bin/time", "-f", "%M", "-o", str(report)]
        start = time.perf_counter()
        with stderr.open("wb") as errors:  # a pipe could fill and stall the child
            done = subprocess.run(
                [*command, sys.executable, "-m", "modernbert_cli", *args],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
        elapsed = time.perf_counter() - start
        if check and done.returncode != 0:
            raise SystemExit(f"failed: {' '.join(args)}\n{stderr.read_text()}")
        rss = int(report.read_text().split()[-1]) if report.exists() else 0
    return elapsed, rss


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
