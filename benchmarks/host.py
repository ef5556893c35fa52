"""What a benchmark ran on, printed beside its figures: CPU, the flags int8 depends on, load.

Whole-process figures depend on how busy the machine was, and int8 speed on the CPU's
instructions (``avx512_vnni``/``avx_vnni``: int8 dot products in one instruction;
without them fbgemm's int8 kernels fall back to AVX2 multiply-adds), so every
benchmark says both.

>>> print(describe())  # doctest: +SKIP
AMD EPYC, 2 cores; avx2 fma (no avx512f, avx512_vnni, avx_vnni, amx_int8); load 4.1 3.9 3.5
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# Marks the line of a benchmark's results as JSON, which cpu_table.py gathers.
RESULTS = "RESULTS"
# The instruction sets that decide dense fp32 and int8 speed on x86.
FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu() -> tuple[str, set[str]]:
    """The CPU's model name and its flags (from /proc/cpuinfo; elsewhere, what platform says)."""
    try:
        text = open("/proc/cpuinfo").read()  # noqa: SIM115 (read at once)
    except OSError:
        return platform.processor() or platform.machine(), set()
    name, flags = platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name == platform.machine():
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return name, flags


def load() -> str:
    """The 1, 5 and 15-minute load averages."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def installed_env(env: dict[str, str], folder: Path) -> dict[str, str]:
    """``env`` for child commands that run our modules from bytecode, as pip installs them.

    Where ``PYTHONDONTWRITEBYTECODE`` is set (this machine sets it), every start would
    compile the package anew: a cost no installed user pays. The bytecode goes to
    ``folder``, not into the tree.
    """
    env = {**env, "PYTHONPYCACHEPREFIX": str(folder)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def command_env(work: Path) -> dict[str, str]:
    """The environment of the commands a benchmark times: offline, from bytecode
    (:func:`installed_env`), with a cache folder (``work/cache``) and a runtime folder
    (``work/run``: its servers are this run's alone, ``serve stop --all`` stops no other)."""
    runtime = work / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "MODERNBERT_CLI_CACHE_DIR": str(work / "cache"),
        "XDG_RUNTIME_DIR": str(runtime),
    }
    return installed_env(env, work / "bytecode")


def describe() -> str:
    """One line: CPU model, cores, which of :data:`FLAGS` it has and lacks, load now."""
    name, flags = cpu()
    has = [f for f in FLAGS if f in flags]
    lacks = [f for f in FLAGS if f not in flags]
    parts = " ".join(has) + (f" (no {', '.join(lacks)})" if lacks else "")
    return f"{name}, {os.cpu_count()} cores; {parts}; load {load()}"
