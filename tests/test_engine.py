"""The encoding engine: token-budgeted batches, numbers equal to sentence-transformers'
own whatever the batching, several devices, dtypes, int8 quantization, torch.compile,
and the fallback to ``SentenceTransformer.encode``.

The planner is checked on a stub model (no weights needed); the numbers on the tiny
random ModernBERT and on the pretrained minilm, against ``encode`` to 1e-5.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_error, cosines
from conftest import load_model as load
from numpy.testing import assert_allclose

from modernbert_cli import encoder as encoder_module
from modernbert_cli import engine as engine_module
from modernbert_cli.encoder import EncodeOptions, Encoder
from modernbert_cli.engine import COMPILE_MIN_TEXTS, Engine, EngineOptions, quantize_int8
from modernbert_cli.errors import ExitStatus, UsageError

SAMPLES = Path(__file__).resolve().parent.parent / "sample_inputs"
CORPUS_LINES = [
    line.strip()
    for line in (SAMPLES / "corpus.txt").read_text("utf-8").splitlines()
    if line.strip()
]
MINILM_MAX_SEQ_LENGTH = 256

# Short and long texts mixed: 302 and 702 tokens are cut by both models (minilm: 256,
# tiny: 128), 202 only by the tiny one, 122 by neither.
MIXED = [
    "A man is eating food.",
    " ".join(["volcanic ash covered the valley"] * 60),
    "ok",
    " ".join(["a cat sat on the mat"] * 20),
    "A woman plays the violin.",
    " ".join(["backups run every night at two"] * 100),
    "Hayden is a city in Kootenai County, Idaho.",
    " ".join(["volcanic ash covered the valley"] * 40),
    "The new movie is awesome.",
    "Two men pushed carts through the woods.",
]


# --- helpers -----------------------------------------------------------------------------


class StubModel:
    """Just enough of a SentenceTransformer for Engine's constructor and planner."""

    tokenizer = None

    def __init__(self, max_seq_length: int = 512) -> None:
        self.max_seq_length = max_seq_length
        self.compile_calls = 0

    def eval(self) -> StubModel:
        return self

    def modules(self) -> list:
        return []

    def named_modules(self) -> list:
        return []

    def to(self, *args, **kwargs) -> StubModel:
        return self

    def compile(self, **kwargs) -> None:
        self.compile_calls += 1


def stub_engine(
    budget: int,
    batch_size: int | None = None,
    max_seq_length: int = 512,
    max_padding: int | None = None,
) -> Engine:
    options = EngineOptions(
        max_batch_tokens=budget, max_batch_size=batch_size, max_padding=max_padding
    )
    return Engine(StubModel(max_seq_length), ["cpu"], options)


@pytest.fixture(scope="module")
def st_tiny(tiny_model):
    return load(tiny_model)


@pytest.fixture(scope="module")
def models(tiny_model, minilm_path, st_tiny, st_minilm):
    """name -> (a fresh fp32 model for engines, sentence-transformers' own for reference)."""
    return {"tiny": (load(tiny_model), st_tiny), "minilm": (load(minilm_path), st_minilm)}


@pytest.fixture(scope="module")
def expected(models):
    """sentence-transformers' own embeddings of MIXED, per model."""
    return {name: reference.encode(MIXED) for name, (_, reference) in models.items()}


@pytest.fixture
def encoders(monkeypatch) -> list[Encoder]:
    """Every Encoder the CLI makes, to look at its engine after the command."""
    made: list[Encoder] = []
    real_init = Encoder.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Encoder, "__init__", spy)
    return made


def embed_npy(cli, tmp_path: Path, *args: str, texts=MIXED) -> np.ndarray:
    out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}.npy"
    result = cli("embed", *args, *texts, "-o", str(out))
    assert result.code == ExitStatus.OK, result.stderr
    assert "Traceback" not in result.stderr
    return np.load(out)


# --- planning ----------------------------------------------------------------------------


def check_plan(
    lengths: np.ndarray,
    budget: int,
    batch_size: int | None,
    max_seq_length: int,
    max_padding: int | None = None,
) -> None:
    """Every property of Engine.plan (on a CPU), on one input."""
    engine = stub_engine(budget, batch_size, max_seq_length, max_padding)
    padding = engine_module.CPU_MAX_PADDING if max_padding is None else max_padding
    batches = engine.plan(np.asarray(lengths, dtype=np.int64))
    capped = np.minimum(lengths, max_seq_length)
    order = np.concatenate([b.indices for b in batches]) if batches else np.empty(0, int)
    # Every index exactly once, longest first (ties in input order).
    assert sorted(order.tolist()) == list(range(len(lengths)))
    assert order.tolist() == np.argsort(-capped, kind="stable").tolist()
    cap = batch_size or len(lengths)
    for number, batch in enumerate(batches):
        count, longest = len(batch.indices), int(capped[batch.indices].max())
        assert 1 <= count <= cap
        assert longest == capped[batch.indices[0]]
        # Within the budget once padded to its longest, unless one text alone exceeds it.
        assert count * longest <= budget or (count == 1 and longest > budget)
        assert batch.tokens == int(capped[batch.indices].sum())
        # No text padded by more than `padding`, unless alone.
        assert count == 1 or longest - int(capped[batch.indices].min()) <= padding
        if number < len(batches) - 1:  # as full as allowed: no needless small batches
            following = int(capped[batches[number + 1].indices[0]])
            full = count == min(cap, max(1, budget // max(longest, 1)))
            assert full or max(longest, 1) - following > padding


@pytest.mark.parametrize(
    ("lengths", "budget", "batch_size", "max_seq_length"),
    [
        ([], 100, None, 512),
        ([5], 100, None, 512),
        ([10] * 25, 100, None, 512),  # exactly 10 per batch
        ([3, 50, 7, 50, 1, 20, 20, 9], 100, None, 512),
        ([1000, 5, 400, 5], 100, None, 512),  # longer than the budget: a batch each
        ([1000, 900, 5, 5], 100, None, 128),  # capped at max_seq_length, then over budget
        ([1000, 900, 800, 5], 256, None, 128),  # capped: two of them fit the budget
        ([4] * 20, 1000, 3, 512),  # --batch-size caps the count
        ([0, 0, 3, 0], 8, None, 512),  # empty texts count as one token for the budget
        ([7] * 5, 7, None, 512),  # budget exactly one text
        ([150, 9, 45, 3, 8], 1024, None, 512),  # a query, a paragraph, titles: 3 batches
    ],
)
def test_plan_cases(lengths, budget, batch_size, max_seq_length):
    check_plan(np.array(lengths, dtype=np.int64), budget, batch_size, max_seq_length)


def test_a_cpu_batch_ends_where_padding_would_cost_more_than_a_batch():
    engine = stub_engine(1024)
    assert [b.indices.tolist() for b in engine.plan(np.array([150, 9, 45, 3, 8]))] == [
        [0],
        [2],
        [1, 4, 3],
    ]
    # Unbounded (as on a GPU), they share one batch padded to 150 tokens.
    assert len(stub_engine(1024, max_padding=1024).plan(np.array([150, 9, 45, 3, 8]))) == 1
    assert len(Engine(StubModel(), ["cuda"]).plan(np.array([150, 9, 45, 3, 8]))) == 1


def test_plan_properties_on_random_inputs():
    """A property test by hand (hypothesis is not installed): 400 random plans."""
    rng = np.random.default_rng(20240611)
    for _ in range(400):
        n = int(rng.integers(0, 120))
        high = int(rng.choice([8, 64, 600, 5000]))
        lengths = rng.integers(1, high, size=n)
        budget = int(rng.choice([1, 16, 100, 512, 4096, 65536]))
        batch_size = None if rng.random() < 0.5 else int(rng.integers(1, 40))
        max_seq_length = int(rng.choice([8, 128, 512, 8192]))
        max_padding = None if rng.random() < 0.5 else int(rng.choice([0, 8, 100, 10_000]))
        check_plan(lengths, budget, batch_size, max_seq_length, max_padding)


def test_default_budgets():
    assert Engine(StubModel(), ["cpu"]).budget == engine_module.CPU_BATCH_TOKENS
    assert Engine(StubModel(), ["cuda"]).budget == engine_module.GPU_BATCH_TOKENS
    int8 = Engine(StubModel(), ["cpu"], EngineOptions(quantize="int8"))
    assert int8.budget == engine_module.CPU_INT8_BATCH_TOKENS < engine_module.CPU_BATCH_TOKENS
    assert (
        Engine(StubModel(), ["cpu"], EngineOptions(quantize="int8", max_batch_tokens=99)).budget
        == 99
    )
    assert stub_engine(300).budget == 300


# --- numbers equal sentence-transformers' own ----------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "minilm"])
@pytest.mark.parametrize(
    ("budget", "batch_size"), [(None, None), (64, None), (500, None), (None, 3), (300, 2)]
)
def test_fp32_equals_encode_whatever_the_budget(models, expected, name, budget, batch_size):
    model, _ = models[name]
    engine = Engine(
        model, ["cpu"], EngineOptions(max_batch_tokens=budget, max_batch_size=batch_size)
    )
    assert_allclose(engine.encode(MIXED), expected[name], atol=1e-5, rtol=0)


def test_progress_counts_every_text_and_its_tokens(models):
    model, _ = models["tiny"]
    engine = Engine(model, ["cpu"], EngineOptions(max_batch_tokens=100))
    calls: list[tuple[int, int]] = []
    engine.encode(MIXED, progress=lambda texts, tokens: calls.append((texts, tokens)))
    lengths = np.minimum(engine.token_counts(MIXED).tokens, engine.max_seq_length)
    assert len(calls) == len(engine.plan(engine.token_counts(MIXED).tokens)) > 1
    assert sum(t for t, _ in calls) == len(MIXED)
    assert sum(k for _, k in calls) == int(lengths.sum())


def test_encoder_options_equal_encode(models):
    """Prompt, normalisation and truncated dimensions go the same way as encode's."""
    model, reference = models["tiny"]
    encoder = Encoder(model, "tiny", ["cpu"], EngineOptions(max_batch_tokens=64))
    assert encoder.engine is not None
    options = EncodeOptions(prompt="query: ", normalize=True, truncate_dim=16)
    want = reference.encode(MIXED, prompt="query: ", normalize_embeddings=True, truncate_dim=16)
    got = encoder.encode(MIXED, options)
    assert got.shape == (len(MIXED), 16)
    assert_allclose(got, want, atol=1e-5, rtol=0)
    assert encoder.truncated == 3  # 302, 702 and 202 tokens against a 128-token limit


@pytest.mark.parametrize("args", [[], ["--max-batch-tokens", "64"], ["--batch-size", "3"]], ids=str)
def test_cli_minilm_equals_encode_whatever_the_batching(cli, tmp_path, expected, args):
    out = tmp_path / "out.npy"
    result = cli("embed", "-m", "minilm", *args, *MIXED, "-o", str(out))
    assert result.code == ExitStatus.OK, result.stderr
    assert_allclose(np.load(out), expected["minilm"], atol=1e-5, rtol=0)
    assert f"2 of {len(MIXED)} text(s) were longer than {MINILM_MAX_SEQ_LENGTH}" in result.stderr


def test_cli_tiny_equals_encode_with_a_small_budget(cli, tmp_path, tiny_model, expected):
    vectors = embed_npy(cli, tmp_path, "-m", tiny_model, "--max-batch-tokens", "64")
    assert_allclose(vectors, expected["tiny"], atol=1e-5, rtol=0)


# --- several devices ---------------------------------------------------------------------


def test_two_replicas_share_the_queue(models, expected, monkeypatch):
    """cpu,cpu: two replicas, each taking batches from the one queue; same numbers."""
    model, _ = models["tiny"]
    engine = Engine(model, ["cpu", "cpu"], EngineOptions(max_batch_tokens=64))
    assert len(engine.replicas) == 2 and engine.replicas[0] is not engine.replicas[1]
    real_forward = engine_module._forward
    seen: set[int] = set()
    lock, both = threading.Lock(), threading.Event()

    def forward(replica, *args):
        with lock:
            seen.add(id(replica))
            if len(seen) == 2:
                both.set()
        # Each replica waits for the other to take a batch too: proof they share the work.
        assert both.wait(timeout=60), "only one replica took batches"
        return real_forward(replica, *args)

    monkeypatch.setattr(engine_module, "_forward", forward)
    assert len(engine.plan(engine.token_counts(MIXED).tokens)) >= 2
    assert_allclose(engine.encode(MIXED), expected["tiny"], atol=1e-5, rtol=0)
    assert seen == {id(r) for r in engine.replicas}


def test_cli_device_list_gives_the_same_numbers(cli, tmp_path, expected, encoders):
    vectors = embed_npy(
        cli, tmp_path, "-m", "minilm", "--device", "cpu,cpu", "--max-batch-tokens", "256"
    )
    assert [len(e.engine.replicas) for e in encoders] == [2]
    assert_allclose(vectors, expected["minilm"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", ["cpu,", ",cpu", "cpu,,cpu", "auto,cpu", "cpu,auto", ","])
def test_bad_device_lists_are_usage_errors(cli, tiny_model, device):
    result = cli("embed", "-m", tiny_model, "--device", device, "hello")
    assert_error(result, ExitStatus.USAGE, "--device")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("device", ["cuda:7", "cpu,cuda:1", "cuda"])
def test_cuda_without_a_gpu_is_a_usage_error(cli, tiny_model, device):
    result = cli("embed", "-m", tiny_model, "--device", device, "hello")
    assert_error(result, ExitStatus.USAGE, "cuda")


# --- int8 quantization -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "first_ffn_output", "int8_count"),
    [
        ("tiny", "layers.0.mlp.Wo", 11),  # 3 layers of Wqkv, attn.Wo, mlp.Wi, mlp.Wo; one kept
        ("minilm", "layer.0.output.dense", 36),  # 6 of q, k, v, 2 outputs, intermediate; pooler
    ],
)
def test_quantize_int8_every_linear_but_the_first_feed_forward_output(
    tiny_model, minilm_path, name, first_ffn_output, int8_count
):
    import torch

    model = load(tiny_model if name == "tiny" else minilm_path)
    quantized = quantize_int8(model)
    assert quantized is model  # in place: no fp32 copy kept, no time spent making one
    kept = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]
    turned = [m for m in model.modules() if type(m).__name__ == "Int8Linear"]
    assert len(kept) == 1 and kept[0].endswith(f".{first_ffn_output}"), kept
    assert len(turned) == int8_count
    for module in turned:
        weight, _ = torch.ops.quantized.linear_unpack(module._packed)
        # One scale per output channel (what keeps the feed-forward outputs accurate), and
        # 7-bit values: u8 x s8 pair sums stay within int16 on CPUs without VNNI.
        assert weight.qscheme() == torch.per_channel_affine
        values = weight.int_repr()
        assert int(values.min()) >= -64 and int(values.max()) <= 63


def test_int8_from_the_shell_says_nothing_on_stderr():
    """torch warns that its quantized tensors are deprecated: not the user's concern."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    args = ["embed", "a cat", "-m", "minilm", "--quantize", "int8", "--no-cache", "--no-server"]
    done = subprocess.run(
        [sys.executable, "-m", "modernbert_cli", *args, "-f", "jsonl"],
        capture_output=True,
        cwd=ROOT,
        env=os.environ,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr.decode() == ""


def test_int8_linear_does_not_saturate_on_inputs_of_both_signs():
    """fbgemm's AVX2 kernel sums u8 x s8 pairs in int16: 8-bit weights and 8-bit
    activations of both signs overflow it (about 9% error here); 7-bit weights do not."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(768, 2304))
    x = torch.randn(64, 768) * 3
    expected = model(x).detach()
    quantize_int8(model)
    error = (model(x) - expected).norm() / expected.norm()
    assert float(error) < 0.02


def test_quantize_int8_on_minilm_stays_close_to_fp32(cli, tmp_path, st_minilm, encoders):
    vectors = embed_npy(
        cli,
        tmp_path,
        "-m",
        "minilm",
        "--quantize",
        "int8",
        "-i",
        str(SAMPLES / "corpus.txt"),
        texts=(),
    )
    reference = st_minilm.encode(CORPUS_LINES)
    assert vectors.shape == reference.shape == (len(CORPUS_LINES), 384)
    assert not np.allclose(vectors, reference, atol=1e-4)  # int8 really ran
    assert sum(type(m).__name__ == "Int8Linear" for m in encoders[0].engine.replicas[0].modules())
    assert cosines(vectors, reference).mean() >= 0.99  # the bar; measured ≈ 0.995


@pytest.mark.parametrize("device", ["cuda", "meta"])
def test_quantize_int8_off_the_cpu_is_refused(device):
    """Checked in the constructor, before the model is touched (no GPU needed)."""
    with pytest.raises(UsageError, match="quantize='int8': runs on the CPU only"):
        Engine(StubModel(), ["cpu", device], EngineOptions(quantize="int8"))
    with pytest.raises(UsageError, match="quantize='int8': runs on the CPU only"):
        Engine(StubModel(), [device], EngineOptions(quantize="int8"))


# --- dtypes ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs_on_the_cpu(cli, tmp_path, tiny_model, expected, dtype):
    """Both run on a CPU with this torch; the numbers stay close to fp32."""
    vectors = embed_npy(cli, tmp_path, "-m", tiny_model, "--dtype", dtype)
    assert vectors.dtype == np.float32 and vectors.shape == expected["tiny"].shape
    assert not np.allclose(vectors, expected["tiny"], atol=1e-6)  # the dtype took effect
    assert cosines(vectors, expected["tiny"]).min() >= 0.99


def test_float32_dtype_is_exact(cli, tmp_path, tiny_model, expected):
    vectors = embed_npy(cli, tmp_path, "-m", tiny_model, "--dtype", "float32")
    assert_allclose(vectors, expected["tiny"], atol=1e-5, rtol=0)


# --- torch.compile -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "mode", "expected_texts", "compiled"),
    [
        ("cpu", "auto", COMPILE_MIN_TEXTS * 10, False),  # never on a CPU by itself
        ("cpu", "auto", None, False),
        ("cpu", "on", 1, True),
        ("cpu", "off", COMPILE_MIN_TEXTS, False),
        ("cuda", "auto", COMPILE_MIN_TEXTS, True),  # a big job on a GPU
        ("cuda", "auto", COMPILE_MIN_TEXTS - 1, False),
        ("cuda", "auto", None, False),  # size unknown: not worth the risk
        ("cuda", "off", COMPILE_MIN_TEXTS * 10, False),
    ],
)
def test_compile_decision(device, mode, expected_texts, compiled):
    model = StubModel()
    engine = Engine(model, [device], EngineOptions(compile=mode), expected_texts)
    assert engine.compiled is compiled
    assert model.compile_calls == int(compiled)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own
def test_compile_on_cpu_gives_the_same_numbers(cli, tmp_path, tiny_model, expected, encoders):
    """torch.compile on a CPU works: ≈ 22 s with a cold inductor cache, 8 s warm (2 cores)."""
    vectors = embed_npy(
        cli, tmp_path, "-m", tiny_model, "--compile", "on", "--max-batch-tokens", "512"
    )
    assert [e.engine.compiled for e in encoders] == [True]
    assert_allclose(vectors, expected["tiny"], atol=1e-4, rtol=0)


# --- the fallback: SentenceTransformer.encode ----------------------------------------------


class NoPreprocess:
    """A model the engine cannot drive (no ``preprocess``): everything else delegated."""

    def __init__(self, model) -> None:
        self._model = model

    def __getattr__(self, name: str):
        if name == "preprocess":
            raise AttributeError(name)
        return getattr(self._model, name)


def test_model_without_preprocess_uses_encode(st_minilm, expected):
    encoder = Encoder(NoPreprocess(st_minilm), "stub", ["cpu"])
    assert encoder.engine is None
    assert_allclose(encoder.encode(MIXED), expected["minilm"], atol=1e-6, rtol=0)
    assert encoder.truncated == 2  # still counted for the note
    with pytest.raises(UsageError, match="not a plain text model"):
        Encoder(NoPreprocess(st_minilm), "stub", ["cpu", "cpu"])
    with pytest.raises(UsageError, match="not a plain text model"):
        Encoder(NoPreprocess(st_minilm), "stub", ["cpu"], EngineOptions(quantize="int8"))


def test_cli_falls_back_to_encode(cli, tmp_path, monkeypatch, expected, encoders):
    monkeypatch.setattr(encoder_module, "_engine_can_run", lambda model: False)
    out = tmp_path / "out.npy"
    result = cli("embed", "-m", "minilm", *MIXED, "-o", str(out))
    assert result.code == ExitStatus.OK, result.stderr
    assert [e.engine for e in encoders] == [None]
    assert_allclose(np.load(out), expected["minilm"], atol=1e-5, rtol=0)
    assert f"2 of {len(MIXED)} text(s) were longer than" in result.stderr
    result = cli("embed", "-m", "minilm", "--device", "cpu,cpu", "hello")
    assert_error(result, ExitStatus.USAGE, "not a plain text model")


# --- counting tokens ---------------------------------------------------------------------


def test_token_counts_count_only_what_the_limit_needs(st_minilm):
    from modernbert_cli.engine import token_counts

    tokenizer, limit = st_minilm.tokenizer, 256
    short = "a short sentence"
    long = "word " * 20_000  # far past the limit: only a prefix is tokenised
    # Words over 100 characters become one [UNK] each, so a prefix of the usual size
    # holds fewer tokens than the limit: the whole text must then be counted.
    unknowns = " ".join(["x" * 150] * 400)
    counted = token_counts(tokenizer, [short, long, unknowns], limit=limit)
    exact = token_counts(tokenizer, [short, long, unknowns])
    assert counted.tokens[0] == exact.tokens[0]  # short texts are counted exactly
    assert limit < counted.tokens[1] <= exact.tokens[1] == 20_002  # a lower bound
    assert counted.tokens[2] == exact.tokens[2] == 402  # the fallback counted it all
    # The model is given the counted prefix of the long text, and all of the others.
    assert counted.needed.tolist() == [len(short), counted.needed[1], len(unknowns)]
    assert counted.needed[1] < 5_000
    assert exact.needed.tolist() == [len(short), len(long), len(unknowns)]


def clipped_and_whole(tokenizer, texts: list[str], prompt: str, limit: int):
    """input_ids as the model gets them: from the clipped texts, and from the whole texts."""
    from modernbert_cli.engine import token_counts

    counts = token_counts(tokenizer, texts, prompt, limit)
    clipped = [text[:end] for text, end in zip(texts, counts.needed, strict=True)]

    def ids(batch: list[str]) -> list[list[int]]:
        encoded = tokenizer([prompt + t for t in batch], truncation=True, max_length=limit)
        return encoded["input_ids"]

    return counts, ids(clipped), ids(texts)


# Long documents of several shapes: spaces, newlines only, runs of blanks, accents and
# CJK characters, a text whose prefix holds no space at all, and one just past the cap.
def long_documents(limit: int) -> list[str]:
    words = ["Ünïcode", "naïve", "façade", "數據", "river", "county", "école", "42,000"]
    prose = " ".join(words[i % len(words)] + ("." if i % 7 == 0 else "") for i in range(9000))
    return [
        prose,
        "\n".join(words[i % len(words)] for i in range(9000)),
        "  \n ".join(words[i % len(words)] for i in range(9000)),
        "數據" * 6000,  # no space: cut nowhere
        "x" * (limit * 16 - 3) + " tail words here",
    ]


@pytest.mark.parametrize("prompt", ["", "query: "])
def test_clipped_documents_give_the_same_input_ids(st_minilm, prompt):
    limit = 256
    texts = long_documents(limit)
    counts, clipped, whole = clipped_and_whole(st_minilm.tokenizer, texts, prompt, limit)

    assert clipped == whole
    needed = counts.needed.tolist()
    assert needed[0] < len(texts[0]) and needed[1] < len(texts[1]) and needed[2] < len(texts[2])
    assert all(texts[i][needed[i]] in " \n" for i in range(3))  # cut between words
    assert needed[3:] == [len(texts[3]), len(texts[4])]


def test_clipped_documents_give_the_same_ids_with_byte_level_bpe():
    """ModernBERT's own tokenizer is a byte-level BPE (GPT-2 style): one is trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    limit = 128
    texts = long_documents(limit)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["[CLS]", "[SEP]", "[PAD]"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS_LINES + [t[:5000] for t in texts], trainer)
    bpe.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 0), ("[SEP]", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="[PAD]")

    counts, clipped, whole = clipped_and_whole(tokenizer, texts, "", limit)

    assert clipped == whole
    assert (counts.needed[:3] < [len(t) for t in texts[:3]]).all()


def test_models_with_lengths_per_task_get_whole_texts(models):
    """A ColBERT-style document_length may exceed max_seq_length: nothing is clipped."""
    model, _ = models["tiny"]
    engine = Engine(model, ["cpu"], EngineOptions())
    long = MIXED[5]
    assert engine.token_counts([long]).needed[0] < len(long)

    model[0].document_length = 512
    try:
        engine = Engine(model, ["cpu"], EngineOptions())
        assert engine.token_counts([long]).needed[0] == len(long)
    finally:
        del model[0].document_length
