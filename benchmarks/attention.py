"""Windowed local attention against transformers' own, one layer and the whole model.

ModernBERT's local layers see 64 tokens either side; transformers runs them through
SDPA with an N×N band mask. ``modernbert_cli.attention`` runs them block by block.
This times, in the same run:

- one local layer of ModernBERT-base's shape (12 heads of 64) at several lengths:
  SDPA with the band mask (as transformers runs it) against the windowed function;
- the engine on long documents with windowed attention against the same engine with
  transformers' own (same batches, same everything else).

    python benchmarks/attention.py            # CPU, about 3 minutes
    python benchmarks/attention.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import host  # noqa: E402
from benchmarks.texts import make_texts  # noqa: E402
from benchmarks.throughput import _model_path, _sync  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", default="512,1024,2048,4096,8192")
    parser.add_argument(
        "--long", type=int, default=4, help="long documents for the model (0: layers only)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(host.describe())

    import torch

    from modernbert_cli import attention

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    module = SimpleNamespace(config=SimpleNamespace(sliding_window=64))
    print(f"{'tokens':>7} {'band-mask SDPA ms':>18} {'windowed ms':>12} {'speed-up':>9}")
    for length in map(int, args.lengths.split(",")):
        q, k, v = (torch.randn(1, 12, length, 64, device=args.device) for _ in range(3))
        positions = torch.arange(length, device=args.device)
        band = ((positions[:, None] - positions[None, :]).abs() <= 64)[None, None]

        def stock(q=q, k=k, v=v, band=band):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=band)

        # Built once per forward pass, for all local layers, in both cases.
        mask = attention.layer_mask(None, local_size=64, q_length=length, device=args.device)

        def windowed(q=q, k=k, v=v, mask=mask):
            return attention.windowed_attention(module, q, k, v, mask, sliding_window=65)

        with torch.inference_mode():
            a, b = _time(stock, args), _time(windowed, args)
        print(f"{length:>7} {a * 1e3:>18.1f} {b * 1e3:>12.1f} {a / b:>8.2f}x")

    if args.long:
        _engine(args)


def _engine(args) -> None:
    """The same engine with transformers' attention and with windowed attention."""
    from sentence_transformers import SentenceTransformer

    from modernbert_cli import attention
    from modernbert_cli.engine import Engine
    from modernbert_cli.model import quiet_libraries

    quiet_libraries()
    path = _model_path("modernbert-base")
    texts = make_texts(args.long, 1000, 6000, seed=2)
    windowed_engine = Engine(SentenceTransformer(path, device=args.device), [args.device])
    real_install = attention.install
    attention.install = lambda model: False  # the same engine, transformers' attention
    try:
        stock_engine = Engine(SentenceTransformer(path, device=args.device), [args.device])
    finally:
        attention.install = real_install
    assert windowed_engine.windowed and not stock_engine.windowed
    tokens = int(windowed_engine.token_counts(texts).tokens.clip(max=8192).sum())
    times = {"transformers' attention": [], "windowed attention": []}
    for _ in range(args.repeats):  # interleaved
        for name, engine in zip(times, (stock_engine, windowed_engine), strict=True):
            start = time.perf_counter()
            engine.encode(texts)
            _sync(args.device)
            times[name].append(time.perf_counter() - start)
    print(f"\nModernBERT-base engine, {len(texts)} documents of 1k-6k words, {tokens} tokens")
    base = statistics.median(times["transformers' attention"])
    for name, runs in times.items():
        seconds = statistics.median(runs)
        print(f"{name:<24} {tokens / seconds:>8.0f} tokens/s {base / seconds:>6.2f}x")


def _time(function, args) -> float:
    function()
    _sync(args.device)
    runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        function()
        _sync(args.device)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


if __name__ == "__main__":
    main()
