"""Windowed attention for ModernBERT's local layers: the same numbers, less work on long texts.

ModernBERT alternates global attention (every third layer) with local attention, in
which a token sees only the ``sliding_window`` (64) tokens either side of it.
transformers runs a local layer through SDPA with an N×N mask, so its cost grows with
N² just as a global layer's: on an 8,192-token document, 14 of ModernBERT-base's 22
layers compute 67 million scores per head to keep 1.6% of them. Here a local layer
cuts the sequence into blocks of :data:`BLOCK` queries, each attending only to the
``BLOCK + 2 × sliding_window`` keys that can reach it, so its cost grows with N.

Measured on 2 CPU cores (fp32, 12 heads of 64, ``benchmarks/attention.py``): one local
layer at 8,192 tokens took 1,023 ms with transformers' band mask and 112 ms blocked; at
2,048 tokens 59 and 27 ms; at 1,024 15 and 14 ms — so shorter sequences keep the dense
band mask, built once per forward pass for all local layers, as transformers does.

Global layers, and local layers run in blocks, get padding as a B×N key mask rather
than the B×1×N×N mask transformers builds. A padding position attends at least to
itself, so no softmax row is empty: torch 2.5 and later give 0 for an empty row, older
releases NaN, which would reach real tokens through the next global layer's
``weights @ values``. Pooling ignores padding positions, so what they hold does not
change the embeddings.

>>> install(sentence_transformer)  # doctest: +SKIP
True
"""

from __future__ import annotations

from typing import Any

NAME = "modernbert_cli_windowed"
BLOCK = 128  # queries per block (64, 128 and 256 measured; 128 was fastest)
BLOCKED_MIN_TOKENS = 1024  # padded sequence length from which blocks beat the band mask


def install(model: Any) -> bool:
    """Give a model's ModernBERT backbone windowed attention; False where it has none.

    Only a backbone on transformers' SDPA attention is switched: flash attention
    (``flash_attention_2``) already skips what lies outside the window, and eager
    attention is a choice the user made on purpose.
    """
    import importlib

    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            config = module.config
            modeling = importlib.import_module(type(module).__module__)
            if (
                getattr(config, "model_type", None) != "modernbert"
                or config._attn_implementation != "sdpa"
                or "sliding_attention" not in (getattr(config, "layer_types", None) or ())
                # Before transformers 5, ModernBERT ran attention functions of its own.
                or not hasattr(modeling, "create_bidirectional_sliding_window_mask")
            ):
                return False
            _register()
            module.set_attn_implementation(NAME)
            return True
    return False


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, windowed_attention)
    AttentionMaskInterface.register(NAME, layer_mask)


def layer_mask(
    attention_mask: Any = None,
    local_size: int | None = None,
    q_length: int | None = None,
    device: Any = None,
    **_: Any,
) -> Any:
    """The mask the layers get, built once per forward pass (not once per layer).

    transformers calls this once for the global layers and once for the local ones
    (with ``local_size``, their radius). Global layers, and local layers long enough
    for blocks, get the B×N padding mask (None: no padding). Shorter local layers get
    their dense band mask, B×1×N×N.
    """
    padding = key_padding_mask(attention_mask)
    if local_size is None or q_length is None or q_length >= BLOCKED_MIN_TOKENS:
        return padding
    return _band_mask(q_length, device, padding, local_size)


def key_padding_mask(attention_mask: Any) -> Any:
    """The B×N padding mask itself, True for real tokens; None where there is no padding."""
    import torch

    if attention_mask is None:
        return None
    if not torch.compiler.is_compiling() and bool(attention_mask.all()):
        return None  # no padding: SDPA may take its fastest, mask-free kernel
    return attention_mask


def windowed_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    **_: Any,
) -> tuple[Any, None]:
    """An ``AttentionInterface`` function: B×H×N×d in, B×N×H×d out, no weights.

    ``attention_mask`` is what :func:`layer_mask` built: a local layer's band mask
    (4-D), or the B×N padding mask, or None.
    """
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    length, local = query.shape[2], sliding_window is not None
    if local and length >= BLOCKED_MIN_TOKENS:
        radius = module.config.sliding_window
        out = _blocked(query, key, value, attention_mask, radius, scaling, dropout)
    else:
        mask = attention_mask
        if local and (mask is None or mask.dim() == 2):  # no band mask came: build it
            mask = _band_mask(length, query.device, mask, module.config.sliding_window)
        elif mask is not None and mask.dim() == 2:  # a global layer's padding
            mask = mask[:, None, None, :]
        out = sdpa(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def _band_mask(length: int, device: Any, padding: Any, radius: int) -> Any:
    """B×1×N×N (or 1×1×N×N): key within ``radius`` of the query and a real token, or itself."""
    import torch

    positions = torch.arange(length, device=device)
    offset = positions[None, :] - positions[:, None]
    band = offset.abs() <= radius
    if padding is None:
        return band[None, None]
    return (band & padding[:, None, None, :]) | (offset == 0)


def _blocked(
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    radius: int,
    scaling: float | None,
    dropout: float,
) -> Any:
    """Local attention block by block: each block of queries against its key window.

    Block ``b`` holds queries ``b·BLOCK … b·BLOCK + BLOCK - 1``; its window holds keys
    ``b·BLOCK - radius … b·BLOCK + BLOCK - 1 + radius`` (``width`` of them), cut from
    keys padded by ``radius`` on both sides. In window coordinates, query ``i`` may see
    key ``j`` when ``0 <= j - i <= 2·radius``.
    """
    import torch
    import torch.nn.functional as F
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    batch, heads, length, dim = query.shape
    blocks = -(-length // BLOCK)
    padded = blocks * BLOCK
    width = BLOCK + 2 * radius
    device = query.device

    def windows(states: Any) -> Any:  # B×H×N×d -> B×(H·blocks)×width×d
        states = F.pad(states, (0, 0, radius, padded - length + radius))
        states = states.unfold(2, width, BLOCK).transpose(-1, -2)
        return states.reshape(batch, heads * blocks, width, dim)

    queries = F.pad(query, (0, 0, 0, padded - length)).reshape(batch, heads * blocks, BLOCK, dim)
    real = (
        attention_mask.to(torch.bool)
        if attention_mask is not None
        else torch.ones(batch, length, dtype=torch.bool, device=device)
    )
    real = F.pad(real, (radius, padded - length + radius)).unfold(1, width, BLOCK)  # B×blocks×width
    offset = (
        torch.arange(width, device=device)[None, :] - torch.arange(BLOCK, device=device)[:, None]
    )
    band = (offset >= 0) & (offset <= 2 * radius)
    mask = (band & real[:, :, None, :]) | (offset == radius)  # B×blocks×BLOCK×width
    mask = mask[:, None].expand(batch, heads, blocks, BLOCK, width)
    mask = mask.reshape(batch, heads * blocks, BLOCK, width)
    out = sdpa(
        queries, windows(key), windows(value), attn_mask=mask, dropout_p=dropout, scale=scaling
    )
    return out.reshape(batch, heads, padded, dim)[:, :, :length]
