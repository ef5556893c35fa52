"""How to run the model: one :class:`Settings` value, and the one table that describes it.

Every setting is declared once, below, with its type, default, help, command-line flags
and environment variable. :class:`~modernbert_cli.embedder.Embedder` takes the
settings as keywords; the command line builds its options from the same fields
(``cli.py`` reads :data:`OPTIONS`), so adding a setting is one new field here.

>>> Settings(model="minilm").device
'auto'
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

DEFAULT_MODEL = "joe32140/ModernBERT-base-msmarco"
MODEL_ENV = "MODERNBERT_CLI_MODEL"
CACHE_MAX_ENV = "MODERNBERT_CLI_CACHE_MAX_MB"
DEFAULT_CACHE_MAX_MB = 2048
# Padded tokens per batch. On a CPU small batches run fastest (measured on 2 cores:
# ModernBERT-base at 512/1,024/2,048/4,096 tokens ran 1.43x/1.32x/1.12x/0.94x the speed
# of encode's batches of 32; float32 later level from 512 to 1,024); int8 more so (96
# short texts, 2 threads, two quiet runs: 512 tokens 7% and 6.5% faster than 1,024); a
# GPU needs large batches to be kept busy.
CPU_BATCH_TOKENS = 1024
CPU_INT8_BATCH_TOKENS = 512
GPU_BATCH_TOKENS = 65536

DType = Literal["auto", "float32", "bfloat16", "float16"]
Switch = Literal["auto", "on", "off"]
Quantize = Literal["none", "int8"]
Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]
Metric = Literal["cosine", "dot", "euclidean", "manhattan"]

DTYPES: tuple[str, ...] = get_args(DType)
PRECISIONS: tuple[str, ...] = get_args(Precision)
METRICS: tuple[str, ...] = get_args(Metric)


@dataclass(frozen=True)
class Option:
    """How a setting is offered on the command line (kept beside the field it describes)."""

    flags: tuple[str, ...]
    help: str
    panel: str = "Model"
    metavar: str | None = None
    env: str | None = None
    min: int | None = None


_REUSE = "Cache and server"  # what spares a run the model: the cache, a warm server


def _setting(default: Any, *flags: str, help: str, **option: Any) -> Any:
    return field(default=default, metadata={"option": Option(flags, help, **option)})


@dataclass(frozen=True)
class Settings:
    """The model and how to run it: everything an embedding run needs besides its texts."""

    model: str = _setting(
        DEFAULT_MODEL,
        "--model",
        "-m",
        metavar="NAME",
        env=MODEL_ENV,
        help="sentence-transformers model id, local directory, or alias: "
        "modernbert-base, modernbert-large, minilm (offline).",
    )
    device: str = _setting(
        "auto",
        "--device",
        metavar="DEVICE",
        help="auto, cpu, cuda, cuda:N or mps; a comma list (cuda:0,cuda:1) shares the work.",
    )
    max_seq_length: int | None = _setting(
        None,
        "--max-seq-length",
        metavar="N",
        min=1,
        help="Token limit per text (default: the model's own, 8192 for ModernBERT). "
        "Longer texts are truncated, with a count on stderr.",
    )
    max_batch_tokens: int | None = _setting(
        None,
        "--max-batch-tokens",
        metavar="N",
        min=1,
        help=f"Padded tokens per batch (default: {CPU_BATCH_TOKENS} on a CPU, "
        f"{CPU_INT8_BATCH_TOKENS} with --quantize int8, {GPU_BATCH_TOKENS} on a GPU).",
    )
    batch_size: int | None = _setting(
        None,
        "--batch-size",
        metavar="N",
        min=1,
        help="At most this many texts per batch (default: the token budget decides).",
    )
    dtype: DType = _setting(
        "auto",
        "--dtype",
        help="Weights' precision; auto = bfloat16 on a GPU that has it, float32 elsewhere.",
    )
    compile: Switch = _setting(
        "auto",
        "--compile",
        help="torch.compile the model; auto = on a GPU, for jobs big enough to repay it.",
    )
    quantize: Quantize = _setting(
        "none",
        "--quantize",
        help="int8: int8 Linear layers on a CPU. Measured on AVX2 without VNNI (AMD EPYC, "
        "2 cores): ModernBERT-base embeds short texts 1.8-2.0x faster than "
        "sentence-transformers (float32: 1.2x); a whole embed of 320 of them, start-up "
        "included, 1.62-1.64x (float32: 1.10-1.11x); cosine to float32 0.992-0.995 on "
        "MiniLM.",
    )
    trust_remote_code: bool = _setting(
        False,
        "--trust-remote-code",
        help="Allow the model's own Python code to run (only for models you trust).",
    )
    server: bool = _setting(
        True,
        " /--no-server",  # on unless switched off
        panel=_REUSE,
        help="Work in-process even when 'modernbert-cli serve' runs this model.",
    )
    cache: bool = _setting(
        True,
        " /--no-cache",
        panel=_REUSE,
        help="Neither read nor write the embedding cache.",
    )
    cache_max_mb: int = _setting(
        DEFAULT_CACHE_MAX_MB,
        "--cache-max-mb",
        panel=_REUSE,
        metavar="MB",
        min=1,
        env=CACHE_MAX_ENV,
        help="Bound on the cache file; least recently used entries go first.",
    )

    def vector_settings(self, dtype: str) -> dict[str, Any]:
        """The settings that change a vector (part of cache and server keys).

        ``dtype`` is the one the run really uses (``auto`` resolved).
        """
        return {
            "max_seq_length": self.max_seq_length,
            "dtype": dtype,
            "quantize": self.quantize,
            # The model's own code may compute other numbers than transformers' own.
            "trust_remote_code": self.trust_remote_code,
        }

    def argv(self) -> list[str]:
        """The settings that change how a model runs, as command-line arguments.

        What a server started on behalf of a command is given; the cache settings
        are the command's own business.
        """
        args: list[str] = []
        for name, option in OPTIONS.items():
            value = getattr(self, name)
            if option.panel == _REUSE or value is None:
                continue
            if isinstance(value, bool):
                if value:
                    args.append(flag(name))
            else:
                args += [flag(name), str(value)]
        return args


# The command-line view of every setting, by field name, in declaration order.
OPTIONS: dict[str, Option] = {f.name: f.metadata["option"] for f in fields(Settings)}


def flag(name: str) -> str:
    """The long flag of a setting, for messages: ``flag("truncate_dim")`` → ``--truncate-dim``."""
    option = OPTIONS.get(name)
    if option is None:
        return f"--{name.replace('_', '-')}"
    return next(part.strip() for part in option.flags[0].split("/") if part.strip())
