"""The command line: parse options, call the core, render, map errors to exit codes.

The work itself is :class:`~modernbert_cli.embedder.Embedder`'s; this module reads
the inputs (checking all of them before a model is loaded), hands the texts to the
Embedder, and renders what comes back. torch and sentence-transformers are imported
inside the core, never here, so ``--help``, ``--version`` and input errors answer at once.
"""

from __future__ import annotations

import inspect
import itertools
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_type_hints

import typer

from modernbert_cli import __version__, coercion, passages, render
from modernbert_cli.errors import (
    CliError,
    ExitStatus,
    InputError,
    SettingError,
    StdoutClosed,
    UsageError,
)
from modernbert_cli.inputs import (
    MAX_LINE_BYTES,
    STDIN,
    InputSpec,
    Stdin,
    iter_texts,
    query_text,
    read_file,
    read_texts,
    scan,
)
from modernbert_cli.settings import OPTIONS, Metric, Precision, Settings, flag

if TYPE_CHECKING:
    from rich.console import Console

    from modernbert_cli.embedder import Embedder
    from modernbert_cli.saved import SavedCorpus

# Below this many texts a job is over before a progress bar would help.
_PROGRESS_MIN_TEXTS = 512

PROG = "modernbert-cli"
_TYPER = {
    "add_completion": False,
    "no_args_is_help": False,
    "rich_markup_mode": "rich",
    "pretty_exceptions_enable": False,
    "context_settings": {"help_option_names": ["-h", "--help"]},
}

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
    **{**_TYPER, "no_args_is_help": True},
)

_INPUT = "Input"
_OUTPUT = "Output"


def _examples(*lines: str) -> str:
    return "Examples:\n\n" + "\n\n".join(f"  {PROG} {line}" for line in lines)


# --- the model settings, as options ------------------------------------------------------
#
# Typer reads a command's options from its function's signature. The settings are
# declared once, in settings.Settings; this builds the one function whose signature
# offers them, and the options Typer makes of it are added to every command that
# runs a model. A command reads them back with settings_of(ctx).


def _settings_parameters() -> list[inspect.Parameter]:
    hints = get_type_hints(Settings)
    parameters = []
    for field in fields(Settings):
        option = OPTIONS[field.name]
        kind = hints[field.name]
        info = typer.Option(
            *option.flags,
            help=option.help,
            rich_help_panel=option.panel,
            envvar=option.env,
            show_envvar=option.env is not None,
            min=option.min,
            metavar=option.metavar,
            show_default=field.default is not None and kind is not bool,
        )
        parameters.append(
            inspect.Parameter(
                field.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=field.default,
                annotation=Annotated[kind, info],
            )
        )
    return parameters


def _settings_options() -> list[Any]:
    """Typer's own options for every setting, made once from a function that takes them."""
    holder = typer.Typer(add_completion=False)

    def settings(**values: Any) -> None:
        """Takes the settings."""

    settings.__signature__ = inspect.Signature(_settings_parameters())  # type: ignore[attr-defined]
    holder.command()(settings)
    return [p for p in typer.main.get_command(holder).params if p.name in OPTIONS]


def _add_settings(command: Any, options: list[Any]) -> None:
    """Give ``command`` the settings options; its callback receives the rest."""
    command.params.extend(options)
    inner = command.callback

    def callback(**values: Any) -> Any:
        for name in OPTIONS:
            values.pop(name, None)
        return inner(**values)

    command.callback = callback


def settings_of(ctx: typer.Context) -> Settings:
    """The settings given to this command (or to the ``serve`` group above it)."""
    while ctx is not None and "model" not in ctx.params:
        ctx = ctx.parent
    return Settings(**{name: ctx.params[name] for name in OPTIONS})


# Commands (and the serve group) that run a model, and so take the settings.
_RUNS_A_MODEL = ("embed", "similar", "matrix", "serve")


def _command() -> Any:
    """The click command of the whole CLI, with the settings added where they belong."""
    global _COMMAND
    if _COMMAND is None:
        group = typer.main.get_command(app)
        options = _settings_options()
        for name in _RUNS_A_MODEL:
            _add_settings(group.commands[name], options)
        _plain_help(group)
        coercion.install(group)
        _COMMAND = group
    return _COMMAND


def _plain_help(command: Any, parent: Any = None) -> None:
    """Help without type labels where the name says it all: flags and named arguments.

    Typer labels every parameter's type (``--quiet <bool>``, ``QUERY <str>``); a flag
    has no value, and an argument's metavar already names what it takes.
    """
    ctx = typer.Context(command, parent, command.name, **command.context_settings)
    for param in command.get_params(ctx):  # the help option too, made for this context
        if getattr(param, "is_flag", False) or param.param_type_name == "argument":
            param.display_type_rich = lambda ctx: None
    for sub in getattr(command, "commands", {}).values():
        _plain_help(sub, ctx)


_COMMAND: Any = None

# --- options several commands share ---------------------------------------------------------

InputOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        "-i",
        metavar="FILE",
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
        metavar="NAME",
        help="JSON-lines field holding the text \\[default: text].",
        rich_help_panel=_INPUT,
    ),
]
ColumnOpt = Annotated[
    str | None,
    typer.Option(
        "--column",
        metavar="NAME|N",
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
MaxLineOpt = Annotated[
    int,
    typer.Option(
        "--max-line-bytes",
        min=1,
        metavar="BYTES",
        help="Longest line or JSON record to read; a longer one is an error (a guard against "
        "binary or endless input) \\[default: 64 MiB].",
        rich_help_panel=_INPUT,
        show_default=False,
    ),
]
PassagesOpt = Annotated[
    bool,
    typer.Option(
        "--passages",
        help="Split files and folders into passages that fit the model, each with its place "
        "(PATH:START-END); folders honour .gitignore.",
        rich_help_panel=_INPUT,
    ),
]
PassageTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--passage-tokens",
        metavar="N",
        help=f"Tokens per passage \\[default: {passages.DEFAULT_PASSAGE_TOKENS}, at most the "
        "model's limit].",
        rich_help_panel=_INPUT,
        show_default=False,
    ),
]
OverlapOpt = Annotated[
    int | None,
    typer.Option(
        "--overlap",
        metavar="N",
        help=f"Tokens neighbouring passages share \\[default: {passages.DEFAULT_OVERLAP}].",
        rich_help_panel=_INPUT,
        show_default=False,
    ),
]
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="Name every file a folder walk skips, and why (--passages)."
    ),
]
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
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
    bool,
    typer.Option("--quiet", "-q", help="No notes or progress on stderr; errors only."),
]


_CLUSTER = "Cluster (Ray)"
RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="ADDRESS",
        help="Embed on Ray: local (start Ray here), auto (join RAY_ADDRESS), ray://HOST:PORT "
        "or HOST:PORT. -o names a folder of Parquet parts; a rerun writes only missing parts.",
        rich_help_panel=_CLUSTER,
        show_default=False,
    ),
]
WorkersOpt = Annotated[
    int,
    typer.Option(
        "--workers",
        min=1,
        metavar="N",
        help="Ray workers, each loading the model once.",
        rich_help_panel=_CLUSTER,
    ),
]
GpusPerWorkerOpt = Annotated[
    float,
    typer.Option(
        "--gpus-per-worker",
        min=0,
        metavar="F",
        help="GPUs per Ray worker (0: CPU workers; 0.5: two share a GPU).",
        rich_help_panel=_CLUSTER,
    ),
]
CpusPerWorkerOpt = Annotated[
    float,
    typer.Option(
        "--cpus-per-worker",
        min=0,
        metavar="F",
        help="CPUs per Ray worker: its threads (give GPU workers 4 or more).",
        rich_help_panel=_CLUSTER,
    ),
]
PartSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--part-size",
        min=1,
        metavar="N",
        help="Texts per part file \\[default: 10,000 for CPU workers, 500,000 for GPU workers; "
        "a rerun keeps the folder's own].",
        rich_help_panel=_CLUSTER,
        show_default=False,
    ),
]


def _format_option(formats: Sequence[str], default: str) -> Any:
    return Annotated[
        Literal[tuple(formats)] | None,  # type: ignore[valid-type]
        typer.Option(
            "--format",
            "-f",
            help=f"Output format \\[default: {default}].",
            rich_help_panel=_OUTPUT,
            show_default=False,
        ),
    ]


# --- what every command does around its own work -----------------------------------------


@dataclass
class Reading:
    """Passages read so far and the files they came from; a progress bar shows it as it
    redraws (the count of passages is not known before they are cut)."""

    passages: int = 0
    files: int = 0

    def count(self, items: Iterable[Any]) -> Iterator[Any]:
        last = None
        for item in items:
            path = getattr(item, "path", None)
            if path is not None and path != last:
                self.files, last = self.files + 1, path
            self.passages += item.count if isinstance(item, passages.KeptFile) else 1
            yield item

    def __str__(self) -> str:
        return f"{self.passages:,} passages from {self.files:,} file(s)"


@dataclass
class Session:
    """Streams and settings of one invocation, shared by the steps of a command."""

    quiet: bool
    _stderr: Console | None  # Rich's console on stderr; None: made at the first message
    stdin: Stdin
    _live: bool = False  # a progress bar is showing: no spinner inside it
    reading: Reading | None = None  # passages read so far, for a bar with no total

    @classmethod
    def start(cls, quiet: bool) -> Session:
        stream = getattr(sys.stdin, "buffer", None)
        is_tty = bool(sys.stdin is not None and sys.stdin.isatty())
        return cls(quiet, None, Stdin(stream, is_tty))

    @property
    def stderr(self) -> Console:
        """Rich's console on stderr, made at the first message: a quiet run does without."""
        if self._stderr is None:
            self._stderr = _stderr_console()
        return self._stderr

    @property
    def stderr_is_terminal(self) -> bool:
        """Whether stderr is a terminal, as Rich decides; a plain pipe or file is known for
        none without making the console (rich.console costs a warm folder query 10%)."""
        if self._stderr is None and not _terminal_forced():
            try:
                if not (sys.stderr is not None and sys.stderr.isatty()):
                    return False
            except ValueError:  # closed
                return False
        return self.stderr.is_terminal

    @property
    def stdout_is_terminal(self) -> bool:
        return sys.stdout.isatty()

    @property
    def stdout_width(self) -> int:
        from rich.console import Console

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

    def loading(self, name: str) -> Any:
        """A spinner on stderr while a model loads (not with -q, in a pipe, or under a bar)."""
        if self.quiet or not self.stderr_is_terminal or self._live:
            return nullcontext()
        return self.stderr.status(f"loading {name} …", spinner="dots")

    @contextmanager
    def embedder(self, settings: Settings, expected_texts: int | None) -> Iterator[Embedder]:
        """The command's Embedder, with this session's messages; closed at the end."""
        from modernbert_cli.embedder import Embedder

        embedder = Embedder.from_settings(
            settings,
            note=self.note,
            warn=self.warn,
            loading=self.loading,
            expected_texts=expected_texts,
        )
        try:
            yield embedder
        finally:
            embedder.close()

    @contextmanager
    def progress(self, embedder: Embedder, total: int | None) -> Iterator[None]:
        """A progress bar on stderr for jobs worth one: texts, tokens/s, time left. With no
        total (passages, cut as they are embedded): passages and files read, time spent."""
        small = total is not None and total < _PROGRESS_MIN_TEXTS
        if self.quiet or small or not self.stderr_is_terminal:
            yield
            return
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        if total is None:  # the bar pulses; what was read shows how far it got
            count = "{task.fields[read]}, {task.completed:,} embedded"
            count = count if self.reading else "{task.completed:,} texts"
            time_column: Any = TimeElapsedColumn()
        else:
            count = "{task.completed:,}/{task.total:,} texts"
            time_column = TimeRemainingColumn()
        tokens = [0]
        started = time.monotonic()
        with Progress(
            TextColumn("embedding"),
            BarColumn(),
            TextColumn(count),
            TextColumn("{task.fields[rate]}"),
            time_column,
            console=self.stderr,
            transient=True,
        ) as bar:
            task = bar.add_task("embed", total=total, rate="", read=self.reading)

            def advance(texts: int, batch_tokens: int) -> None:
                tokens[0] += batch_tokens
                rate = tokens[0] / max(time.monotonic() - started, 1e-6)
                bar.update(task, advance=texts, rate=f"{rate:,.0f} tokens/s" if tokens[0] else "")

            embedder.progress = advance
            self._live = True
            try:
                yield
            finally:
                embedder.progress = None
                self._live = False

    def report_truncated(self, embedder: Embedder) -> None:
        """How many texts were cut, queries and corpus texts counted apart."""
        parts = [
            f"{cut} of {texts} {_texts_of(role, texts)}"
            for role, (cut, texts) in embedder.truncated_by_role.items()
            if cut
        ]
        if parts:
            self.note(
                f"[yellow]{' and '.join(parts)} were longer than {embedder.max_seq_length} "
                "tokens and were truncated[/] (see --max-seq-length)"
            )


def _texts_of(role: str | None, count: int) -> str:
    """What the texts of a role are called in the truncation note."""
    if role == "query":
        return "query" if count == 1 else "queries"
    return "corpus text(s)" if role == "document" else "text(s)"


def _input_spec(
    texts: Sequence[str],
    inputs: list[str] | None,
    field: str | None,
    column: str | None,
    documents: bool,
    max_line_bytes: int,
) -> InputSpec:
    return InputSpec(
        texts=tuple(texts),
        files=tuple(inputs or ()),
        field=field,
        column=column,
        documents=documents,
        max_line_bytes=max_line_bytes,
    )


@dataclass(frozen=True)
class PassageOptions:
    """--passages and its sizes, as a command received them."""

    on: bool = False
    tokens: int | None = None
    overlap: int | None = None
    verbose: bool = False

    def check(self, spec: InputSpec) -> None:
        """Option errors, before anything is read."""
        if not self.on:
            if self.tokens is not None or self.overlap is not None:
                given = "--passage-tokens" if self.tokens is not None else "--overlap"
                raise UsageError(f"{given} needs --passages")
            return
        if spec.field is not None or spec.column is not None:
            raise UsageError("--passages reads files as text: --field and --column do not apply")


def _skips(
    session: Session, options: PassageOptions
) -> tuple[dict[str, int], Callable[[Any], None]]:
    """Skipped files counted by reason (for the closing note), each named with -v."""
    skipped: dict[str, int] = {}

    def skip(what: Any) -> None:
        skipped[what.reason] = skipped.get(what.reason, 0) + 1
        if options.verbose:
            session.note(f"skipped {what}")

    return skipped, skip


def _passage_corpus(
    session: Session,
    embedder: Embedder,
    spec: InputSpec,
    options: PassageOptions,
    prompt: str,
    kept_files: bool = False,
) -> tuple[Iterator[Any], dict[str, int]]:
    """Text arguments as they are, files and folders as passages: checked now (sizes, names,
    an empty corpus), read as they are embedded. The skips are counted as the walk goes.
    ``kept_files``: a file whose passages were kept comes whole (``Splitter.passages``)."""
    splitter = passages.Splitter.for_embedder(
        embedder, options.tokens, options.overlap, prompt, warn=session.warn
    )
    names = [*(text for text in spec.texts if text == "-"), *spec.files]
    plain = InputSpec(texts=[text for text in spec.texts if text != "-"])
    if not names and not plain.texts and session.stdin.piped:
        names = ["-"]
    passages.check_names(names, spec.max_line_bytes)
    skipped, skip = _skips(session, options)
    session.reading = Reading()
    items = session.reading.count(
        itertools.chain(
            iter_texts(plain),
            splitter.passages(
                names, skip, session.stdin, spec.max_line_bytes, kept_files=kept_files
            ),
        )
    )
    first = next(items, None)
    if first is None:
        session.report_skipped(skipped)
        if not names and not plain.texts:
            raise InputError("no input: give files or folders with -i, or pipe text on stdin")
        note = f" ({sum(skipped.values())} file(s) skipped)" if skipped else ""
        raise InputError(f"{', '.join(names)}: no passages: no text in any file{note}")
    return itertools.chain([first], items), skipped


def _search_on_server(
    session: Session,
    embedder: Embedder,
    spec: InputSpec,
    options: PassageOptions,
    queries: list[str],
    top_k: int,
    threshold: float | None,
    metric: str,
    per_document: bool,
) -> tuple[list[list[Any]], dict[str, int]] | None:
    """The hits and skips of a search of files and folders, when a warm server walked and
    ranked them (``Embedder.search_on_server``); None to search here. Skips are noted as
    :func:`_passage_corpus` notes them."""
    if spec.texts or not spec.files or STDIN in spec.files:  # text arguments or stdin: here
        return None
    skipped, skip = _skips(session, options)
    hits = embedder.search_on_server(
        queries,
        spec.files,
        passage_tokens=options.tokens,
        overlap=options.overlap,
        max_line_bytes=spec.max_line_bytes,
        top_k=top_k,
        threshold=threshold,
        metric=metric,
        per_document=per_document,
        on_skip=skip,
    )
    return None if hits is None else (hits, skipped)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Show the version and exit.",
        ),
    ] = False,
) -> None:
    """Sentence similarity from the command line with ModernBERT embeddings."""


# --- embed -------------------------------------------------------------------------------


@app.command(
    epilog=_examples(
        'embed "a cat sat on the mat"',
        "embed -i sample_inputs/corpus.txt -o corpus.jsonl",
        "embed -i sample_inputs/corpus.txt -o corpus.npy --precision int8",
    )
)
def embed(
    ctx: typer.Context,
    texts: Annotated[
        list[str] | None,
        typer.Argument(metavar="TEXT", help="Texts to embed (- reads stdin).", show_default=False),
    ] = None,
    inputs: InputOpt = None,
    field: FieldOpt = None,
    column: ColumnOpt = None,
    documents: DocumentsOpt = False,
    max_line_bytes: MaxLineOpt = MAX_LINE_BYTES,
    as_passages: PassagesOpt = False,
    passage_tokens: PassageTokensOpt = None,
    overlap: OverlapOpt = None,
    fmt: _format_option(render.EMBED_FORMATS, "table on a terminal, jsonl when piped") = None,
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
    ] = "float32",
    truncate_dim: Annotated[
        int | None,
        typer.Option(
            "--truncate-dim",
            min=1,
            metavar="N",
            help="Keep the first N dimensions (Matryoshka models).",
            rich_help_panel=_OUTPUT,
            show_default=False,
        ),
    ] = None,
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt",
            metavar="TEXT",
            help="Text put before every input, e.g. 'query: '.",
            rich_help_panel="Model",
        ),
    ] = None,
    prompt_name: Annotated[
        str | None,
        typer.Option(
            "--prompt-name",
            metavar="NAME",
            help="One of the model's named prompts.",
            rich_help_panel="Model",
        ),
    ] = None,
    ray: RayOpt = None,
    workers: WorkersOpt = 1,
    gpus_per_worker: GpusPerWorkerOpt = 0.0,
    cpus_per_worker: CpusPerWorkerOpt = 1.0,
    part_size: PartSizeOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Embed texts: one vector per text, as a table, JSON lines, CSV/TSV or .npy."""
    from modernbert_cli.embedder import chunks

    session = Session.start(quiet)
    options = {
        "normalize": normalize,
        "precision": precision,
        "truncate_dim": truncate_dim,
        "prompt": prompt,
        "prompt_name": prompt_name,
    }
    if ray is not None:
        if texts or documents or as_passages or fmt not in (None, "parquet") or not inputs:
            raise UsageError(
                "--ray reads files given with -i (no text arguments, stdin, --documents or "
                "--passages) and writes Parquet parts to the folder given with -o"
            )
        cluster = {"address": ray, "workers": workers, "part_size": part_size}
        cluster |= {"gpus_per_worker": gpus_per_worker, "cpus_per_worker": cpus_per_worker}
        _embed_on_ray(session, settings_of(ctx), inputs, output, field, column, cluster, options)
        return
    fmt = render.choose_format(
        fmt, output, render.EMBED_FORMATS, "jsonl", session.stdout_is_terminal
    )
    spec = _input_spec(texts or (), inputs, field, column, documents, max_line_bytes)
    split = PassageOptions(as_passages, passage_tokens, overlap, verbose)
    split.check(spec)
    found, skipped = None, {}
    if not split.on:  # passages are read as they are embedded, checked once the model is known
        found = scan(spec, session.stdin)
        session.report_skipped(found.skipped)
    expected = found.count if found else None
    with session.embedder(settings_of(ctx), expected) as embedder:
        embedder.check(**options)
        if split.on:
            prompt = embedder.prompt_text(**options)
            items, skipped = _passage_corpus(session, embedder, spec, split, prompt)
        else:
            items = found
        # Read, embed and write a chunk at a time: memory stays flat however long the input.
        with (
            render.open_output(output, binary=render.FORMATS[fmt].binary) as stream,
            session.progress(embedder, expected),
        ):
            # What the vectors are, for the files similar --embeddings reads back.
            meta = embedder.describe(**options)
            writer = render.EmbeddingsWriter(stream, fmt, meta, path=output)
            for chunk in chunks(items):
                writer.write(chunk, embedder.embed(chunk, **options))
            writer.close()
    session.report_skipped(skipped)
    session.report_truncated(embedder)


def _embed_on_ray(
    session: Session,
    settings: Settings,
    inputs: list[str],
    output: str | None,
    field: str | None,
    column: str | None,
    cluster: dict[str, Any],
    options: dict[str, Any],
) -> None:
    """``embed --ray``: the files, on a pool of Ray workers, into a folder of Parquet parts."""
    from dataclasses import asdict

    from modernbert_cli.distributed import run_ray_embed

    if output is None:
        raise UsageError("--ray writes a folder of Parquet parts: name it with -o DIR")
    try:
        result = run_ray_embed(
            inputs,
            output,
            embedder_options=asdict(settings),
            field=field,
            column=column,
            progress=lambda progress: session.note(progress.line()),
            note=session.note,
            **cluster,
            **options,
        )
    except SettingError as error:
        if error.setting != "address":
            raise
        raise UsageError(f"--ray {error.value}: {error.reason}") from None
    session.note(
        f"{output}: {result.texts:,} texts in {result.parts_total} part(s) "
        f"({result.parts_written} written now, {result.parts_kept} kept) "
        f"in {result.seconds:,.0f} s"
    )
    if result.truncated:
        session.note(f"[yellow]{result.truncated} text(s) were truncated[/] (see --max-seq-length)")


# --- similar -----------------------------------------------------------------------------


@app.command(
    epilog=_examples(
        'similar "what county is hayden in" -i sample_inputs/hayden.txt',
        "similar --queries sample_inputs/queries.txt -i sample_inputs/corpus.txt -k 3",
        'similar "volcanic eruptions" --documents -i sample_inputs/notes/',
    )
    + f'\n\n  grep -v "^#" notes.txt | {PROG} similar "backups" -k 5 | jq -r .text'
)
def similar(
    ctx: typer.Context,
    query: Annotated[
        str | None,
        typer.Argument(
            metavar="QUERY",
            help="What to look for (with --queries, a corpus text like the rest).",
            show_default=False,
        ),
    ] = None,
    texts: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="TEXT", help="Corpus texts (- reads stdin); or use -i.", show_default=False
        ),
    ] = None,
    inputs: InputOpt = None,
    field: FieldOpt = None,
    column: ColumnOpt = None,
    documents: DocumentsOpt = False,
    max_line_bytes: MaxLineOpt = MAX_LINE_BYTES,
    as_passages: PassagesOpt = False,
    passage_tokens: PassageTokensOpt = None,
    overlap: OverlapOpt = None,
    per_document: Annotated[
        bool,
        typer.Option(
            "--per-document",
            help="At most one result per file: its best passage (with --passages).",
            rich_help_panel=_OUTPUT,
        ),
    ] = False,
    queries: Annotated[
        str | None,
        typer.Option(
            "--queries",
            metavar="FILE",
            help="Score every query in FILE (one per line) against the corpus, embedded once.",
            rich_help_panel=_INPUT,
            show_default=False,
        ),
    ] = None,
    embeddings: Annotated[
        str | None,
        typer.Option(
            "--embeddings",
            metavar="FILE",
            help="Corpus embeddings saved by embed (.jsonl/.json; .npy with its texts via -i).",
            rich_help_panel=_INPUT,
            show_default=False,
        ),
    ] = None,
    top_k: Annotated[
        int,
        typer.Option(
            "--top-k", "-k", min=1, metavar="N", help="Results per query.", rich_help_panel=_OUTPUT
        ),
    ] = 10,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            metavar="SCORE",
            help="Only results scoring at least this.",
            rich_help_panel=_OUTPUT,
            show_default=False,
        ),
    ] = None,
    metric: MetricOpt = None,
    fmt: _format_option(render.SIMILAR_FORMATS, "table on a terminal, jsonl when piped") = None,
    output: OutputOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Rank texts by similarity to a query: the best matches first."""
    from modernbert_cli import saved

    session = Session.start(quiet)
    fmt = render.choose_format(
        fmt, output, render.SIMILAR_FORMATS, "jsonl", session.stdout_is_terminal
    )
    corpus_args = [query, *(texts or ())] if query is not None else []
    if queries is not None:
        query_texts = read_file(
            queries,
            InputSpec(field=field, column=column, max_line_bytes=max_line_bytes),
            session.stdin,
            option="--queries",
        )
    elif query is None:
        raise UsageError("missing QUERY: give a query, or many with --queries FILE")
    else:
        query_texts = [query_text(query)]
        corpus_args = corpus_args[1:]

    spec = _input_spec(corpus_args, inputs, field, column, documents, max_line_bytes)
    split = PassageOptions(as_passages, passage_tokens, overlap, verbose)
    split.check(spec)
    if per_document and not split.on:
        raise UsageError("--per-document needs --passages")
    if split.on and embeddings is not None:
        raise UsageError("--passages and --embeddings exclude each other")
    # Passages are read as they are embedded, checked once the model's tokenizer is known.
    stored, skipped, corpus_size = None, {}, 0
    if embeddings is not None:
        labels = read_texts(spec, session.stdin).texts if (corpus_args or inputs) else []
        stored = saved.load(embeddings, labels)
        corpus_size = len(stored.texts)
    elif not split.on:
        found = scan(spec, session.stdin, what="corpus")
        session.report_skipped(found.skipped)
        corpus_size = found.count

    total = len(query_texts) + corpus_size
    with session.embedder(settings_of(ctx), total if corpus_size else None) as embedder:
        metric = metric or embedder.similarity_fn_name
        searched = None
        if stored is not None:
            _check_stored(stored, embeddings, embedder)
            corpus: Any = stored.texts
        elif split.on:
            searched = _search_on_server(
                session, embedder, spec, split, query_texts, top_k, threshold, metric, per_document
            )
            if searched is None:
                prompt = embedder.prompt_text(role="document")
                # Files searched before come whole: their vectors are scored as kept, per file.
                corpus, skipped = _passage_corpus(session, embedder, spec, split, prompt, True)
        else:
            corpus = found
        if searched is not None:
            results, skipped = searched
        else:
            with session.progress(embedder, None if split.on else total if corpus_size else 0):
                try:
                    results = embedder.similar_many(
                        query_texts,
                        corpus,
                        top_k=top_k,
                        threshold=threshold,
                        metric=metric,
                        corpus_embeddings=stored.embeddings if stored else None,
                        truncate_dim=(stored.meta or {}).get("truncate_dim") if stored else None,
                        distinct=passages.file_of if per_document else None,
                    )
                except SettingError as error:
                    if error.setting != "corpus_embeddings":
                        raise
                    raise UsageError(
                        f"--embeddings {embeddings} {error.reason}: use the model that made them"
                    ) from None
        if stored is not None:
            _stored_notes(stored, embeddings, embedder, session)
    session.report_skipped(skipped)
    session.report_truncated(embedder)
    with render.open_output(output) as stream:
        render.write_hits(stream, fmt, query_texts, results, metric)


def _check_stored(stored: SavedCorpus, path: str, embedder: Embedder) -> None:
    """Saved embeddings must come from the model that embeds the queries."""
    if stored.model is not None and stored.model != embedder.name:
        raise UsageError(
            f"--embeddings {path} was made with model '{stored.model}', not "
            f"'{embedder.name}': pass -m {stored.model}"
        )


def _stored_notes(stored: SavedCorpus, path: str, embedder: Embedder, session: Session) -> None:
    """What a person should know of saved embeddings that were scored (after the results)."""
    meta = stored.meta
    if meta is None:
        session.note(
            f"--embeddings {path} does not say how it was made (an older modernbert-cli): its "
            "scores are right only for this model and settings"
        )
    elif meta.get("fingerprint"):
        ours = embedder.describe(prompt=meta.get("prompt") or "")["fingerprint"]
        if ours != meta["fingerprint"]:
            session.warn(
                f"--embeddings {path} was made from other model files or settings (dtype, "
                "--max-seq-length, --quantize) than this run's: scores may differ a little"
            )
    document_prompt = embedder.prompts.get("document")
    if document_prompt and (meta is None or meta.get("prompt") != document_prompt):
        session.note(
            f"model '{embedder.name}' has a document prompt; the saved embeddings should be "
            "made with: embed --prompt-name document"
        )


# --- matrix ------------------------------------------------------------------------------


@app.command(
    epilog=_examples(
        "matrix -i sample_inputs/hayden.txt",
        "matrix -i sample_inputs/hayden.txt --format list",
        "matrix -i sample_inputs/queries.txt --against sample_inputs/corpus.txt -o scores.csv",
        "matrix --pairwise -i sample_inputs/pairs.tsv --format tsv",
    )
)
def matrix(
    ctx: typer.Context,
    texts: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="TEXT", help="Texts to compare (- reads stdin).", show_default=False
        ),
    ] = None,
    inputs: InputOpt = None,
    field: FieldOpt = None,
    column: ColumnOpt = None,
    documents: DocumentsOpt = False,
    max_line_bytes: MaxLineOpt = MAX_LINE_BYTES,
    against: Annotated[
        str | None,
        typer.Option(
            "--against",
            metavar="FILE",
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
    fmt: _format_option(
        render.MATRIX_FORMATS, "table on a terminal; csv when piped, tsv with --pairwise"
    ) = None,
    output: OutputOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Score texts against each other: an N×N matrix, N×M with --against, or pairs."""
    from modernbert_cli.inputs import read_pairs

    session = Session.start(quiet)
    fmt = render.choose_format(
        fmt,
        output,
        render.MATRIX_FORMATS,
        "tsv" if pairwise else "csv",
        session.stdout_is_terminal,
    )
    spec = _input_spec(texts or (), inputs, field, column, documents, max_line_bytes)
    if pairwise and against is None:
        rows, columns = read_pairs(spec, session.stdin)
    else:
        rows = read_texts(spec, session.stdin).texts
        other = InputSpec(
            field=field, column=column, documents=documents, max_line_bytes=max_line_bytes
        )
        columns = read_file(against, other, session.stdin, option="--against") if against else None
    if pairwise and len(rows) != len(columns):
        raise UsageError(
            f"--pairwise needs as many inputs as --against texts: {len(rows)} vs {len(columns)}"
        )
    if fmt == "table" and not pairwise:
        render.check_table_fits(len(rows), len(columns or rows), session.stdout_width)

    # Every score needs every embedding: a matrix is held whole (csv/tsv stream its rows).
    total = len(rows) + len(columns or ())
    with session.embedder(settings_of(ctx), total) as embedder, session.progress(embedder, total):
        metric = metric or embedder.similarity_fn_name
        if pairwise:
            scores = embedder.pairwise(rows, columns, metric=metric)
        else:
            scores = embedder.matrix(rows, columns, metric=metric)
    session.report_truncated(embedder)
    with render.open_output(output, binary=render.FORMATS[fmt].binary) as stream:
        if pairwise:
            render.write_pairs(stream, fmt, rows, columns, scores)
        else:
            render.write_matrix(stream, fmt, rows, columns, scores)


# --- serve -------------------------------------------------------------------------------

serve_app = typer.Typer(
    help="Keep a model warm: embed, similar and matrix use it and answer in a fraction of a "
    "second.",
    epilog=_examples(
        "serve --detach -m minilm",
        'similar "what county is hayden in" -i sample_inputs/hayden.txt -m minilm',
        "serve status",
        "serve stop -m minilm",
        "serve -m minilm --http 127.0.0.1:8080",
    ),
    invoke_without_command=True,
    **_TYPER,
)
app.add_typer(serve_app, name="serve")


@serve_app.callback()
def serve(
    ctx: typer.Context,
    detach: Annotated[
        bool,
        typer.Option("--detach", help="Start in the background and return when ready."),
    ] = False,
    idle_timeout: Annotated[
        float,
        typer.Option(
            "--idle-timeout",
            min=0.01,
            metavar="MINUTES",
            help="Minutes without a request before exiting.",
        ),
    ] = 30.0,
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            metavar="HOST:PORT",
            help="Also serve the OpenAI embeddings API (host defaults to 127.0.0.1).",
            show_default=False,
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="MODERNBERT_CLI_API_KEY",
            show_envvar=True,
            help="With --http: require 'Authorization: Bearer KEY'.",
            show_default=False,
        ),
    ] = None,
    status: Annotated[bool, typer.Option("--status", hidden=True)] = False,
    stop: Annotated[bool, typer.Option("--stop", hidden=True)] = False,
    quiet: QuietOpt = False,
) -> None:
    """Keep a model warm: embed, similar and matrix use it and answer in a fraction of a second."""
    if ctx.invoked_subcommand is not None:
        return
    session = Session.start(quiet)
    if sum((detach, status, stop)) > 1:
        raise UsageError("--detach, --status and --stop exclude each other")
    settings = settings_of(ctx)
    if status:  # the flags of 1.0, kept for one release
        _status(session)
        session.warn("'serve --status' is deprecated: use 'serve status'")
        return
    if stop:
        _stop(session, settings.model)
        session.warn("'serve --stop' is deprecated: use 'serve stop -m MODEL'")
        return
    _serve(session, settings, detach, idle_timeout, http, api_key)


def _serve(
    session: Session,
    settings: Settings,
    detach: bool,
    idle_timeout: float,
    http: str | None,
    api_key: str | None,
) -> None:
    from modernbert_cli import server
    from modernbert_cli.embedder import Embedder

    # The server computes what its clients lack: no cache, no server of its own.
    embedder = Embedder.from_settings(
        replace(settings, cache=False, server=False),
        note=session.note,
        warn=session.warn,
        loading=session.loading,
    )
    server.run(
        embedder,
        detach=detach,
        idle_minutes=idle_timeout,
        http=http,
        api_key=api_key,
        note=session.note,
        warn=session.warn,
    )


@serve_app.command("status")
def serve_status(quiet: QuietOpt = False) -> None:
    """List the running servers: model, pid, requests, uptime, socket."""
    _status(Session.start(quiet))


@serve_app.command("stop")
def serve_stop(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            metavar="NAME",
            help="Stop the servers of this model.",
            show_default=False,
        ),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Stop every server of this user.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Stop the servers of a model (or all of them)."""
    session = Session.start(quiet)
    if (model is None) == (not all_):
        raise UsageError("give the model to stop with -m NAME, or --all")
    _stop(session, model)


def _status(session: Session) -> None:
    from modernbert_cli.client import running_servers, usable_runtime_dir

    usable_runtime_dir()
    servers, stale = running_servers()
    for path in stale:
        session.note(f"removed a stale socket: {path}")
    render.write_servers(sys.stdout, servers)


def _stop(session: Session, model: str | None) -> None:
    """Stop the servers of ``model`` (every server when None), paused ones too."""
    from modernbert_cli import client
    from modernbert_cli.model import canonical_name

    client.usable_runtime_dir()
    wanted = canonical_name(model) if model is not None else None
    servers, _ = client.running_servers()
    chosen = [s for s in servers if wanted is None or s.get("model") == wanted]
    if not chosen:
        raise UsageError(f"no server runs {model}" if model else "no server runs")
    for info in chosen:
        # Stopped means gone (socket and lock): a new server may start at once.
        if client.stop_server(info["key"]) is not None:
            session.note(f"stopped the server of {info['model']} (pid {info['pid']})")


# --- cache -------------------------------------------------------------------------------

cache_app = typer.Typer(
    help="Show the embedding cache (where, how big, hits per model), or clear it.",
    epilog=_examples("cache", "cache clear", "cache clear --model minilm", "cache clear --stale"),
    invoke_without_command=True,
    **_TYPER,
)
app.add_typer(cache_app, name="cache")


@cache_app.callback()
def cache(
    ctx: typer.Context,
    clear: Annotated[bool, typer.Option("--clear", hidden=True)] = False,
    model: Annotated[str | None, typer.Option("--model", "-m", hidden=True)] = None,
) -> None:
    """Show the embedding cache (where, how big, hits per model), or clear it."""
    if ctx.invoked_subcommand is not None:
        return
    session = Session.start(quiet=False)
    if clear:  # the flags of 1.0, kept for one release
        _clear(session, model)
        session.warn("'cache --clear' is deprecated: use 'cache clear'")
    elif model is not None:
        raise UsageError("--model goes with 'cache clear'")
    else:
        _cache_info(session)


@cache_app.command("info")
def cache_info() -> None:
    """Where the cache is, its size, and entries, hits and misses per model."""
    _cache_info(Session.start(quiet=False))


@cache_app.command("clear")
def cache_clear(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            metavar="NAME",
            help="Only this model's entries (as named when cached).",
            show_default=False,
        ),
    ] = None,
    stale: Annotated[
        bool,
        typer.Option(
            "--stale",
            help="Only entries whose model files are gone or changed (never used again).",
        ),
    ] = False,
) -> None:
    """Delete the cached embeddings (of every model, or of one) and passages (all)."""
    _clear(Session.start(quiet=False), model, stale)


def _cache_info(session: Session) -> None:
    from modernbert_cli.cache import EmbeddingCache, default_path

    store = EmbeddingCache(default_path(), warn=session.warn)
    # Looking must not create the file: an absent cache is shown as empty.
    models = store.stats() if store.path.exists() else []
    render.write_cache_stats(sys.stdout, store.path, store.size_bytes(), models)


def _clear(session: Session, model: str | None, stale: bool = False) -> None:
    from modernbert_cli.cache import EmbeddingCache, default_path
    from modernbert_cli.model import canonical_name

    store = EmbeddingCache(default_path(), warn=session.warn)
    deleted = store.clear(canonical_name(model) if model else None, stale=stale)
    if deleted is None:  # the file was damaged: it went whole
        session.note(f"deleted the damaged cache file {store.path} (every model's entries)")
    else:
        whose = " whose model files are gone or changed" if stale else ""
        session.note(f"deleted {deleted:,} cached embedding(s){whose} from {store.path}")
    if model is None and not stale:
        from modernbert_cli import split_cache

        if split_cache.clear():  # passages are kept per tokenizer, not per model: all go
            session.note(f"deleted the passage cache {split_cache.default_path()}")


# --- running -----------------------------------------------------------------------------


def run(argv: Sequence[str]) -> int:
    """Run the CLI on ``argv``; returns the exit status. The one place errors are printed."""
    argv = list(argv)
    debug = _take_flag(argv, "--debug") or bool(os.environ.get("MODERNBERT_CLI_DEBUG"))
    try:
        result = _command().main(args=argv, prog_name=PROG, standalone_mode=False)
    except typer.Abort:
        _error("interrupted")
        return ExitStatus.INTERRUPTED
    except typer.TyperException as error:  # click's own errors (bad option, bad value)
        return _click_error(error)
    except StdoutClosed:
        _silence_stdout()
        return ExitStatus.BROKEN_PIPE
    except CliError as error:
        if debug:
            traceback.print_exc()
        _error(_message(error))
        return error.status
    except Exception as error:
        if debug:
            traceback.print_exc()
            return ExitStatus.ERROR
        _error(
            f"internal error: {type(error).__name__}: {error}",
            "(run with --debug for details)",
        )
        return ExitStatus.ERROR
    if result == ExitStatus.INTERRUPTED:
        _error("interrupted")
    return int(result or 0)


def _message(error: CliError) -> str:
    """The core words an error by its settings' names; here, by the options' flags."""
    if isinstance(error, SettingError):
        where = flag(error.setting) + (f" {error.value}" if error.has_value else "")
        return f"{where}: {error.worded(flag)}"
    return str(error)


def _click_error(error: Exception) -> int:
    code = int(getattr(error, "exit_code", ExitStatus.USAGE))
    if type(error).__name__ == "NoArgsIsHelpError":
        return ExitStatus.USAGE  # the help is already shown; exit 2 as click does
    context = getattr(error, "ctx", None)
    if code == ExitStatus.USAGE and context is not None:
        hint = f"{context.command_path} --help"
        _error(error.format_message(), f"(see '{hint}')")
    else:
        _error(error.format_message())
    return code


def _take_flag(argv: list[str], flag: str) -> bool:
    """Remove ``flag`` from ``argv`` (before any ``--``) so it works in any position."""
    end = argv.index("--") if "--" in argv else len(argv)
    if flag in argv[:end]:
        argv.remove(flag)
        return True
    return False


def _terminal_forced() -> bool:
    """Whether the environment tells Rich that any stream is a terminal (as Rich reads it)."""
    return os.environ.get("TTY_COMPATIBLE") == "1" or os.environ.get("FORCE_COLOR") is not None


def _stderr_console() -> Console:
    # Imported here: rich.console costs more than the rest of a warm one-off answer's
    # own code, and a run with nothing to say never needs it.
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _error(message: str, hint: str = "") -> None:
    from rich.markup import escape

    text = f"[bold red]error:[/] {escape(message)}"
    if hint:
        text += f" [dim]{escape(hint)}[/]"
    _stderr_console().print(f"{PROG}: {text}", soft_wrap=True)


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so Python's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
