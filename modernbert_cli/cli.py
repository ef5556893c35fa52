"""The command line: parse options, call the core, render, map errors to exit codes.

Each command reads and checks all of its input first and loads the model only
when there is something valid to embed. torch and sentence-transformers are
imported inside ``model.load`` and ``scoring``, never at module level, so ``--help``,
``--version`` and input errors answer at once.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Annotated

import typer

try:  # typer >= 0.2x vendors its own click; its exceptions are the ones raised
    from typer import _click as click
except ImportError:  # older typer runs on click itself
    import click
from rich.console import Console

from modernbert_cli import __version__, render
from modernbert_cli.errors import CliError, ExitStatus, StdoutClosed, UsageError
from modernbert_cli.inputs import InputSpec, Stdin, Text, read_file, read_texts
from modernbert_cli.model import DEFAULT_MODEL, MODEL_ENV, ModelSpec

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


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


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

# --- options every command shares -------------------------------------------------------

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        envvar=MODEL_ENV,
        help="sentence-transformers model id, local directory, or alias: modernbert-base, "
        "modernbert-large, minilm (offline).",
        rich_help_panel=_MODEL,
        show_envvar=True,
    ),
]
DeviceOpt = Annotated[
    Device,
    typer.Option("--device", help="Where to run the model.", rich_help_panel=_MODEL),
]
BatchOpt = Annotated[
    int,
    typer.Option("--batch-size", min=1, help="Texts per forward pass.", rich_help_panel=_MODEL),
]
MaxSeqOpt = Annotated[
    int | None,
    typer.Option(
        "--max-seq-length",
        min=1,
        help="Token limit per text (default: the model's own, 8192 for ModernBERT). "
        "Longer texts are truncated, with a count on stderr.",
        rich_help_panel=_MODEL,
        show_default=False,
    ),
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code",
        help="Allow the model's own Python code to run (only for models you trust).",
        rich_help_panel=_MODEL,
    ),
]
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
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No notes or progress on stderr; errors only.")
]


# --- what every command does around its own work -----------------------------------------


@dataclass
class Session:
    """Streams and settings of one invocation, shared by the steps of a command."""

    quiet: bool
    stderr: Console
    stdin: Stdin

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

    def show_progress(self, count: int) -> bool:
        return not self.quiet and self.stderr.is_terminal and count > 256

    def report_skipped(self, skipped: dict[str, int]) -> None:
        if skipped:
            parts = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
            self.note(f"skipped {sum(skipped.values())} file(s) or folder(s): {parts}")

    @contextmanager
    def loading(self, spec: ModelSpec):
        """Load the model, with a spinner on a terminal; yields an Encoder."""
        from modernbert_cli import model as model_loading
        from modernbert_cli.encoder import Encoder

        if self.quiet or not self.stderr.is_terminal:
            yield Encoder(model_loading.load(spec), model_loading.canonical_name(spec.name))
            return
        with self.stderr.status(f"loading {spec.name} …", spinner="dots"):
            loaded = model_loading.load(spec)
        yield Encoder(loaded, model_loading.canonical_name(spec.name))

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


def _model_spec(model: str, device: Device, max_seq_length: int | None, trust: bool) -> ModelSpec:
    return ModelSpec(
        name=model, device=device.value, max_seq_length=max_seq_length, trust_remote_code=trust
    )


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
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = Device.auto,
    batch_size: BatchOpt = 32,
    max_seq_length: MaxSeqOpt = None,
    trust_remote_code: TrustOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Embed texts: one vector per text, as a table, JSON lines, CSV/TSV or .npy."""
    from modernbert_cli.encoder import EncodeOptions

    session = Session.start(quiet)
    fmt_name = render.choose_format(
        fmt and fmt.value, output, render.EMBED_FORMATS, "jsonl", session.stdout_is_terminal
    )
    read = read_texts(_input_spec(texts or (), inputs, field, column, documents), session.stdin)
    session.report_skipped(read.skipped)
    options = EncodeOptions(
        batch_size=batch_size,
        normalize=normalize,
        precision=precision.value,
        truncate_dim=truncate_dim,
        prompt=prompt,
        prompt_name=prompt_name,
        show_progress=session.show_progress(len(read.texts)),
    )
    with session.loading(_model_spec(model, device, max_seq_length, trust_remote_code)) as encoder:
        encoder.check(options)
        embeddings = encoder.encode([t.text for t in read.texts], options)
    session.report_truncated(encoder.truncated, len(read.texts), encoder.max_seq_length)
    with render.open_output(output, binary=fmt_name == "npy") as stream:
        render.write_embeddings(stream, fmt_name, read.texts, embeddings, encoder.name)


# --- similar -----------------------------------------------------------------------------


@app.command(
    epilog=f"Examples:\n\n"
    f'  {PROG} similar "what county is hayden in" -i sample_inputs/hayden.txt\n\n'
    f"  {PROG} similar --queries sample_inputs/queries.txt -i sample_inputs/corpus.txt -k 3\n\n"
    f'  grep -v "^#" notes.txt | {PROG} similar "backups" -k 5 | jq -r .text\n\n'
    f'  {PROG} similar "volcanic eruptions" --documents -i sample_inputs/notes/'
)
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
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = Device.auto,
    batch_size: BatchOpt = 32,
    max_seq_length: MaxSeqOpt = None,
    trust_remote_code: TrustOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Rank texts by similarity to a query: the best matches first."""
    from modernbert_cli import saved, scoring
    from modernbert_cli.encoder import EncodeOptions

    session = Session.start(quiet)
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
    if embeddings is not None:
        corpus_texts = read_texts(spec, session.stdin).texts if (args or inputs) else []
        corpus = saved.load(embeddings, corpus_texts)
    else:
        read = read_texts(spec, session.stdin, what="corpus")
        session.report_skipped(read.skipped)
        corpus = saved.SavedCorpus(read.texts, None, None)

    options = EncodeOptions(
        batch_size=batch_size, show_progress=session.show_progress(len(corpus.texts))
    )
    with session.loading(_model_spec(model, device, max_seq_length, trust_remote_code)) as encoder:
        if corpus.model is not None and corpus.model != encoder.name:
            raise UsageError(
                f"--embeddings {embeddings} was made with model '{corpus.model}', not "
                f"'{encoder.name}': pass -m {corpus.model}"
            )
        if embeddings is not None and encoder.prompt_for("document"):
            session.note(
                f"model '{encoder.name}' has a document prompt; the saved embeddings should be "
                "made with: embed --prompt-name document"
            )
        query_vectors = encoder.encode([q.text for q in query_texts], options, role="query")
        if corpus.embeddings is None:
            corpus.embeddings = encoder.encode(
                [t.text for t in corpus.texts], options, role="document"
            )
        elif corpus.embeddings.shape[1] != query_vectors.shape[1]:
            raise UsageError(
                f"--embeddings {embeddings} has {corpus.embeddings.shape[1]} dimensions but model "
                f"'{encoder.name}' makes {query_vectors.shape[1]}: use the model that made them"
            )
        metric_name = metric.value if metric else encoder.similarity_fn_name
    session.report_truncated(
        encoder.truncated, len(query_texts) + len(corpus.texts), encoder.max_seq_length
    )
    results = scoring.top_k(
        query_vectors, corpus.embeddings, metric_name, k=top_k, threshold=threshold
    )
    with render.open_output(output) as stream:
        render.write_hits(stream, fmt_name, query_texts, results, corpus.texts, metric_name)


# --- matrix ------------------------------------------------------------------------------


@app.command(
    epilog=f"Examples:\n\n"
    f"  {PROG} matrix -i sample_inputs/hayden.txt\n\n"
    f"  {PROG} matrix -i sample_inputs/hayden.txt --format list\n\n"
    f"  {PROG} matrix -i sample_inputs/queries.txt --against sample_inputs/corpus.txt "
    f"-o scores.csv\n\n"
    f"  {PROG} matrix --pairwise -i sample_inputs/pairs.tsv --format tsv"
)
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
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = Device.auto,
    batch_size: BatchOpt = 32,
    max_seq_length: MaxSeqOpt = None,
    trust_remote_code: TrustOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score texts against each other: an N×N matrix, N×M with --against, or pairs."""
    from modernbert_cli import scoring
    from modernbert_cli.encoder import EncodeOptions
    from modernbert_cli.inputs import read_pairs

    session = Session.start(quiet)
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

    options = EncodeOptions(
        batch_size=batch_size, show_progress=session.show_progress(len(rows) + len(columns))
    )
    with session.loading(_model_spec(model, device, max_seq_length, trust_remote_code)) as encoder:
        row_vectors = encoder.encode([t.text for t in rows], options)
        column_vectors = (
            row_vectors if columns is rows else encoder.encode([t.text for t in columns], options)
        )
        metric_name = metric.value if metric else encoder.similarity_fn_name
    total = len(rows) + (0 if columns is rows else len(columns))
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
                columns,
                scoring.matrix(row_vectors, column_vectors, metric_name),
            )


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
