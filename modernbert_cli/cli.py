"""The command line: parse options, call the core, render, map errors to exit codes.

Each command reads and checks all of its input first and loads the model only
when there is something valid to embed. torch and sentence-transformers are
imported inside ``model.load`` and ``scoring``, never at module level, so ``--help``,
``--version`` and input errors answer at once.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from enum import Enum
from itertools import islice
from typing import TYPE_CHECKING, Annotated, Any

import typer

try:  # typer >= 0.2x vendors its own click; its exceptions are the ones raised
    from typer import _click as click
except ImportError:  # older typer runs on click itself
    import click
from rich.console import Console

from modernbert_cli import __version__, render
from modernbert_cli.cache import DEFAULT_MAX_MB
from modernbert_cli.engine import CPU_BATCH_TOKENS, GPU_BATCH_TOKENS, EngineOptions
from modernbert_cli.errors import CliError, ExitStatus, StdoutClosed, UsageError
from modernbert_cli.inputs import (
    InputSpec,
    Stdin,
    Text,
    iter_texts,
    read_file,
    read_texts,
    scan,
)
from modernbert_cli.model import DEFAULT_MODEL, MODEL_ENV, ModelSpec

if TYPE_CHECKING:
    from modernbert_cli.encoder import Encoder
    from modernbert_cli.saved import SavedCorpus

# Texts read, embedded and written at a time: large enough to keep a GPU busy,
# small enough that memory does not depend on the size of the input.
CHUNK_TEXTS = 8192
# Below this many texts a job is over before a progress bar would help.
_PROGRESS_MIN_TEXTS = 512

PROG = "modernbert-cli"

app = typer.Typer(
    name=PROG,
    help=(
        "Sentence similarity from the command line with ModernBERT embeddings.\n\n"
        "Texts come from arguments, files (-i) or stdin, one per line. Tables on a "
        "terminal, JSON lines / CSV when piped; --format always wins."
    ),
    epilog=(
        f"Examples:\n\n"
        f'  {PROG} similar "what county is hayden in" -i sample_inputs/hayden.txt\n\n'
        f"  {PROG} matrix -i sample_inputs/hayden.txt\n\n"
        f"  grep -i volcano notes.txt | {PROG} embed -o volcano.npy"
    ),
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Switch(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


class Quantize(str, Enum):
    none = "none"
    int8 = "int8"


class Precision(str, Enum):
    float32 = "float32"
    int8 = "int8"
    uint8 = "uint8"
    binary = "binary"
    ubinary = "ubinary"


class Metric(str, Enum):
    cosine = "cosine"
    dot = "dot"
    euclidean = "euclidean"
    manhattan = "manhattan"


EmbedFormat = Enum("EmbedFormat", {f: f for f in render.EMBED_FORMATS}, type=str)
SimilarFormat = Enum("SimilarFormat", {f: f for f in render.SIMILAR_FORMATS}, type=str)
MatrixFormat = Enum("MatrixFormat", {f: f for f in render.MATRIX_FORMATS}, type=str)

_MODEL = "Model"
_INPUT = "Input"
_OUTPUT = "Output"
_CACHE = "Cache"
CACHE_MAX_ENV = "MODERNBERT_CLI_CACHE_MAX_MB"

# --- options every command shares -------------------------------------------------------


def _model_options() -> list[inspect.Parameter]:
    """The options that say how to run the model, shared by every command (see run_options)."""

    def option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
        return inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
        )

    return [
        option(
            "model",
            Annotated[
                str,
                typer.Option(
                    "--model",
                    "-m",
                    envvar=MODEL_ENV,
                    show_envvar=True,
                    rich_help_panel=_MODEL,
                    help="sentence-transformers model id, local directory, or alias: "
                    "modernbert-base, modernbert-large, minilm (offline).",
                ),
            ],
            DEFAULT_MODEL,
        ),
        option(
            "device",
            Annotated[
                str,
                typer.Option(
                    "--device",
                    rich_help_panel=_MODEL,
                    help="auto, cpu, cuda, cuda:N or mps; a comma list (cuda:0,cuda:1) "
                    "shares the work.",
                ),
            ],
            "auto",
        ),
        option(
            "max_seq_length",
            Annotated[
                int | None,
                typer.Option(
                    "--max-seq-length",
                    min=1,
                    show_default=False,
                    rich_help_panel=_MODEL,
                    help="Token limit per text (default: the model's own, 8192 for ModernBERT). "
                    "Longer texts are truncated, with a count on stderr.",
                ),
            ],
            None,
        ),
        option(
            "max_batch_tokens",
            Annotated[
                int | None,
                typer.Option(
                    "--max-batch-tokens",
                    min=1,
                    show_default=False,
                    rich_help_panel=_MODEL,
                    help=f"Padded tokens per batch \\[default: {CPU_BATCH_TOKENS} on a CPU, "
                    f"{GPU_BATCH_TOKENS} on a GPU].",
                ),
            ],
            None,
        ),
        option(
            "batch_size",
            Annotated[
                int | None,
                typer.Option(
                    "--batch-size",
                    min=1,
                    show_default=False,
                    rich_help_panel=_MODEL,
                    help="At most this many texts per batch (default: the token budget decides).",
                ),
            ],
            None,
        ),
        option(
            "dtype",
            Annotated[
                DType,
                typer.Option(
                    "--dtype",
                    rich_help_panel=_MODEL,
                    help="Weights' precision; auto = bfloat16 on a GPU that has it, "
                    "float32 elsewhere.",
                ),
            ],
            DType.auto,
        ),
        option(
            "compile",
            Annotated[
                Switch,
                typer.Option(
                    "--compile",
                    rich_help_panel=_MODEL,
                    help="torch.compile the model; auto = on a GPU, for jobs big enough "
                    "to repay it.",
                ),
            ],
            Switch.auto,
        ),
        option(
            "quantize",
            Annotated[
                Quantize,
                typer.Option(
                    "--quantize",
                    rich_help_panel=_MODEL,
                    help="int8: dynamic int8 Linear layers on a CPU (up to 2x faster; "
                    "cosine to float32 above 0.99 on MiniLM).",
                ),
            ],
            Quantize.none,
        ),
        option(
            "trust_remote_code",
            Annotated[
                bool,
                typer.Option(
                    "--trust-remote-code",
                    rich_help_panel=_MODEL,
                    help="Allow the model's own Python code to run (only for models you trust).",
                ),
            ],
            False,
        ),
        option(
            "no_cache",
            Annotated[
                bool,
                typer.Option(
                    "--no-cache",
                    rich_help_panel=_CACHE,
                    help="Neither read nor write the embedding cache.",
                ),
            ],
            False,
        ),
        option(
            "cache_max_mb",
            Annotated[
                int,
                typer.Option(
                    "--cache-max-mb",
                    min=1,
                    envvar=CACHE_MAX_ENV,
                    show_envvar=True,
                    rich_help_panel=_CACHE,
                    help="Bound on the cache file; least recently used entries go first.",
                ),
            ],
            DEFAULT_MAX_MB,
        ),
        option(
            "no_server",
            Annotated[
                bool,
                typer.Option(
                    "--no-server",
                    rich_help_panel=_MODEL,
                    help="Work in-process even when 'modernbert-cli serve' runs this model.",
                ),
            ],
            False,
        ),
        option(
            "quiet",
            Annotated[
                bool,
                typer.Option("--quiet", "-q", help="No notes or progress on stderr; errors only."),
            ],
            False,
        ),
    ]


_MODEL_OPTIONS = _model_options()


@dataclass(frozen=True)
class Run:
    """How to run the model: the shared options of every command, in one value."""

    model: str
    device: str
    max_seq_length: int | None
    max_batch_tokens: int | None
    batch_size: int | None
    dtype: DType
    compile: Switch
    quantize: Quantize
    trust_remote_code: bool
    no_cache: bool
    cache_max_mb: int
    no_server: bool
    quiet: bool

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(self.model, self.device, self.max_seq_length, self.trust_remote_code)

    def vector_settings(self, dtype: str) -> dict[str, Any]:
        """The settings that change a vector: part of cache keys and server keys."""
        return {
            "max_seq_length": self.max_seq_length,
            "dtype": dtype,
            "quantize": self.quantize.value,
            # The model's own code may compute other numbers than transformers' own.
            "trust_remote_code": self.trust_remote_code,
        }

    def identity(self) -> tuple[str, dict[str, Any]]:
        """The model's canonical name and the settings that change its vectors."""
        from modernbert_cli import model as model_loading
        from modernbert_cli.engine import effective_dtype

        name = model_loading.canonical_name(self.model)
        return name, self.vector_settings(effective_dtype(self.device, self.dtype.value))

    def server_key(self) -> str:
        """Which warm server may answer this run: one with the same model and settings."""
        from modernbert_cli.client import server_key

        return server_key(*self.identity())

    def argv(self) -> list[str]:
        """These options as command-line arguments (to start a server with them)."""
        args = ["-m", self.model, "--device", self.device, "--dtype", self.dtype.value]
        args += ["--compile", self.compile.value, "--quantize", self.quantize.value]
        for flag, value in (
            ("--max-seq-length", self.max_seq_length),
            ("--max-batch-tokens", self.max_batch_tokens),
            ("--batch-size", self.batch_size),
        ):
            if value is not None:
                args += [flag, str(value)]
        if self.trust_remote_code:
            args.append("--trust-remote-code")
        return args

    @property
    def engine(self) -> EngineOptions:
        return EngineOptions(
            max_batch_tokens=self.max_batch_tokens,
            max_batch_size=self.batch_size,
            dtype=self.dtype.value,
            compile=self.compile.value,
            quantize=self.quantize.value,
        )


def run_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the shared model options; it receives them as one ``run: Run``."""
    names = [p.name for p in _MODEL_OPTIONS]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        run = Run(**{name: kwargs.pop(name) for name in names})
        command(run=run, **kwargs)

    own = [
        p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "run"
    ]
    wrapper.__signature__ = inspect.Signature([*own, *_MODEL_OPTIONS])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in (*own, *_MODEL_OPTIONS)}
    return wrapper


InputOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        "-i",
        help="Read texts from FILE (repeatable; - for stdin). One text per line; "
        ".jsonl, .csv and .tsv by field/column.",
        rich_help_panel=_INPUT,
        show_default=False,
    ),
]
FieldOpt = Annotated[
    str | None,
    typer.Option(
        "--field",
        help="JSON-lines field holding the text \\[default: text].",
        rich_help_panel=_INPUT,
    ),
]
ColumnOpt = Annotated[
    str | None,
    typer.Option(
        "--column",
        help="CSV/TSV column holding the text: a header name or a number from 1.",
        rich_help_panel=_INPUT,
    ),
]
DocumentsOpt = Annotated[
    bool,
    typer.Option(
        "--documents",
        help="Each file is one text (not one per line); a folder means every text file under it.",
        rich_help_panel=_INPUT,
    ),
]
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        help="Write to FILE (atomically) instead of stdout; the format follows its extension.",
        rich_help_panel=_OUTPUT,
        show_default=False,
    ),
]
MetricOpt = Annotated[
    Metric | None,
    typer.Option(
        "--metric",
        help="Similarity function \\[default: the model's own, usually cosine].",
        rich_help_panel=_OUTPUT,
        show_default=False,
    ),
]


# --- what every command does around its own work -----------------------------------------


@dataclass
class Session:
    """Streams and settings of one invocation, shared by the steps of a command."""

    quiet: bool
    stderr: Console
    stdin: Stdin
    _live: bool = False  # a progress bar is showing: no spinner inside it

    @classmethod
    def start(cls, quiet: bool) -> Session:
        stream = getattr(sys.stdin, "buffer", None)
        is_tty = bool(sys.stdin is not None and sys.stdin.isatty())
        return cls(quiet, Console(stderr=True, highlight=False), Stdin(stream, is_tty))

    @property
    def stdout_is_terminal(self) -> bool:
        return sys.stdout.isatty()

    @property
    def stdout_width(self) -> int:
        return Console().width

    def note(self, message: str) -> None:
        if not self.quiet:
            self.stderr.print(f"[dim]{PROG}:[/] {message}", markup=True, soft_wrap=True)

    def warn(self, message: str) -> None:
        """A warning: shown even with -q (the cache being off is worth knowing)."""
        from rich.markup import escape

        self.stderr.print(f"[dim]{PROG}:[/] [yellow]{escape(message)}[/]", soft_wrap=True)

    def report_skipped(self, skipped: dict[str, int]) -> None:
        if skipped:
            parts = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
            self.note(f"skipped {sum(skipped.values())} file(s) or folder(s): {parts}")

    @contextmanager
    def encoder(self, run: Run, expected_texts: int) -> Iterator[Encoder]:
        """An Encoder that asks the cache first and loads the model on first need."""
        from modernbert_cli import model as model_loading
        from modernbert_cli.cache import EmbeddingCache, default_path
        from modernbert_cli.encoder import Encoder

        files = model_loading.ModelFiles.find(run.model)  # a bad path fails here, torch-free

        def load() -> tuple[Any, list[str]]:
            quiet = self.quiet or not self.stderr.is_terminal or self._live
            spinner = self.stderr.status(f"loading {run.model} …", spinner="dots")
            with nullcontext() if quiet else spinner:
                loaded = model_loading.load(run.spec)  # on the first device
                return loaded, model_loading.pick_devices(run.device)

        cache = None
        if not run.no_cache:
            cache = EmbeddingCache(default_path(), run.cache_max_mb << 20, warn=self.warn)
        name, settings = run.identity()
        server = None
        if not run.no_server:
            from modernbert_cli.client import ServerClient, ServerError, socket_path

            key = run.server_key()
            with suppress(OSError, ServerError):  # no runtime folder of ours: no server either
                if socket_path(key).exists():  # a server for this very model and settings
                    server = ServerClient(socket_path(key), key)
        encoder = Encoder(
            name=name,
            engine_options=run.engine,
            expected_texts=expected_texts,
            loader=load,
            cache=cache,
            server=server,
            note=self.note,
            files=files,
            settings=settings,
        )
        try:
            yield encoder
        finally:
            encoder.close()

    @contextmanager
    def progress(self, encoder: Encoder, total: int) -> Iterator[None]:
        """A progress bar on stderr (texts, tokens/s, time left) for jobs worth one."""
        if self.quiet or not self.stderr.is_terminal or total < _PROGRESS_MIN_TEXTS:
            yield
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        tokens = [0]
        started = time.monotonic()
        with Progress(
            TextColumn("embedding"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,} texts"),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=self.stderr,
            transient=True,
        ) as bar:
            task = bar.add_task("embed", total=total, rate="")

            def advance(texts: int, batch_tokens: int) -> None:
                tokens[0] += batch_tokens
                rate = tokens[0] / max(time.monotonic() - started, 1e-6)
                bar.update(task, advance=texts, rate=f"{rate:,.0f} tokens/s" if tokens[0] else "")

            encoder.progress = advance
            self._live = True
            try:
                yield
            finally:
                encoder.progress = None
                self._live = False

    def report_truncated(self, truncated: int, total: int, limit: int) -> None:
        if truncated:
            self.note(
                f"[yellow]{truncated} of {total} text(s) were longer than {limit} tokens and "
                "were truncated[/] (see --max-seq-length)"
            )


def _input_spec(
    texts: Sequence[str],
    inputs: list[str] | None,
    field: str | None,
    column: str | None,
    documents: bool,
) -> InputSpec:
    return InputSpec(
        texts=tuple(texts),
        files=tuple(inputs or ()),
        field=field,
        column=column,
        documents=documents,
    )


def _chunks(texts: Iterable[Text], size: int | None = None) -> Iterator[list[Text]]:
    size = size or CHUNK_TEXTS  # read at call time, not fixed when the module loads
    iterator = iter(texts)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Sentence similarity from the command line with ModernBERT embeddings."""


# --- embed -------------------------------------------------------------------------------


@app.command(
    epilog=f"Examples:\n\n"
    f'  {PROG} embed "a cat sat on the mat"\n\n'
    f"  {PROG} embed -i sample_inputs/corpus.txt -o corpus.jsonl\n\n"
    f"  {PROG} embed -i sample_inputs/corpus.txt -o corpus.npy --precision int8"
)
@run_options
def embed(
    texts: Annotated[
        list[str] | None, typer.Argument(help="Texts to embed (- reads stdin).", show_default=False)
    ] = None,
    inputs: InputOpt = None,
    field: FieldOpt = None,
    column: ColumnOpt = None,
    documents: DocumentsOpt = False,
    fmt: Annotated[
        EmbedFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="Output format \\[default: table on a terminal, jsonl when piped].",
            rich_help_panel=_OUTPUT,
            show_default=False,
        ),
    ] = None,
    output: OutputOpt = None,
    normalize: Annotated[
        bool,
        typer.Option(
            "--normalize/--no-normalize",
            help="L2-normalise the embeddings (on top of what the model does).",
            rich_help_panel=_OUTPUT,
        ),
    ] = False,
    precision: Annotated[
        Precision,
        typer.Option(
            "--precision",
            help="Quantize the embeddings (sentence-transformers' quantize_embeddings).",
            rich_help_panel=_OUTPUT,
        ),
    ] = Precision.float32,
    truncate_dim: Annotated[
        int | None,
        typer.Option(
            "--truncate-dim",
            min=1,
            help="Keep the first N dimensions (Matryoshka models).",
            rich_help_panel=_OUTPUT,
            show_default=False,
        ),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt", help="Text put before every input, e.g. 'query: '.", rich_help_panel=_MODEL
        ),
    ] = None,
    prompt_name: Annotated[
        str | None,
        typer.Option(
            "--prompt-name", help="One of the model's named prompts.", rich_help_panel=_MODEL
        ),
    ] = None,
    *,
    run: Run,
) -> None:
    """Embed texts: one vector per text, as a table, JSON lines, CSV/TSV or .npy."""
    from modernbert_cli.encoder import EncodeOptions

    session = Session.start(run.quiet)
    fmt_name = render.choose_format(
        fmt and fmt.value, output, render.EMBED_FORMATS, "jsonl", session.stdout_is_terminal
    )
    spec = _input_spec(texts or (), inputs, field, column, documents)
    found = scan(spec, session.stdin)
    session.report_skipped(found.skipped)
    options = EncodeOptions(
        normalize=normalize,
        precision=precision.value,
        truncate_dim=truncate_dim,
        prompt=prompt,
        prompt_name=prompt_name,
    )
    with session.encoder(run, found.count) as encoder:
        encoder.check(options)
        # Read, embed and write a chunk at a time: memory stays flat however long the input.
        with (
            render.open_output(output, binary=fmt_name == "npy") as stream,
            session.progress(encoder, found.count),
        ):
            meta = {
                "model": encoder.name,
                "precision": precision.value,
                "normalized": normalize,
                "prompt": prompt,
                "prompt_name": prompt_name,
                "truncate_dim": truncate_dim,
            }
            writer = render.EmbeddingsWriter(stream, fmt_name, meta, path=output)
            for chunk in _chunks(iter_texts(spec, session.stdin)):
                writer.write(chunk, encoder.encode([t.text for t in chunk], options))
            writer.close()
    session.report_truncated(encoder.truncated, found.count, encoder.max_seq_length)


# --- similar -----------------------------------------------------------------------------


@app.command(
    epilog=f"Examples:\n\n"
    f'  {PROG} similar "what county is hayden in" -i sample_inputs/hayden.txt\n\n'
    f"  {PROG} similar --queries sample_inputs/queries.txt -i sample_inputs/corpus.txt -k 3\n\n"
    f'  grep -v "^#" notes.txt | {PROG} similar "backups" -k 5 | jq -r .text\n\n'
    f'  {PROG} similar "volcanic eruptions" --documents -i sample_inputs/notes/'
)
@run_options
def similar(
    args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="QUERY [TEXT]...",
            help="The query, then corpus texts (with --queries, all are corpus texts).",
            show_default=False,
        ),
    ] = None,
    inputs: InputOpt = None,
    field: FieldOpt = None,
    column: ColumnOpt = None,
    documents: DocumentsOpt = False,
    queries: Annotated[
        str | None,
        typer.Option(
            "--queries",
            help="Score every query in FILE (one per line) against the corpus, embedded once.",
            rich_help_panel=_INPUT,
            show_default=False,
        ),
    ] = None,
    embeddings: Annotated[
        str | None,
        typer.Option(
            "--embeddings",
            help="Corpus embeddings saved by embed (.jsonl/.json; .npy with its texts via -i).",
            rich_help_panel=_INPUT,
            show_default=False,
        ),
    ] = None,
    top_k: Annotated[
        int,
        typer.Option("--top-k", "-k", min=1, help="Results per query.", rich_help_panel=_OUTPUT),
    ] = 10,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help="Only results scoring at least this.",
            rich_help_panel=_OUTPUT,
            show_default=False,
        ),
    ] = None,
    metric: MetricOpt = None,
    fmt: Annotated[
        SimilarFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="Output format \\[default: table on a terminal, jsonl when piped].",
            rich_help_panel=_OUTPUT,
            show_default=False,
        ),
    ] = None,
    output: OutputOpt = None,
    *,
    run: Run,
) -> None:
    """Rank texts by similarity to a query: the best matches first."""
    from modernbert_cli import saved, scoring
    from modernbert_cli.encoder import EncodeOptions

    session = Session.start(run.quiet)
    fmt_name = render.choose_format(
        fmt and fmt.value, output, render.SIMILAR_FORMATS, "jsonl", session.stdout_is_terminal
    )
    args = list(args or ())
    if queries is not None:
        query_texts = read_file(queries, InputSpec(field=field, column=column), session.stdin)
    elif not args:
        raise UsageError("missing QUERY: give a query, or many with --queries FILE")
    else:
        query = args.pop(0)
        if not query.strip():
            raise UsageError("QUERY is empty")
        query_texts = [Text(query, "<query>")]

    spec = _input_spec(args, inputs, field, column, documents)
    stored = None
    if embeddings is not None:
        labels = read_texts(spec, session.stdin).texts if (args or inputs) else []
        stored = saved.load(embeddings, labels)
        corpus_size = len(stored.texts)
    else:
        found = scan(spec, session.stdin, what="corpus")
        session.report_skipped(found.skipped)
        corpus_size = found.count

    options = EncodeOptions()
    with session.encoder(run, len(query_texts) + corpus_size) as encoder:
        metric_name = metric.value if metric else encoder.similarity_fn_name
        best = scoring.TopK(len(query_texts), metric_name, k=top_k, threshold=threshold)
        query_vectors = encoder.encode([q.text for q in query_texts], options, role="query")
        if stored is not None:
            _check_stored(stored, embeddings, encoder, query_vectors.shape[1], session)
            best.add(query_vectors, stored.embeddings, stored.texts)
        else:
            # The corpus streams through in chunks; only the best k per query are kept.
            with session.progress(encoder, corpus_size):
                for chunk in _chunks(iter_texts(spec, session.stdin)):
                    vectors = encoder.encode([t.text for t in chunk], options, role="document")
                    best.add(query_vectors, vectors, chunk)
    session.report_truncated(
        encoder.truncated, len(query_texts) + corpus_size, encoder.max_seq_length
    )
    with render.open_output(output) as stream:
        render.write_hits(stream, fmt_name, query_texts, best.results(), metric_name)


def _check_stored(
    stored: SavedCorpus, path: str, encoder: Encoder, dimensions: int, session: Session
) -> None:
    """Saved embeddings must come from the model that embeds the queries."""
    if stored.model is not None and stored.model != encoder.name:
        raise UsageError(
            f"--embeddings {path} was made with model '{stored.model}', not "
            f"'{encoder.name}': pass -m {stored.model}"
        )
    if stored.embeddings.shape[1] != dimensions:
        raise UsageError(
            f"--embeddings {path} has {stored.embeddings.shape[1]} dimensions but model "
            f"'{encoder.name}' makes {dimensions}: use the model that made them"
        )
    if encoder.prompt_for("document"):
        session.note(
            f"model '{encoder.name}' has a document prompt; the saved embeddings should be "
            "made with: embed --prompt-name document"
        )


# --- matrix ------------------------------------------------------------------------------


@app.command(
    epilog=f"Examples:\n\n"
    f"  {PROG} matrix -i sample_inputs/hayden.txt\n\n"
    f"  {PROG} matrix -i sample_inputs/hayden.txt --format list\n\n"
    f"  {PROG} matrix -i sample_inputs/queries.txt --against sample_inputs/corpus.txt "
    f"-o scores.csv\n\n"
    f"  {PROG} matrix --pairwise -i sample_inputs/pairs.tsv --format tsv"
)
@run_options
def matrix(
    texts: Annotated[
        list[str] | None,
        typer.Argument(help="Texts to compare (- reads stdin).", show_default=False),
    ] = None,
    inputs: InputOpt = None,
    field: FieldOpt = None,
    column: ColumnOpt = None,
    documents: DocumentsOpt = False,
    against: Annotated[
        str | None,
        typer.Option(
            "--against",
            help="Score the inputs against the texts of FILE (N×M) instead of each other.",
            rich_help_panel=_INPUT,
            show_default=False,
        ),
    ] = None,
    pairwise: Annotated[
        bool,
        typer.Option(
            "--pairwise",
            help="Score input i with line i of --against (or the two columns of one CSV/TSV file).",
            rich_help_panel=_INPUT,
        ),
    ] = False,
    metric: MetricOpt = None,
    fmt: Annotated[
        MatrixFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="Output format \\[default: table on a terminal; csv when piped, tsv with "
            "--pairwise].",
            rich_help_panel=_OUTPUT,
            show_default=False,
        ),
    ] = None,
    output: OutputOpt = None,
    *,
    run: Run,
) -> None:
    """Score texts against each other: an N×N matrix, N×M with --against, or pairs."""
    from modernbert_cli import scoring
    from modernbert_cli.encoder import EncodeOptions
    from modernbert_cli.inputs import read_pairs

    session = Session.start(run.quiet)
    fmt_name = render.choose_format(
        fmt and fmt.value,
        output,
        render.MATRIX_FORMATS,
        "tsv" if pairwise else "csv",
        session.stdout_is_terminal,
    )
    spec = _input_spec(texts or (), inputs, field, column, documents)
    if pairwise and against is None:
        rows, columns = read_pairs(spec, session.stdin)
    else:
        rows = read_texts(spec, session.stdin).texts
        columns = (
            read_file(
                against, InputSpec(field=field, column=column, documents=documents), session.stdin
            )
            if against
            else rows
        )
    if pairwise and len(rows) != len(columns):
        raise UsageError(
            f"--pairwise needs as many inputs as --against texts: {len(rows)} vs {len(columns)}"
        )
    if fmt_name == "table" and not pairwise:
        render.check_table_fits(len(rows), len(columns), session.stdout_width)

    # Every score needs every embedding: a matrix is held whole (csv/tsv stream its rows).
    total = len(rows) + (0 if columns is rows else len(columns))
    options = EncodeOptions()
    with session.encoder(run, total) as encoder, session.progress(encoder, total):
        row_vectors = encoder.encode([t.text for t in rows], options)
        column_vectors = (
            row_vectors if columns is rows else encoder.encode([t.text for t in columns], options)
        )
        metric_name = metric.value if metric else encoder.similarity_fn_name
    session.report_truncated(encoder.truncated, total, encoder.max_seq_length)
    with render.open_output(output, binary=fmt_name == "npy") as stream:
        if pairwise:
            render.write_pairs(
                stream,
                fmt_name,
                rows,
                columns,
                scoring.pairwise(row_vectors, column_vectors, metric_name),
            )
        else:
            render.write_matrix(
                stream,
                fmt_name,
                rows,
                columns if against else None,
                scoring.matrix(row_vectors, column_vectors, metric_name),
            )


# --- serve -------------------------------------------------------------------------------


@app.command(
    epilog=f"Examples:\n\n"
    f"  {PROG} serve --detach -m minilm\n\n"
    f'  {PROG} similar "what county is hayden in" -i sample_inputs/hayden.txt -m minilm\n\n'
    f"  {PROG} serve --status\n\n"
    f"  {PROG} serve --stop -m minilm\n\n"
    f"  {PROG} serve -m minilm --http 127.0.0.1:8080"
)
@run_options
def serve(
    detach: Annotated[
        bool, typer.Option("--detach", help="Start in the background and return when ready.")
    ] = False,
    status: Annotated[bool, typer.Option("--status", help="List the running servers.")] = False,
    stop: Annotated[
        bool, typer.Option("--stop", help="Stop the server of this model and settings.")
    ] = False,
    idle_timeout: Annotated[
        float,
        typer.Option("--idle-timeout", min=0.01, help="Minutes without a request before exiting."),
    ] = 30.0,
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            metavar="HOST:PORT",
            help="Also serve OpenAI-compatible POST /v1/embeddings (host defaults to 127.0.0.1).",
            show_default=False,
        ),
    ] = None,
    *,
    run: Run,
) -> None:
    """Keep a model warm: embed, similar and matrix use it and answer in a fraction of a second."""
    from modernbert_cli import client

    session = Session.start(run.quiet)
    if sum((detach, status, stop)) > 1:
        raise UsageError("--detach, --status and --stop exclude each other")
    try:
        client.runtime_dir()
    except (OSError, client.ServerError) as error:
        raise UsageError(f"no runtime folder for servers: {error}") from None
    if status:
        render.write_servers(sys.stdout, _servers(session))
        return
    address = _http_address(http) if http else None
    name, _ = run.identity()
    key = run.server_key()
    path = client.socket_path(key)
    if stop:
        connection = client.ServerClient(path, key)
        try:
            connection.request({"op": "stop"})
        except client.ServerError:
            raise UsageError(f"no server runs {run.model} with these settings") from None
        finally:
            connection.close()
        client.wait_removed(path)  # stopped means gone: a new server may start at once
        session.note(f"stopped the server of {run.model}")
        return
    if client.is_alive(path, key):
        raise UsageError(f"a server for {run.model} already runs on {path}")
    if detach:
        _start_detached(session, run, idle_timeout, http, path, key)
        return
    _serve_here(session, run, name, key, path, idle_timeout * 60, address)


def _serve_here(
    session: Session,
    run: Run,
    name: str,
    key: str,
    path: Any,
    idle_seconds: float,
    address: tuple[str, int] | None,
) -> None:
    from modernbert_cli import model as model_loading
    from modernbert_cli.encoder import Encoder
    from modernbert_cli.server import Backend
    from modernbert_cli.server import serve as serve_forever

    with (
        session.stderr.status(f"loading {run.model} …")
        if session.stderr.is_terminal
        else (nullcontext())
    ):
        loaded = model_loading.load(run.spec)
        encoder = Encoder(
            loaded, name, model_loading.pick_devices(run.device), run.engine, expected_texts=None
        )
    backend = Backend(encoder, key, idle_seconds)
    try:
        serve_forever(
            backend, path, address, ready=lambda where: session.note(f"serving {name} on {where}")
        )
    except OSError as error:
        raise UsageError(f"cannot serve: {error.strerror or error}") from None


def _start_detached(
    session: Session, run: Run, idle_timeout: float, http: str | None, path: Any, key: str
) -> None:
    """Start ``serve`` in the background with these options; return once it answers."""
    from modernbert_cli import client

    args = ["serve", *run.argv(), "--idle-timeout", str(idle_timeout)]
    args += ["--http", http] if http else []
    try:
        pid, log = client.start_detached(args, path, key)
    except client.ServerError as error:
        raise CliError(str(error)) from None
    session.note(f"server of {run.model} started (pid {pid}); log: {log}")


def _servers(session: Session) -> list[dict[str, Any]]:
    """Every server of this user that answers; stale sockets are removed, with a note."""
    from modernbert_cli.client import running_servers

    servers, stale = running_servers()
    for path in stale:
        session.note(f"removed a stale socket: {path}")
    return servers


def _http_address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--http {value}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host or "127.0.0.1", int(port)


# --- cache -------------------------------------------------------------------------------


@app.command(
    epilog=f"Examples:\n\n"
    f"  {PROG} cache\n\n"
    f"  {PROG} cache --clear\n\n"
    f"  {PROG} cache --clear --model minilm"
)
def cache(
    clear: Annotated[bool, typer.Option("--clear", help="Delete the cached embeddings.")] = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="With --clear: only this model's (as named when cached)."
        ),
    ] = None,
) -> None:
    """Show the embedding cache (where, how big, hits per model), or clear it."""
    from modernbert_cli.cache import EmbeddingCache, default_path
    from modernbert_cli.model import canonical_name

    session = Session.start(quiet=False)
    store = EmbeddingCache(default_path(), warn=session.warn)
    if model is not None and not clear:
        raise UsageError("--model goes with --clear")
    if clear:
        deleted = store.clear(canonical_name(model) if model else None)
        if deleted is None:  # the file was damaged: it went whole
            session.note(f"deleted the damaged cache file {store.path} (every model's entries)")
        else:
            session.note(f"deleted {deleted:,} cached embedding(s) from {store.path}")
        return
    # Looking must not create the file: an absent cache is shown as empty.
    models = store.stats() if store.path.exists() else []
    render.write_cache_stats(sys.stdout, store.path, store.size_bytes(), models)


# --- running -----------------------------------------------------------------------------


def run(argv: Sequence[str]) -> int:
    """Run the CLI on ``argv``; returns the exit status. The one place errors are printed."""
    argv = list(argv)
    debug = _take_flag(argv, "--debug") or bool(os.environ.get("MODERNBERT_CLI_DEBUG"))
    stderr = Console(stderr=True, highlight=False)
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name=PROG, standalone_mode=False)
    except getattr(click.exceptions, "NoArgsIsHelpError", ()):  # click >= 8.2
        return ExitStatus.USAGE  # the help is already shown; exit 2 as click does
    except click.exceptions.UsageError as error:
        hint = (
            f"{PROG} {error.ctx.info_name} --help"
            if error.ctx and error.ctx.parent
            else f"{PROG} --help"
        )
        _error(stderr, error.format_message(), f"(see '{hint}')")
        return ExitStatus.USAGE
    except typer.Abort:  # click.exceptions.Abort in older typer
        _error(stderr, "interrupted")
        return ExitStatus.INTERRUPTED
    except click.exceptions.ClickException as error:
        _error(stderr, error.format_message())
        return error.exit_code
    except StdoutClosed:
        _silence_stdout()
        return ExitStatus.BROKEN_PIPE
    except CliError as error:
        if debug:
            traceback.print_exc()
        _error(stderr, str(error))
        return error.status
    except Exception as error:
        if debug:
            traceback.print_exc()
            return ExitStatus.ERROR
        _error(
            stderr,
            f"internal error: {type(error).__name__}: {error}",
            "(run with --debug for details)",
        )
        return ExitStatus.ERROR
    if result == ExitStatus.INTERRUPTED:
        _error(stderr, "interrupted")
    return int(result or 0)


def _take_flag(argv: list[str], flag: str) -> bool:
    """Remove ``flag`` from ``argv`` (before any ``--``) so it works in any position."""
    end = argv.index("--") if "--" in argv else len(argv)
    if flag in argv[:end]:
        argv.remove(flag)
        return True
    return False


def _error(stderr: Console, message: str, hint: str = "") -> None:
    from rich.markup import escape

    text = f"[bold red]error:[/] {escape(message)}"
    if hint:
        text += f" [dim]{escape(hint)}[/]"
    stderr.print(f"{PROG}: {text}", soft_wrap=True)


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so Python's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
