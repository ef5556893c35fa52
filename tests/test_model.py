"""Choosing and loading the model: the default, aliases, paths, the Hugging Face cache,
devices, and every way a model can be missing (one line, exit 4, fast)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
from conftest import ROOT, TINY_MAX_SEQ_LENGTH

from modernbert_cli import model
from modernbert_cli.errors import ExitStatus, ModelError

LARGE = "joe32140/ModernBERT-large-msmarco"
REMEDIES = ("--model PATH", "--model minilm", "HF_HOME")
LONG_TEXT = " ".join(["volcano"] * 600)  # far beyond the tiny model's 128 tokens


@pytest.fixture
def empty_hub_cache(monkeypatch: pytest.MonkeyPatch, offline_env: Path) -> Path:
    """In-process, huggingface_hub read HF_HOME at import: point its cache at the empty one."""
    hub = offline_env / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    return hub


@pytest.fixture
def load_calls(monkeypatch: pytest.MonkeyPatch) -> list[model.ModelSpec]:
    """The real ``model.load``, with every call recorded."""
    calls: list[model.ModelSpec] = []
    real_load = model.load

    def load(spec: model.ModelSpec):
        calls.append(spec)
        return real_load(spec)

    monkeypatch.setattr(model, "load", load)
    return calls


def jsonl(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def assert_model_error(stderr: str, name: str) -> None:
    """One line on stderr naming the model and every remedy, no traceback."""
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    assert stderr.startswith("modernbert-cli: error: ")
    assert f"'{name}'" in stderr
    for remedy in REMEDIES:
        assert remedy in stderr, remedy
    assert "Traceback" not in stderr


# --- which model -------------------------------------------------------------------------


def test_default_model_and_aliases() -> None:
    assert model.DEFAULT_MODEL == "joe32140/ModernBERT-base-msmarco"
    assert model.MODEL_ENV == "MODERNBERT_CLI_MODEL"
    assert model.resolve("modernbert-base").location == model.DEFAULT_MODEL
    assert model.resolve("modernbert-large").location == LARGE
    assert not model.resolve("modernbert-large").is_local


@pytest.mark.parametrize("command", [["embed", "hello"], ["similar", "q", "a"], ["matrix", "a"]])
def test_every_command_defaults_to_modernbert_base(
    cli, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    asked: list[model.ModelSpec] = []

    def load(spec: model.ModelSpec):
        asked.append(spec)
        raise ModelError("stop here")

    monkeypatch.setattr(model, "load", load)
    result = cli(*command)
    assert result.code == ExitStatus.MODEL
    assert [spec.name for spec in asked] == ["joe32140/ModernBERT-base-msmarco"]
    assert asked[0].device == "auto"
    assert asked[0].trust_remote_code is False


@pytest.mark.parametrize("flag", ["-m", "--model"])
def test_model_option_takes_a_local_directory(cli, tiny_model: str, flag: str) -> None:
    result = cli("embed", "hello", flag, tiny_model)
    assert result.code == 0, result.stderr
    (record,) = jsonl(result.stdout)
    assert record["model"] == str(Path(tiny_model).resolve())
    assert len(record["embedding"]) == 32


def test_model_from_the_environment(cli, monkeypatch: pytest.MonkeyPatch, tiny_model: str) -> None:
    monkeypatch.setenv("MODERNBERT_CLI_MODEL", tiny_model)
    result = cli("embed", "hello")
    assert result.code == 0, result.stderr
    assert jsonl(result.stdout)[0]["model"] == str(Path(tiny_model).resolve())


def test_model_option_wins_over_the_environment(
    cli, monkeypatch: pytest.MonkeyPatch, tiny_model: str
) -> None:
    monkeypatch.setenv("MODERNBERT_CLI_MODEL", "./no-such-model-dir")
    result = cli("embed", "hello", "-m", tiny_model)
    assert result.code == 0, result.stderr


def test_minilm_alias_loads_offline(cli, minilm_path: str, empty_hub_cache: Path) -> None:
    assert model.resolve("minilm").location == minilm_path
    result = cli("embed", "hello", "-m", "minilm")
    assert result.code == 0, result.stderr
    (record,) = jsonl(result.stdout)
    assert record["model"] == "minilm"
    assert len(record["embedding"]) == 384


@pytest.mark.parametrize(
    ("alias", "repo"), [("modernbert-large", LARGE), ("modernbert-base", model.DEFAULT_MODEL)]
)
def test_hub_aliases_offline_fail_with_remedies(
    cli, empty_hub_cache: Path, alias: str, repo: str
) -> None:
    result = cli("embed", "hello", "-m", alias)
    assert result.code == ExitStatus.MODEL
    assert result.stdout == ""
    assert_model_error(result.stderr, alias)
    assert f"fetch '{repo}'" in result.stderr  # the hub id to fetch, not the alias


# --- model unavailable: one line, exit 4, fast, in a real process -----------------------

# Runs the CLI in a real process and reports what would make it slow: connections it
# tried (socket.create_connection, as huggingface_hub's requests do too) and the heavy
# libraries it imported (loading a model, and with it the hub's retries, needs them).
UNAVAILABLE_PROBE = """
import json, socket, sys
connections = []
real = socket.create_connection

def create_connection(address, timeout=None, *args, **kwargs):
    connections.append([address[0], address[1], timeout])
    return real(address, timeout, *args, **kwargs)

socket.create_connection = create_connection
from modernbert_cli.cli import run

code = int(run(json.loads(sys.argv[1])))
heavy = sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules)
with open(sys.argv[2], "w") as report:
    json.dump({"code": code, "connections": connections, "heavy": heavy}, report)
"""


@pytest.mark.parametrize(
    "case", ["offline-empty-cache", "hub-unreachable", "no-such-path", "not-a-model", "a-file"]
)
def test_unavailable_model_fails_fast_with_remedies(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, case: str
) -> None:
    """What makes it fast, not how fast it was: no torch, no model load, no connection
    but (with the hub allowed) one probe with a short timeout, never the hub's retries."""
    env = {}
    name = model.DEFAULT_MODEL
    if case == "hub-unreachable":
        monkeypatch.delenv("HF_HUB_OFFLINE")
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # the discard port: nothing listens
    elif case == "no-such-path":
        name = "./no-such-model-dir"
    elif case == "not-a-model":
        (tmp_path / "notes.txt").write_text("not a model\n")
        name = str(tmp_path)
    elif case == "a-file":
        name = str(tmp_path / "model.bin")
        Path(name).write_bytes(b"\0" * 64)
    args = ["embed", "hello"]  # the default model, unless a path is the case
    if name != model.DEFAULT_MODEL:
        args += ["--model", name]
    report_file = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-c", UNAVAILABLE_PROBE, json.dumps(args), str(report_file)],
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=300,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    report = json.loads(report_file.read_text())
    assert report["code"] == ExitStatus.MODEL == 4, stderr
    assert result.stdout == b""
    assert_model_error(stderr, name)
    assert report["heavy"] == []
    if case == "hub-unreachable":
        assert report["connections"] == [["127.0.0.1", 9, model._HUB_PROBE_TIMEOUT_S]]
        assert model._HUB_PROBE_TIMEOUT_S <= 5
    else:
        assert report["connections"] == []


def test_hub_id_in_the_cache_loads_without_network(
    cli, monkeypatch: pytest.MonkeyPatch, empty_hub_cache: Path, tiny_model: str
) -> None:
    """A hub id whose files are in $HF_HOME/hub loads with the hub allowed but never
    asked: not one connection is tried (in-process, so that every one is seen)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = empty_hub_cache / "models--testorg--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_model, repo / "snapshots" / commit)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    tried: list[object] = []

    def no_network(*args: object, **kwargs: object) -> None:
        tried.append(args)
        raise OSError("this test allows no connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    result = cli("embed", "hello", "-m", "testorg/tiny")
    assert result.code == 0, result.stderr
    assert tried == []
    (cached,) = jsonl(result.stdout)
    assert cached["model"] == "testorg/tiny"

    (local,) = jsonl(cli("embed", "hello", "-m", tiny_model).stdout)
    np.testing.assert_allclose(cached["embedding"], local["embedding"], rtol=1e-5, atol=1e-6)


# --- devices and remote code -------------------------------------------------------------


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_device_auto_and_cpu_work(cli, tiny_model: str, load_calls: list, device: str) -> None:
    result = cli("embed", "hello", "-m", tiny_model, "--device", device)
    assert result.code == 0, result.stderr
    assert [spec.device for spec in load_calls] == [device]


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_unavailable_device_is_a_usage_error(cli, tiny_model: str, device: str) -> None:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    result = cli("embed", "hello", "-m", tiny_model, "--device", device)
    assert result.code == ExitStatus.USAGE
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"modernbert-cli: error: --device {device}: ")
    assert "not available" in result.stderr or "no CUDA GPU" in result.stderr
    assert "(try --device=cpu)" in result.stderr


def test_unknown_device_is_a_usage_error(cli, tiny_model: str) -> None:
    result = cli("embed", "hello", "-m", tiny_model, "--device", "tpu")
    assert result.code == ExitStatus.USAGE
    assert result.stderr.count("\n") == 1
    assert "--device" in result.stderr and "tpu" in result.stderr


def test_trust_remote_code_is_off_unless_asked(
    cli, monkeypatch: pytest.MonkeyPatch, tiny_model: str
) -> None:
    from sentence_transformers import SentenceTransformer

    seen: list[object] = []
    real_init = SentenceTransformer.__init__

    def init(self, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code", "<not passed>"))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "__init__", init)
    assert cli("embed", "hello", "-m", tiny_model).code == 0
    assert seen and all(value is False for value in seen), seen
    seen.clear()
    assert cli("embed", "hello", "-m", tiny_model, "--trust-remote-code").code == 0
    assert seen and all(value is True for value in seen), seen


# --- loaded once, and only for valid input -----------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["embed", "a cat", "a dog"],
        ["similar", "a cat", "a dog", "a car", "a tree"],
        ["similar", "--queries", "{queries}", "-i", "{corpus}"],
        ["matrix", "a cat", "a dog", "a car"],
        ["matrix", "-i", "{queries}", "--against", "{corpus}"],
        ["matrix", "--pairwise", "-i", "{queries}", "--against", "{queries}"],
    ],
)
def test_model_is_loaded_once(
    cli, tmp_path: Path, tiny_model: str, load_calls: list, args: list[str]
) -> None:
    queries = tmp_path / "queries.txt"
    queries.write_text("a cat\na dog\n")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a car\na tree\na kitten\n")
    args = [arg.format(queries=queries, corpus=corpus) for arg in args]
    result = cli(*args, "-m", tiny_model)
    assert result.code == 0, result.stderr
    assert len(load_calls) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["embed", "-i", "{missing}"],
        ["embed", "-i", "{empty}"],
        ["embed", "  "],
        ["similar", "a cat", "-i", "{missing}"],
        ["similar", "--queries", "{missing}", "a dog"],
        ["similar", "a cat", "-i", "{empty}"],
        ["matrix", "a cat", "--against", "{missing}"],
        ["matrix", "-i", "{missing}"],
        ["matrix", "-i", "{empty}"],
    ],
)
def test_model_is_not_loaded_for_bad_input(
    cli, tmp_path: Path, tiny_model: str, load_calls: list, args: list[str]
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    args = [arg.format(missing=tmp_path / "missing.txt", empty=empty) for arg in args]
    result = cli(*args, "-m", tiny_model)
    assert result.code == ExitStatus.INPUT, result.stderr
    assert load_calls == []
    assert result.stderr.count("\n") == 1


def test_bad_input_beats_a_missing_model(cli, tmp_path: Path, load_calls: list) -> None:
    """The input is checked first: its error is the one reported, not the model's."""
    result = cli("embed", "-i", str(tmp_path / "missing.txt"), "-m", "./no-such-model-dir")
    assert result.code == ExitStatus.INPUT
    assert load_calls == []


# --- stdout is data; -q silences stderr --------------------------------------------------


def test_stdout_is_pure_jsonl(cli, tiny_model: str) -> None:
    result = cli("embed", "a cat", "a dog", LONG_TEXT, "-m", tiny_model)
    assert result.code == 0, result.stderr
    records = jsonl(result.stdout)
    assert [r["text"] for r in records] == ["a cat", "a dog", LONG_TEXT]
    assert result.stdout.endswith("\n")
    assert "truncated" in result.stderr  # the note goes to stderr, never stdout


def test_quiet_leaves_stderr_empty(cli, tiny_model: str) -> None:
    loud = cli("embed", LONG_TEXT, "-m", tiny_model)
    assert loud.code == 0
    assert f"longer than {TINY_MAX_SEQ_LENGTH} tokens" in loud.stderr
    for flag in ("-q", "--quiet"):
        quiet = cli("embed", LONG_TEXT, "-m", tiny_model, flag)
        assert quiet.code == 0
        assert quiet.stderr == ""
        assert quiet.stdout == loud.stdout


LOAD_THEN_CHECK = """
import json, sys
{first}
from modernbert_cli.model import ModelSpec, load
load(ModelSpec(sys.argv[1], device="cpu"))
after_load = {{
    name: name in sys.modules for name in ("sklearn", "scipy.optimize", "scipy.sparse")
}}
import numpy as np
import torch
from sentence_transformers.util import similarity, to_scipy_coo
from transformers.loss import loss_for_object_detection
distances = similarity.pairwise_distances(np.array([[0.0, 0.0], [3.0, 4.0]]))
assignment = loss_for_object_detection.linear_sum_assignment(np.eye(3))
sparse = to_scipy_coo(torch.eye(2).to_sparse()).toarray()
import sklearn.metrics
print(json.dumps({{
    "after_load": after_load,
    "distances": distances.tolist(),
    "assignment": [a.tolist() for a in assignment],
    "sparse": sparse.tolist(),
    "same": similarity.pairwise_distances is sklearn.metrics.pairwise_distances,
    "real": type(sys.modules["sklearn"]).__name__ == "module"
    and hasattr(sys.modules["sklearn"], "__version__"),
}}))
"""


def _python_json(script: str, *args: str) -> dict:
    """What ``script``, run by a fresh Python offline, printed as JSON."""
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


@pytest.mark.parametrize("first", ["", "import sklearn.metrics"])
def test_loading_imports_neither_scikit_learn_nor_scipy(minilm_path, first):
    """2.5 s of a 10 s start-up, for names the tool never calls; they work when called."""
    seen = _python_json(LOAD_THEN_CHECK.format(first=first), minilm_path)

    # Imported before the model (it imports SciPy's optimizers too): left as it was.
    assert seen["after_load"] == dict.fromkeys(
        ("sklearn", "scipy.optimize", "scipy.sparse"), bool(first)
    )
    assert seen["same"] is bool(first)
    assert seen["real"] is True  # afterwards, `import sklearn` is the real one
    assert seen["distances"] == [[0.0, 5.0], [5.0, 0.0]]
    assert seen["assignment"] == [[0, 1, 2], [2, 0, 1]]
    assert seen["sparse"] == [[1.0, 0.0], [0.0, 1.0]]


SCAN_THEN_LOAD = """
import json, sys
import transformers
from transformers.utils import import_utils
scan = import_utils.create_import_structure_from_path
before = scan.cache_info()
from modernbert_cli.model import ModelSpec, load
model = load(ModelSpec(sys.argv[1], device="cpu"))
after = scan.cache_info()
print(json.dumps({
    "folders_scanned": after.misses - before.misses,
    "reused": after.hits - before.hits,
    "restored": import_utils.create_import_structure_from_path is scan,
    "dimension": model.get_sentence_embedding_dimension(),
}))
"""


def test_loading_scans_transformers_model_folders_once(minilm_path):
    """``import transformers`` scans its ~560 model folders; ``transformers.models`` (0.5 s)
    takes that scan from transformers' own cache instead of scanning them all again."""
    seen = _python_json(SCAN_THEN_LOAD, minilm_path)
    assert seen["reused"] >= 1
    assert seen["folders_scanned"] < 100  # a few models' own folders, not all of them again
    assert seen["restored"] is True
    assert seen["dimension"] == 384
