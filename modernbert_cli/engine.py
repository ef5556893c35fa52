"""The batch engine: sentence-transformers' own modules, fed the way the hardware likes.

``SentenceTransformer.encode`` runs fixed-size batches of 32 in fp32. The engine
keeps everything that decides the numbers — ``model.preprocess`` (prompts,
truncation), ``model(features)`` (the transformer, pooling, normalisation) — and
changes only how the work is fed:

- ModernBERT's local-attention layers attend within their window only
  (:mod:`modernbert_cli.attention`), instead of over an N×N mask;
- texts are sorted by token length and cut into batches by a **token budget**
  (padded tokens per batch), so short texts go in large batches and long ones in
  small, with little padding either way; results come back in input order;
- the next batch is tokenised in a background thread while the model runs, and of a
  document longer than the model's limit only the part it reads is tokenised;
- on CUDA: bf16/fp16, and ``torch.compile`` for jobs large enough to repay it;
- on CPU: optional dynamic int8 quantization of the Linear layers (in place);
- several devices (``cuda:0,cuda:1``) each run a replica and take batches from a
  shared queue.

In fp32 the embeddings equal ``encode``'s to float rounding (tested to 1e-5).

>>> engine = Engine(model, ["cpu"], EngineOptions())  # doctest: +SKIP
>>> engine.encode(["a cat", "a dog"]).shape  # doctest: +SKIP
(2, 768)
"""

from __future__ import annotations

import copy
import functools
import queue
import re
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modernbert_cli import attention
from modernbert_cli.errors import SettingError
from modernbert_cli.settings import (
    CPU_BATCH_TOKENS,
    CPU_INT8_BATCH_TOKENS,
    DTYPES,
    GPU_BATCH_TOKENS,
)

if TYPE_CHECKING:
    import numpy as np

# More characters than this per token are rare (English averages about four).
_CHARS_PER_TOKEN_BOUND = 16
# A clipped document keeps at least this many tokens beyond the limit, so that the
# word cut short at its end (and whatever a tokenizer does there) lies past the limit.
_CLIP_MARGIN = 16
# On a CPU a padded token costs what a real one does, and a batch of its own costs about
# this many tokens (the weights read once more; all-MiniLM-L6-v2: ~25): a batch ends
# where the next text is this much shorter than its longest. A query, a paragraph and a
# title then run as three small batches, not one padded three times over.
CPU_MAX_PADDING = 32
# torch.compile costs tens of seconds up front: only worth it for big jobs.
COMPILE_MIN_TEXTS = 20000


@dataclass(frozen=True)
class EngineOptions:
    """How to run the model; none of these change the numbers beyond float rounding."""

    max_batch_tokens: int | None = None  # None: the CPU's, CPU int8's or the GPU's default
    max_batch_size: int | None = None  # cap on texts per batch (None: the budget decides)
    # Padding a text may get in a batch (None: CPU_MAX_PADDING on a CPU, no bound on a GPU).
    max_padding: int | None = None
    dtype: str = "auto"
    compile: str = "auto"
    quantize: str = "none"


@dataclass
class TokenCounts:
    """What the engine knows of its texts' lengths before running the model.

    ``tokens``: tokens per text, prompt and special tokens included (above the model's
    limit, a lower bound). ``needed``: how many characters of each text give the tokens
    the model keeps.
    """

    tokens: np.ndarray
    needed: np.ndarray


@dataclass
class Batch:
    indices: np.ndarray  # positions in the chunk, longest text first
    tokens: int  # real (unpadded) tokens, for throughput figures


ProgressFn = Callable[[int, int], None]  # (texts done, tokens done) for one batch


class Engine:
    """A model placed on one or more devices, ready to embed batches of texts."""

    def __init__(
        self,
        model: Any,
        devices: Sequence[str],
        options: EngineOptions = EngineOptions(),
        expected_texts: int | None = None,
    ) -> None:
        import torch

        self.options = options
        self.devices = [torch.device(d) for d in devices]
        self.on_gpu = self.devices[0].type == "cuda"
        if options.quantize == "int8" and any(d.type != "cpu" for d in self.devices):
            raise SettingError("quantize", "runs on the CPU only (use {dtype} on a GPU)", "int8")
        self.dtype = _pick_dtype(options.dtype, self.devices[0])
        if options.max_batch_tokens:
            self.budget = options.max_batch_tokens
        elif self.on_gpu:
            self.budget = GPU_BATCH_TOKENS
        else:
            self.budget = CPU_INT8_BATCH_TOKENS if options.quantize == "int8" else CPU_BATCH_TOKENS
        model.eval()
        self.windowed = attention.install(model)
        if self.dtype is not torch.float32:
            model.to(self.dtype)
        if options.quantize == "int8":
            model = quantize_int8(model)
        self.compiled = options.compile == "on" or (
            options.compile == "auto"
            and self.on_gpu
            and expected_texts is not None
            and expected_texts >= COMPILE_MIN_TEXTS
        )
        self.replicas = [model.to(self.devices[0])]
        for device in self.devices[1:]:
            self.replicas.append(copy.deepcopy(model).to(device))
        if self.compiled:
            for replica in self.replicas:
                replica.compile(dynamic=True)
        self.tokenizer = model.tokenizer
        self.max_seq_length = int(model.max_seq_length)
        # A module with lengths of its own per task (ColBERT-style query_length and
        # document_length) may read past max_seq_length: give it whole texts.
        self.clips = not any(
            getattr(module, name, None)
            for module in model.modules()
            for name in ("query_length", "document_length")
        )

    # -- planning ----------------------------------------------------------------------

    def token_counts(self, texts: Sequence[str], prompt: str = "") -> TokenCounts:
        """Tokens per text with special tokens and prompt, before truncation."""
        counts = token_counts(self.tokenizer, texts, prompt, self.max_seq_length)
        if not self.clips:
            counts.needed[:] = [len(text) for text in texts]
        return counts

    def plan(self, lengths: np.ndarray) -> list[Batch]:
        """Longest first, each batch within the token budget (padded to its longest text),
        and on a CPU no text padded by more than ``CPU_MAX_PADDING`` tokens."""
        import numpy as np

        capped = np.minimum(lengths, self.max_seq_length)
        order = np.argsort(-capped, kind="stable")
        descending = capped[order]
        cap = self.options.max_batch_size or len(order)
        padding = self.options.max_padding
        if padding is None and not self.on_gpu:
            padding = CPU_MAX_PADDING
        batches, start = [], 0
        while start < len(order):
            longest = max(int(descending[start]), 1)
            size = max(1, min(cap, self.budget // longest))
            if padding is not None:  # texts at most `padding` shorter than the longest
                window = -descending[start : start + size]
                size = max(1, int(np.searchsorted(window, padding - longest, side="right")))
            indices = order[start : start + size]
            batches.append(Batch(indices, int(capped[indices].sum())))
            start += size
        return batches

    # -- running -----------------------------------------------------------------------

    def encode(
        self,
        texts: Sequence[str],
        *,
        prompt: str | None = None,
        task: str | None = None,
        normalize: bool = False,
        truncate_dim: int | None = None,
        counts: TokenCounts | None = None,
        progress: ProgressFn | None = None,
    ) -> np.ndarray:
        """float32 embeddings of ``texts``, in input order.

        ``counts``: this engine's :meth:`token_counts` of the same texts and prompt,
        where the caller has them already.
        """
        import numpy as np

        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        if counts is None:
            counts = self.token_counts(texts, prompt or "")
        batches = self.plan(counts.tokens)
        needed = counts.needed
        kwargs = {"task": task} if task else {}
        results: list[np.ndarray | None] = [None] * len(batches)

        def run(replica: Any, device: Any, number: int, features: dict[str, Any]) -> None:
            vectors = _forward(replica, device, features, kwargs, normalize, truncate_dim)
            results[number] = vectors
            if progress is not None:
                progress(len(batches[number].indices), batches[number].tokens)

        def prepare(number: int, replica: Any) -> dict[str, Any]:
            chunk = [texts[i][: needed[i]] for i in batches[number].indices]
            return replica.preprocess(chunk, prompt=prompt, **kwargs)

        if len(self.replicas) == 1:
            self._run_single(len(batches), prepare, run)
        else:
            self._run_multi(len(batches), prepare, run)
        out = np.empty((len(texts), results[0].shape[1]), dtype=np.float32)
        for batch, vectors in zip(batches, results, strict=True):
            out[batch.indices] = vectors
        return out

    def _run_single(self, count: int, prepare, run) -> None:
        """One device: tokenise batch i+1 in a thread while batch i runs."""
        from concurrent.futures import ThreadPoolExecutor

        replica, device = self.replicas[0], self.devices[0]
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as pool:
            pending = pool.submit(prepare, 0, replica)
            for number in range(count):
                features = pending.result()
                if number + 1 < count:
                    pending = pool.submit(prepare, number + 1, replica)
                run(replica, device, number, features)

    def _run_multi(self, count: int, prepare, run) -> None:
        """Several devices: one thread per replica takes batches from a shared queue."""
        todo: queue.Queue[int] = queue.Queue()
        for number in range(count):
            todo.put(number)
        errors: list[BaseException] = []

        def worker(replica: Any, device: Any) -> None:
            while not errors:
                try:
                    number = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    run(replica, device, number, prepare(number, replica))
                except BaseException as error:
                    errors.append(error)

        threads = [
            threading.Thread(target=worker, args=pair, daemon=True, name=f"encode-{pair[1]}")
            for pair in zip(self.replicas, self.devices, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]


# The feed-forward output projections: their input, after the GELU/GLU, has outlier
# channels. One int8 scale per weight matrix cannot hold them (on all-MiniLM-L6-v2 the
# mean cosine to fp32 fell to 0.966); one scale per output channel can (0.990). The
# first layer's stays fp32: its outliers are the largest (0.990 -> 0.992 on short texts),
# and it is one matrix in 88 of ModernBERT-base.
_FFN_OUTPUTS = re.compile(r"(\.mlp\.Wo|\.layer\.\d+\.output\.dense|\.fc2|\.down_proj|\.w2)$")
# Weights in [-64, 63] (7 bits, one scale per output channel) and activations in 8 bits.
# Without VNNI, fbgemm multiplies u8 activations by s8 weights in pairs summed in int16
# (vpmaddubsw): 2 x 255 x 64 = 32,640 always fits, where 8-bit weights could saturate
# (2 x 255 x 127) and 7-bit activations (torch's reduce_range) cost accuracy. On
# all-MiniLM-L6-v2, cosine to fp32 (mean): activations 8 bits 0.992, 7 bits 0.977;
# weights 7 bits 0.992, 8 bits 0.992 (but saturable: 9% error on random inputs).
_WEIGHT_MAX = 63


def quantize_int8(model: Any) -> Any:
    """Int8 Linear layers, in place (weights now, activations per batch); returns the model.

    fbgemm's int8 products run about twice as fast as fp32 ones on an AVX2 CPU without
    VNNI. In place: a copy would cost half a second and the fp32 weights' memory, and the
    engine keeps only the int8 model. The matrices are converted on as many threads as
    torch computes on (fbgemm packs each on one): ModernBERT-base's 87 took 1.5 s on one
    thread of a 2-core CPU, 0.8 s on two.
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch

    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    first_ffn_output = next((n for n, _ in linears if _FFN_OUTPUTS.search(n)), None)
    linears = [(n, m) for n, m in linears if n != first_ffn_output]
    int8 = _int8_linear()
    # One work buffer per thread for every matrix: a fresh one each costs its page faults.
    largest = max((m.weight.numel() for _, m in linears), default=0)
    buffers = threading.local()

    def convert(linear: Any) -> Any:
        if not hasattr(buffers, "buffer"):
            buffers.buffer = torch.empty(largest, dtype=torch.float32)
        return int8(linear, buffers.buffer)

    # torch announces the end of its quantized tensors (fbgemm's kernels take them): a note
    # for us, not for a user who asked for int8.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
            converted = list(pool.map(convert, [linear for _, linear in linears]))
    for (name, _), int8_linear in zip(linears, converted, strict=True):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, int8_linear)
    return model


@functools.cache
def _int8_linear() -> type:
    """A Linear with int8 weights (see :data:`_WEIGHT_MAX`) and dynamic 8-bit activations."""
    import torch

    class Int8Linear(torch.nn.Module):
        """``linear``'s weights quantized per output channel, packed for fbgemm once."""

        def __init__(self, linear: torch.nn.Linear, buffer: torch.Tensor) -> None:
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            weight = linear.weight.detach().float()
            peak = torch.maximum(weight.amax(dim=1), -weight.amin(dim=1)).clamp_(min=1e-12)
            scale = peak / (_WEIGHT_MAX + 0.5)
            values = buffer[: weight.numel()].view(weight.shape)
            torch.div(weight, scale[:, None], out=values)
            values.round_().clamp_(-_WEIGHT_MAX - 1, _WEIGHT_MAX)
            quantized = torch._make_per_channel_quantized_tensor(
                values.to(torch.int8), scale.double(), torch.zeros(len(scale), dtype=torch.long), 0
            )
            bias = None if linear.bias is None else linear.bias.detach().float()
            self._packed = torch.ops.quantized.linear_prepack(quantized, bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.ops.quantized.linear_dynamic(x, self._packed, reduce_range=False)
            return out.to(x.dtype)

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, int8"

    return Int8Linear


def token_counts(
    tokenizer: Any, texts: Sequence[str], prompt: str = "", limit: int | None = None
) -> TokenCounts:
    """Tokens per text with special tokens and prompt, and the part of each text needed.

    With ``limit`` (the model's ``max_seq_length``), only what the limit needs is
    tokenised: of a long document, its first ``limit × 16`` characters, cut back to a
    space. Those hold more than ``limit`` tokens unless the tokens are unusually long
    (then the whole text is counted). Counts above ``limit`` are then lower bounds —
    enough to say "truncated" and to plan batches — and the model is given just that
    prefix: a prefix that ends between words tokenises as the whole text does up to its
    last word, so the tokens it keeps are the same, at a fraction of the cost.
    """
    import numpy as np

    def count(batch: list[str]) -> list[int]:
        encoded = tokenizer(
            batch,
            add_special_tokens=True,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )["input_ids"]
        return [len(ids) for ids in encoded]

    full = [prompt + t for t in texts] if prompt else list(texts)
    needed = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    if not limit:
        return TokenCounts(np.asarray(count(full), dtype=np.int64), needed)
    ends = [_prefix_end(t, limit * _CHARS_PER_TOKEN_BOUND) for t in full]
    tokens = np.asarray(count([t[:end] for t, end in zip(full, ends, strict=True)]), dtype=np.int64)
    whole = []  # long tokens: the prefix did not reach the limit, so count it all
    for i, (text, end) in enumerate(zip(full, ends, strict=True)):
        if end < len(text):
            if tokens[i] <= limit:
                whole.append(i)
            elif tokens[i] > limit + _CLIP_MARGIN and end > len(prompt) and text[end] in " \n":
                needed[i] = end - len(prompt)
    if whole:
        tokens[whole] = count([full[i] for i in whole])
    return TokenCounts(tokens, needed)


def _prefix_end(text: str, cap: int) -> int:
    """Where to cut ``text`` near ``cap`` characters: at a space, else at ``cap``."""
    if len(text) <= cap:
        return len(text)
    space = max(text.rfind(" ", cap // 2, cap), text.rfind("\n", cap // 2, cap))
    return space if space > 0 else cap


def _forward(
    replica: Any,
    device: Any,
    features: dict[str, Any],
    kwargs: dict[str, Any],
    normalize: bool,
    truncate_dim: int | None,
) -> np.ndarray:
    import torch

    with torch.inference_mode():
        features = {
            k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in features.items()
        }
        embeddings = replica(features, **kwargs)["sentence_embedding"]
        if truncate_dim is not None:
            embeddings = embeddings[..., :truncate_dim]
        embeddings = embeddings.float()
        if normalize:
            embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)
        return embeddings.cpu().numpy()


def effective_dtype(devices: str, dtype: str) -> str:
    """The dtype a run will use, as a name; imports torch only if a CUDA GPU may be there.

    The embedding cache keys on it: bf16 vectors are not served for a float32 run.
    """
    if dtype != "auto":
        return dtype
    kinds = {d.strip().split(":")[0] for d in devices.split(",")}
    no_nvidia = sys.platform == "linux" and not Path("/proc/driver/nvidia/gpus").is_dir()
    if "cuda" not in kinds and ("auto" not in kinds or no_nvidia or sys.platform == "darwin"):
        return "float32"
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return str(_pick_dtype("auto", device)).removeprefix("torch.")


def _pick_dtype(name: str, device: Any) -> Any:
    import torch

    if name not in DTYPES:
        raise SettingError("dtype", f"choose from {', '.join(DTYPES)}", name)
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)
