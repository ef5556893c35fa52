"""The library: ``from modernbert_cli import Embedder``, the core every command calls.

Its numbers are sentence-transformers' own and the command line's; importing it and
constructing an Embedder cost no torch; the model loads once, on first need.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, SAMPLES

from modernbert_cli import Embedder, Settings
from modernbert_cli import model as model_loading
from modernbert_cli.errors import ModelError, SettingError
from modernbert_cli.settings import OPTIONS, flag

HAYDEN = [line for line in (SAMPLES / "hayden.txt").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    embedder = Embedder("minilm", device="cpu", cache=False, server=False)
    yield embedder
    embedder.close()


def test_import_and_construct_import_no_torch(tiny_model: str) -> None:
    probe = (
        "import sys, json\n"
        "from modernbert_cli import Embedder\n"
        f"emb = Embedder({tiny_model!r}, device='cpu')\n"
        "emb.vector_settings(); emb.server_key()\n"
        "heavy = ('torch', 'transformers', 'sentence_transformers', 'numpy')\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, cwd=ROOT, timeout=120, check=True
    )
    assert json.loads(result.stdout) == []


def test_embed_equals_sentence_transformers(minilm: Embedder, st_minilm) -> None:
    vectors = minilm.embed(HAYDEN)
    expected = st_minilm.encode(HAYDEN, convert_to_numpy=True)
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(HAYDEN), 384)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert minilm.dimensions == 384
    assert minilm.max_seq_length == 256


def test_embed_options(minilm: Embedder) -> None:
    raw = minilm.embed(HAYDEN)
    cut = minilm.embed(HAYDEN, truncate_dim=64, normalize=True)
    assert cut.shape == (len(HAYDEN), 64)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-5)
    expected = raw[:, :64] / np.linalg.norm(raw[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, expected, atol=1e-5)
    assert minilm.embed(HAYDEN, precision="binary").dtype == np.int8
    prompted = minilm.embed(["hayden"], prompt="query: ")
    np.testing.assert_allclose(prompted, minilm.embed(["query: hayden"]), atol=1e-5)


def test_similar_ranks_the_answer_first(minilm: Embedder) -> None:
    hits = minilm.similar("what county is hayden in", HAYDEN[1:], top_k=2)
    assert [h.rank for h in hits] == [1, 2]
    assert "Kootenai County" in hits[0].text
    assert hits[0].index == 0
    assert hits[0].score > hits[1].score
    assert hits[0].source is None  # plain strings carry no source


def test_similar_many_streams_and_keeps_sources(minilm: Embedder, monkeypatch) -> None:
    from modernbert_cli import embedder as embedder_module
    from modernbert_cli.inputs import Text

    monkeypatch.setattr(embedder_module, "CHUNK_TEXTS", 2)  # the corpus in chunks of 2
    corpus = (Text(text, f"hayden.txt:{n}") for n, text in enumerate(HAYDEN, 1))
    [hits] = minilm.similar_many(["what county is hayden in"], corpus, top_k=None)
    assert len(hits) == len(HAYDEN)
    assert hits[0].source == "hayden.txt:1"  # the query itself is in the corpus
    assert hits[1].source == "hayden.txt:2"
    assert hits[-1].text == "organization name"


def test_matrix_and_pairwise(minilm: Embedder, st_minilm) -> None:
    square = minilm.matrix(HAYDEN)
    assert square.shape == (4, 4)
    np.testing.assert_allclose(np.diag(square), 1.0, atol=1e-5)
    np.testing.assert_allclose(square, square.T, atol=1e-6)
    expected = st_minilm.similarity(
        st_minilm.encode(HAYDEN[:2]), st_minilm.encode(HAYDEN[2:])
    ).numpy()
    np.testing.assert_allclose(minilm.matrix(HAYDEN[:2], HAYDEN[2:]), expected, atol=1e-5)
    pairs = minilm.pairwise(HAYDEN[:2], HAYDEN[2:])
    np.testing.assert_allclose(pairs, np.diag(expected), atol=1e-5)
    dots = minilm.matrix(HAYDEN, metric="dot")
    assert dots.shape == (4, 4)
    with pytest.raises(SettingError) as error:
        minilm.pairwise(HAYDEN[:2], HAYDEN[:3])
    assert error.value.setting == "pairwise"


def test_the_model_loads_once_and_on_first_need(tiny_model: str, monkeypatch) -> None:
    loads = []
    real = model_loading.load
    monkeypatch.setattr(model_loading, "load", lambda spec: loads.append(spec) or real(spec))
    with Embedder(tiny_model, device="cpu", server=False) as embedder:
        assert loads == []  # constructing loads nothing
        first = embedder.embed(["a cat", "a dog"])
        again = embedder.embed(["a cat", "a bird"])
        embedder.matrix(["x", "y"])
    assert len(loads) == 1
    np.testing.assert_allclose(first[0], again[0], atol=1e-6)
    # A second Embedder finds every text in the cache: no load at all.
    with Embedder(tiny_model, device="cpu", server=False) as cached:
        np.testing.assert_array_equal(cached.embed(["a cat", "a dog"]), first)
    assert len(loads) == 1


def test_same_numbers_as_the_command_line(cli, tiny_model: str) -> None:
    result = cli("embed", "a cat", "a dog", "-m", tiny_model, "--device", "cpu", "-f", "jsonl")
    assert result.code == 0, result.stderr
    from_cli = np.array([json.loads(line)["embedding"] for line in result.stdout.splitlines()])
    with Embedder(tiny_model, device="cpu", cache=False, server=False) as embedder:
        np.testing.assert_allclose(embedder.embed(["a cat", "a dog"]), from_cli, atol=1e-6)


def test_errors_name_the_setting(tiny_model: str) -> None:
    with pytest.raises(TypeError):
        Embedder(tiny_model, devise="cpu")  # a misspelt keyword is not ignored
    with pytest.raises(ModelError):
        Embedder("./no/such/model")  # at once, before any text
    with Embedder(tiny_model, device="cpu", cache=False, server=False) as embedder:
        with pytest.raises(SettingError) as error:
            embedder.embed(["a"], truncate_dim=10_000)
        assert error.value.setting == "truncate_dim"
        assert "truncate_dim=10000" in str(error.value)  # the library's own words
        with pytest.raises(SettingError, match="prompt_name"):
            embedder.embed(["a"], prompt_name="nope")
        with pytest.raises(TypeError, match="strings"):
            embedder.embed([1, 2])


def test_the_cli_words_setting_errors_with_its_flags(cli, tiny_model: str) -> None:
    result = cli("embed", "a", "-m", tiny_model, "--device", "cpu", "--truncate-dim", "10000")
    assert result.code == 2
    assert "--truncate-dim 10000: must be between 1 and" in result.stderr
    assert "truncate_dim" not in result.stderr


def test_settings_are_declared_once_and_offered_by_every_model_command(cli, no_model) -> None:
    """A setting added to Settings is an Embedder keyword and an option of each command."""
    assert set(OPTIONS) == set(Settings.__dataclass_fields__)
    for command in ("embed", "similar", "matrix", "serve"):
        text = cli(command, "--help").stdout
        for name in OPTIONS:
            assert flag(name) in text, (command, name)
    assert flag("server") == "--no-server"
    assert flag("cache") == "--no-cache"
    assert Settings(model="m", max_seq_length=64, trust_remote_code=True).argv() == [
        "--model",
        "m",
        "--device",
        "auto",
        "--max-seq-length",
        "64",
        "--dtype",
        "auto",
        "--compile",
        "auto",
        "--quantize",
        "none",
        "--trust-remote-code",
    ]
