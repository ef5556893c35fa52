"""A warm server's repeat folder search, in-process: walked each time against a walk
remembered (``split_cache.Snapshots``), on a generated folder with primed caches.

The folder and caches are made as ``passages_speed.py`` makes them (random vectors of
minilm's shape); one :class:`~modernbert_cli.server.Backend` of minilm answers
``search`` requests as a client's ``similar "<new query>" --passages -i FOLDER`` sends
them, a new query each time (embedded by the model). Runs alternate between the two
ways; medians and minima in ms.

    python benchmarks/snapshot_speed.py [--mb 5 --file-kb 5 --repeats 15]

``--profile`` adds cProfile of one remembered search (of a walked one with
``PROFILE_WALKED=1``; ``SORT=tottime``, ``LINES_SHOWN=30`` shape the listing). Run from
an older tree (the script copied in), it measures that code's walked search alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import host, passages_speed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=5.0)
    parser.add_argument("--file-kb", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--profile", action="store_true", help="cProfile one remembered search")
    args = parser.parse_args()
    print(host.describe())
    work = Path(tempfile.mkdtemp(prefix="snapshot-speed-"))
    os.environ["MODERNBERT_CLI_CACHE_DIR"] = str(work / "cache")
    passages_speed.FILE_KB = args.file_kb
    folder = passages_speed.make_folder(work / "folder", args.mb, seed=1)
    passages_speed.prime(folder)

    from modernbert_cli import Embedder, split_cache
    from modernbert_cli.cache import default_path
    from modernbert_cli.passages import split_bound
    from modernbert_cli.server import Backend

    embedder = Embedder("minilm", device="cpu", server=False, cache=False)
    embedder.load()
    backend = Backend(embedder.encoder, "bench", 600.0)
    files = embedder.encoder.files
    count = iter(range(10**6))

    def search() -> float:
        message = {
            "queries": [f"where is the river crossing number {next(count)}"],
            "names": [[str(folder), str(folder)]],
            "passage_tokens": None,
            "overlap": None,
            "limit": embedder.max_seq_length or None,
            "prompt": embedder.prompt_text(role="document"),
            "directory": str(files.directory),
            "max_line_bytes": 1 << 20,
            "top_k": 10,
            "threshold": None,
            "metric": "cosine",
            "per_document": False,
            "cache": {"path": str(default_path()), "max_bytes": 2 << 30},
            "split_cache": {
                "path": str(split_cache.default_path()),
                "max_bytes": split_bound(2048),
            },
        }
        start = time.perf_counter()
        reply = backend.search(message)
        elapsed = time.perf_counter() - start
        assert "redo" not in reply, reply
        return elapsed * 1000

    for _ in range(3):  # blocks held, entries remembered, the walk remembered
        search()
    times: dict[str, list[float]] = {"walked": []}
    snapshots = getattr(split_cache, "Snapshots", None)  # None: code from before them
    if snapshots is not None:
        remembered = snapshots.get
        assert len(backend.snapshots or ()) == 1, "the walk was not remembered"
        times["remembered"] = []
    for _ in range(args.repeats):
        for way in times:
            if snapshots is not None:
                snapshots.get = remembered if way == "remembered" else lambda *a: None
            times[way].append(search())
    if snapshots is not None:
        snapshots.get = remembered
    load = os.getloadavg()
    print(f"{args.mb} MB in files of {args.file_kb} KB, {args.repeats} repeats, load {load}")
    for way, ms in times.items():
        print(f"  {way:>10}: median {statistics.median(ms):.1f} ms, min {min(ms):.1f} ms")
    if args.profile:
        import cProfile
        import pstats

        if snapshots is not None and os.environ.get("PROFILE_WALKED"):
            snapshots.get = lambda *a: None
        profile = cProfile.Profile()
        profile.runcall(search)
        stats = pstats.Stats(profile).sort_stats(os.environ.get("SORT", "cumulative"))
        stats.print_stats(int(os.environ.get("LINES_SHOWN", "30")))


if __name__ == "__main__":
    main()
