"""One table of every CPU path against ``SentenceTransformer.encode`` fp32, from the logs.

``throughput.py`` (the engine in-process, and ``modernbert-cli embed`` whole process)
and ``peers.py`` (sentence-transformers' ONNX and OpenVINO backends, in their own
environment) each end with a ``RESULTS`` line; this gathers them from the logs given
and prints one table. Each ratio is to ``encode`` fp32 of the same environment, in the
same run, on the same texts (``make_texts(96, 10, 120, seed=1)`` in-process; 320 of
them whole process), so ratios from the two environments can stand side by side.

    python benchmarks/throughput.py --long 0 > throughput.log
    python benchmarks/peers.py > peers.log
    python benchmarks/cpu_table.py throughput.log peers.log
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import host  # noqa: E402

_ORDER = {"whole process": 0, "in-process": 1}


def main(logs: list[str]) -> None:
    rows = []
    for log in logs:
        for line in Path(log).read_text(encoding="utf-8").splitlines():
            if line.startswith(host.RESULTS + " "):
                rows += [dict(row, log=Path(log).name) for row in json.loads(line.split(" ", 1)[1])]
    if not rows:
        raise SystemExit(f"no {host.RESULTS} line in {', '.join(logs)}")
    rows = [r for r in rows if r["texts"].startswith("short")]
    rows = [r for r in rows if not r["path"].startswith("st encode")]  # the 1.00x reference
    rows.sort(key=lambda r: (r["model"], _ORDER.get(r["kind"], 2), -r["ratio"]))
    head = "| model | path | measured | ratio to st encode fp32 | cosine to fp32 (mean / min) |"
    print(f"{head} log |")
    print("| --- | --- | --- | ---: | --- | --- |")
    for r in rows:
        cos = "" if not r["cos"] else f"{r['cos'][0]:.6f} / {r['cos'][1]:.6f}"
        print(
            f"| {r['model']} | {r['path']} | {r['kind']} ({r['texts']}) | "
            f"{r['ratio']:.2f}x | {cos} | {r['log']} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:] or sys.exit(__doc__))
