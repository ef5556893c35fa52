"""`serve --http` as its users call it: the official `openai` SDK against a real server.

One server process (``serve -m TINY --http 127.0.0.1:PORT``, with an API key from the
environment) serves every test of this module; the numbers are compared with the same
model run here.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from modernbert_cli import client
from modernbert_cli import model as model_loading
from modernbert_cli.encoder import Encoder

openai = pytest.importorskip("openai")

KEY = "sk-test-key"
TEXTS = ["a cat sat on the mat", "the stock market fell sharply", "volcanoes erupt"]


@dataclass
class Api:
    url: str
    name: str  # the served model's id
    log: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str, key: str | None = KEY) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def api(tiny_model: str) -> Iterator[Api]:
    """A real ``serve --http`` process for this module, its key from the environment."""
    runtime = Path(tempfile.mkdtemp(prefix="mbo"))
    port = free_port()
    log = runtime / "server.log"
    env = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(runtime),
        "MODERNBERT_CLI_API_KEY": KEY,
        "MODERNBERT_CLI_CACHE_DIR": str(runtime / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    args = ["serve", "-m", tiny_model, "--device", "cpu", "--http", f"127.0.0.1:{port}"]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "modernbert_cli", *args],
            stdout=out,
            stderr=out,
            cwd=ROOT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if get(f"{url}/models")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        yield Api(url, model_loading.canonical_name(tiny_model), log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        finally:
            process.kill()
    text = log.read_text()
    shutil.rmtree(runtime, ignore_errors=True)
    assert "Traceback" not in text, text


@pytest.fixture(scope="module")
def reference(tiny_model: str) -> Encoder:
    return Encoder(model_loading.load(model_loading.ModelSpec(tiny_model, device="cpu")), "tiny")


@pytest.fixture
def sdk(api: Api):
    return openai.OpenAI(base_url=api.url, api_key=KEY, max_retries=0)


def vectors(response) -> np.ndarray:
    return np.array([item.embedding for item in response.data], dtype=np.float32)


def test_the_sdk_default_base64_and_floats_give_the_models_vectors(sdk, api, reference):
    expected, _ = reference.compute_prompted(TEXTS, "", None)
    response = sdk.embeddings.create(model=api.name, input=TEXTS)  # base64: the SDK's default
    assert response.model == api.name
    assert [item.index for item in response.data] == [0, 1, 2]
    np.testing.assert_allclose(vectors(response), expected, atol=1e-6)
    floats = sdk.embeddings.create(model=api.name, input=TEXTS, encoding_format="float")
    np.testing.assert_array_equal(vectors(floats), vectors(response))

    # On the wire: base64 of little-endian float32, as OpenAI sends it.
    raw = sdk.embeddings.with_raw_response.create(model=api.name, input=TEXTS[0]).http_response
    wire = raw.json()["data"][0]["embedding"]
    assert isinstance(wire, str)
    np.testing.assert_array_equal(
        np.frombuffer(base64.b64decode(wire), "<f4"), vectors(response)[0]
    )


def test_usage_counts_the_models_tokens(sdk, api, reference):
    tokenizer = reference.model.tokenizer
    wanted = sum(len(tokenizer(text)["input_ids"]) for text in TEXTS)  # [CLS] … [SEP] each
    usage = sdk.embeddings.create(model=api.name, input=TEXTS).usage
    assert usage.prompt_tokens == usage.total_tokens == wanted
    assert wanted != sum(len(text.split()) for text in TEXTS)


def test_dimensions_truncate_and_renormalise(sdk, api, reference):
    expected, _ = reference.compute_prompted(TEXTS, "", None)
    short = expected[:, :8] / np.linalg.norm(expected[:, :8], axis=1, keepdims=True)
    got = vectors(sdk.embeddings.create(model=api.name, input=TEXTS, dimensions=8))
    assert got.shape == (3, 8)
    np.testing.assert_allclose(got, short, atol=1e-6)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.embeddings.create(model=api.name, input=TEXTS, dimensions=expected.shape[1] + 1)
    assert refused.value.body["param"] == "dimensions"
    assert f"from 1 to {expected.shape[1]}" in refused.value.body["message"]


def test_model_names_are_checked(sdk, api):
    with pytest.raises(openai.NotFoundError) as refused:
        sdk.embeddings.create(model="text-embedding-3-small", input="a")
    assert refused.value.code == "model_not_found"
    assert set(refused.value.body) == {"message", "type", "param", "code"}
    assert [m.id for m in sdk.models.list()] == [api.name]
    assert sdk.models.retrieve(api.name).id == api.name  # an id with slashes, percent-encoded
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("text-embedding-3-small")


@pytest.mark.parametrize("tokens", [[101, 7592, 102], [[101, 7592, 102], [101, 102]]])
def test_token_id_input_is_refused_clearly(sdk, api, tokens):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.embeddings.create(model=api.name, input=tokens)
    assert refused.value.body["param"] == "input"
    assert "send the text itself" in refused.value.body["message"]


def test_limits_answer_413(sdk, api):
    for big in (["a"] * (client.MAX_INPUTS + 1), "a" * (client.MAX_INPUT_CHARS + 1)):
        with pytest.raises(openai.APIStatusError) as refused:
            sdk.embeddings.create(model=api.name, input=big)
        assert refused.value.status_code == 413
        assert refused.value.body["code"] == "request_too_large"


def test_the_api_key_is_required(api):
    wrong = openai.OpenAI(base_url=api.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.embeddings.create(model=api.name, input="a")
    assert refused.value.code == "invalid_api_key"
    status, body = get(f"{api.url}/models", key=None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
