"""Windowed attention for ModernBERT's local layers: the numbers of transformers' own
attention, with and without padding, on both of its paths (dense band mask, blocks).

The attention function is checked against a direct softmax over an explicit mask; the
whole model against sentence-transformers' own ``encode`` (stock attention) to 1e-5.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import cosines
from conftest import load_model as load
from numpy.testing import assert_allclose

from modernbert_cli import attention
from modernbert_cli.engine import Engine, EngineOptions
from modernbert_cli.testing import build_modernbert

RADIUS = 5


def reference_attention(query, key, value, real, radius):
    """softmax(q·kᵀ/√d) over the keys that are real and within ``radius`` (None: all)."""
    length = query.shape[2]
    positions = torch.arange(length)
    allowed = real[:, None, None, :].expand(-1, 1, length, -1)
    if radius is not None:
        allowed = allowed & ((positions[:, None] - positions[None, :]).abs() <= radius)
    scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ value).transpose(1, 2)


def random_states(batch: int, length: int, heads: int = 3, dim: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, dim, generator=generator) for _ in range(3)]


def real_tokens(lengths: list[int], padded: int) -> torch.Tensor:
    return torch.arange(padded)[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize(
    ("block", "lengths"),
    [
        (4, [37]),  # not a whole number of blocks; windows wider than a block
        (8, [40, 40]),  # whole blocks, no padding
        (8, [40, 3]),  # the short text's padding lies far outside its window
        (16, [9, 1, 23]),  # shorter than one window
        (64, [70, 30]),  # one block much wider than the radius
    ],
)
@pytest.mark.parametrize("path", ["blocked", "dense"])
def test_local_layer_equals_a_softmax_over_the_window(monkeypatch, path, block, lengths):
    monkeypatch.setattr(attention, "BLOCK", block)
    monkeypatch.setattr(attention, "BLOCKED_MIN_TOKENS", 0 if path == "blocked" else 10**9)
    query, key, value = random_states(len(lengths), max(lengths))
    real = real_tokens(lengths, max(lengths))
    module = SimpleNamespace(config=SimpleNamespace(sliding_window=RADIUS))
    mask = attention.key_padding_mask(real)

    out, weights = attention.windowed_attention(
        module, query, key, value, mask, scaling=query.shape[-1] ** -0.5, sliding_window=6
    )

    assert weights is None
    assert torch.isfinite(out).all()  # padding positions included: no empty softmax row
    expected = reference_attention(query, key, value, real, RADIUS)
    for row, length in enumerate(lengths):  # real positions only: padding is pooled away
        assert_allclose(out[row, :length], expected[row, :length], atol=1e-6, rtol=0)


@pytest.mark.parametrize("lengths", [[12, 12], [12, 5]])
def test_global_layer_sees_every_real_token(lengths):
    query, key, value = random_states(len(lengths), max(lengths), seed=1)
    real = real_tokens(lengths, max(lengths))
    module = SimpleNamespace(config=SimpleNamespace(sliding_window=RADIUS))

    out, _ = attention.windowed_attention(
        module, query, key, value, attention.key_padding_mask(real), scaling=8**-0.5
    )

    expected = reference_attention(query, key, value, real, None)
    for row, length in enumerate(lengths):
        assert_allclose(out[row, :length], expected[row, :length], atol=1e-6, rtol=0)


def test_no_padding_means_no_mask():
    """Without padding SDPA is called mask-free, which lets it pick its fastest kernel."""
    assert attention.key_padding_mask(torch.ones(2, 7, dtype=torch.bool)) is None
    assert attention.key_padding_mask(None) is None
    real = real_tokens([7, 3], 7)
    assert attention.key_padding_mask(real) is real


# --- the whole model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_tiny_model(tmp_path_factory) -> str:
    """The tiny random ModernBERT with its full 8,192-token context."""
    return str(build_modernbert(tmp_path_factory.mktemp("models") / "tiny-8k"))


def long_texts() -> list[str]:
    words = [
        "river",
        "county",
        "school",
        "music",
        "water",
        "season",
        "album",
        "village",
        "station",
        "century",
    ]
    return [
        " ".join(words[(i * 7 + j) % len(words)] for j in range(count))
        for i, count in enumerate([1500, 40, 900, 3, 500])
    ]


def test_install_switches_modernbert_only(long_tiny_model, minilm_path):
    modernbert, minilm = load(long_tiny_model), load(minilm_path)

    assert attention.install(modernbert) is True
    assert modernbert[0].auto_model.config._attn_implementation == attention.NAME
    assert attention.install(minilm) is False
    assert minilm[0].auto_model.config._attn_implementation == "sdpa"


def test_eager_attention_is_left_alone(long_tiny_model):
    model = load(long_tiny_model)
    model[0].auto_model.set_attn_implementation("eager")

    assert attention.install(model) is False
    assert model[0].auto_model.config._attn_implementation == "eager"


@pytest.mark.parametrize("block", [attention.BLOCK, 48])
def test_model_numbers_equal_stock_attention(monkeypatch, long_tiny_model, block):
    """Texts of 1,500 to 3 tokens, alone and padded together, on the blocked path."""
    monkeypatch.setattr(attention, "BLOCK", block)
    stock = load(long_tiny_model)
    texts = long_texts()
    lengths = [len(ids) for ids in stock.tokenizer(texts)["input_ids"]]
    assert max(lengths) > attention.BLOCKED_MIN_TOKENS > sorted(lengths)[-2] > 2 * 64
    expected = stock.encode(texts, batch_size=len(texts))

    together = EngineOptions(max_batch_tokens=8192, max_padding=8192)
    engine = Engine(load(long_tiny_model), ["cpu"], together)
    assert engine.windowed
    alone = Engine(load(long_tiny_model), ["cpu"], EngineOptions(max_batch_size=1))

    padded_together = engine.encode(texts)
    assert len(engine.plan(np.array(lengths))) == 1  # one batch: every short text is padded
    assert_allclose(padded_together, expected, atol=1e-5, rtol=0)
    assert_allclose(alone.encode(texts), expected, atol=1e-5, rtol=0)


def test_replicas_keep_windowed_attention(long_tiny_model):
    engine = Engine(load(long_tiny_model), ["cpu", "cpu"], EngineOptions())

    assert [r[0].auto_model.config._attn_implementation for r in engine.replicas] == [
        attention.NAME
    ] * 2


@pytest.mark.parametrize("path", ["blocked", "dense"])
def test_padding_far_from_any_real_token_stays_finite_with_a_nan_softmax(monkeypatch, path):
    """torch before 2.5 gives NaN for a softmax row with every key masked; none arises."""

    def sdpa_with_plain_softmax(query, key, value, attn_mask=None, dropout_p=0.0, scale=None):
        scores = query @ key.transpose(-1, -2) * scale
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        return scores.softmax(-1) @ value  # an all -inf row: NaN

    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", sdpa_with_plain_softmax
    )
    monkeypatch.setattr(attention, "BLOCK", 8)
    monkeypatch.setattr(attention, "BLOCKED_MIN_TOKENS", 0 if path == "blocked" else 10**9)
    query, key, value = random_states(2, 40, seed=2)
    real = real_tokens([40, 3], 40)  # positions 9..39 of the second row see no real key
    module = SimpleNamespace(config=SimpleNamespace(sliding_window=RADIUS))

    out, _ = attention.windowed_attention(
        module,
        query,
        key,
        value,
        attention.key_padding_mask(real),
        scaling=8**-0.5,
        sliding_window=6,
    )

    assert torch.isfinite(out).all()
    expected = reference_attention(query, key, value, real, RADIUS)
    assert_allclose(out[1, :3], expected[1, :3], atol=1e-6, rtol=0)


def test_bfloat16_on_the_blocked_path_agrees_with_float32(long_tiny_model):
    """What a GPU runs by default (bf16), run on the CPU."""
    texts = long_texts()
    expected = load(long_tiny_model).encode(texts)
    engine = Engine(load(long_tiny_model), ["cpu"], EngineOptions(dtype="bfloat16"))

    assert engine.windowed
    assert cosines(engine.encode(texts), expected).min() > 0.999


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own
def test_compiled_blocked_path_gives_the_same_numbers(long_tiny_model):
    """torch.compile (a GPU's default for big jobs) over blocks and padding: ≈ 35 s."""
    texts = long_texts()
    expected = load(long_tiny_model).encode(texts)
    options = EngineOptions(compile="on", max_batch_tokens=4096)
    engine = Engine(load(long_tiny_model), ["cpu"], options)

    assert engine.compiled and engine.windowed
    assert_allclose(engine.encode(texts), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("lengths", [[12, 12], [12, 5]])
def test_short_local_layers_get_their_band_mask_built_once(lengths):
    """The band mask comes from the mask function (once per pass), not from each layer."""
    real = real_tokens(lengths, max(lengths))
    built = attention.layer_mask(real, local_size=RADIUS, q_length=max(lengths), device="cpu")
    assert built.dim() == 4
    query, key, value = random_states(len(lengths), max(lengths), seed=3)
    module = SimpleNamespace(config=SimpleNamespace(sliding_window=RADIUS))

    out, _ = attention.windowed_attention(
        module, query, key, value, built, scaling=8**-0.5, sliding_window=RADIUS + 1
    )

    expected = reference_attention(query, key, value, real, RADIUS)
    for row, length in enumerate(lengths):
        assert_allclose(out[row, :length], expected[row, :length], atol=1e-6, rtol=0)


def test_global_and_long_local_layers_get_the_padding_mask(monkeypatch):
    monkeypatch.setattr(attention, "BLOCKED_MIN_TOKENS", 10)
    real = real_tokens([12, 5], 12)
    assert attention.layer_mask(real, q_length=12, device="cpu") is real
    assert attention.layer_mask(real, local_size=RADIUS, q_length=12, device="cpu") is real
    everything = torch.ones(2, 12, dtype=torch.bool)
    assert attention.layer_mask(everything, local_size=RADIUS, q_length=12) is None
