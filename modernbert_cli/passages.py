"""Long documents as located passages that fit the model.

A document is cut into passages of at most ``size`` tokens (as the model's own
tokenizer counts them, special tokens and prompt left room for), neighbours
sharing up to ``overlap`` tokens. Cuts fall between lines wherever a line fits; a
line longer than a passage is cut inside, at a word boundary where there is one.
Every passage keeps its place: ``PATH:START-END``, 1-based inclusive line numbers.

Each file is tokenised once, a block of lines at a time (one batch call to the
tokenizer), and only a block or so is held: memory stays flat in the size of a
file and of a folder. Nothing here imports torch; tokens are counted with the
``tokenizers`` library from the model's ``tokenizer.json``.

>>> tokens = Tokens.words()
>>> [p.source for p in split_text("one two\\nthree four\\nfive", tokens, size=4, path="f.txt")]
['f.txt:1-2', 'f.txt:3-3']
"""

from __future__ import annotations

import codecs
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from modernbert_cli import walk as walking
from modernbert_cli.errors import InputError, ModelError, UsageError
from modernbert_cli.inputs import MAX_LINE_BYTES, STDIN, STDIN_NAME, Claim, InputSpec

if TYPE_CHECKING:
    from modernbert_cli.split_cache import SplitCache

# The default passage size and overlap, in tokens (the size never above the model's
# limit); chosen by benchmarks/passages.py: see the README's figures.
DEFAULT_PASSAGE_TOKENS = 128
DEFAULT_OVERLAP = 32
# Below this a passage holds a phrase, not a passage; it is a typo or a misunderstanding.
MIN_PASSAGE_TOKENS = 16

# Lines are tokenised in blocks of this many lines or characters, whichever comes first.
_BLOCK_LINES = 1024
_BLOCK_CHARS = 1 << 18
# A longer line is tokenised in pieces of about this many characters (cut at a space),
# so that a huge line (minified code, a log without newlines) costs bounded memory; a
# run without spaces is cut into shorter pieces (re-tokenised from each cut inside it).
_PIECE_CHARS = 1 << 16
_RUN_PIECE_CHARS = 1 << 12
_LONG_RUN = re.compile(rf"\S{{{_RUN_PIECE_CHARS + 1},}}")

Spans = Sequence[tuple[int, int]]  # each token's (start, end) character offsets
Tokenize = Callable[[list[str]], list[Spans]]


@dataclass(frozen=True)
class Passage:
    """A piece of a document and where it is: lines START to END of PATH (1-based, inclusive)."""

    path: str
    start: int
    end: int
    text: str

    @property
    def source(self) -> str:
        return f"{self.path}:{self.start}-{self.end}"


# A file of more passages is never one KeptFile: neither its passages nor their vectors
# are held at once (a huge file streams past as passages).
MAX_WHOLE_PASSAGES = 16384


@dataclass(frozen=True)
class KeptFile:
    """A file's passages as one item: known by its content and how many passages it has,
    its passages read (:meth:`passages`, from the split cache) only when wanted.

    ``block_key`` names how it was cut and its bytes: what the embedding cache keeps the
    vectors of its passages under, as one row (:meth:`~modernbert_cli.cache.EmbeddingCache.block`).
    """

    path: str
    count: int
    block_key: bytes
    read: Callable[[], Iterator[Passage]] = field(repr=False, compare=False)

    def passages(self) -> Iterator[Passage]:
        """Its passages, as :meth:`Splitter.passages` gives them (cut afresh if their entry
        turns out damaged)."""
        return self.read()


def split_bound(cache_max_mb: int) -> int:
    """The split cache's bound: a quarter of the embeddings' (a passage's text is a tenth
    of its vector)."""
    return max(16 << 20, (cache_max_mb << 20) // 4)


def file_of(item: Any) -> str:
    """The file a corpus item comes from (``--per-document`` keeps one item per file)."""
    return getattr(item, "path", None) or item.source


def block_key(split_key: str, digest: bytes) -> bytes:
    """16 bytes naming a file's passages: how it was cut, and its content."""
    import hashlib

    return hashlib.blake2b(split_key.encode() + digest, digest_size=16).digest()


@dataclass(frozen=True)
class Tokens:
    """How a model counts tokens: the spans of each text's tokens, special tokens left out.

    ``special`` is how many tokens the model adds around every text ([CLS] … [SEP]);
    ``separator`` how many a line break adds between two lines' tokens; ``free_space``
    whether spaces alone make no token (WordPiece), so a passage's text may be stripped.
    """

    spans: Tokenize
    special: int = 0
    separator: int = 0
    free_space: bool = True

    @classmethod
    def for_model(cls, directory: Path) -> Tokens:
        """The tokenizer of the sentence-transformers model in ``directory`` (no torch)."""
        file = _tokenizer_file(directory)
        if file is None:
            raise ModelError(_NO_TOKENIZER.format(directory))
        # Imported here: only passage splitting needs it (it comes with transformers).
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(file))
        except Exception as error:  # a corrupt or too-new file: say which and why
            first = (str(error).strip() or type(error).__name__).splitlines()[0]
            raise ModelError(f"{file}: cannot read the tokenizer ({first})") from error
        return cls.from_tokenizer(tokenizer)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> Tokens:
        """Wrap a ``tokenizers.Tokenizer``; its own truncation and padding are turned off."""
        # tokenizer.json often carries the model's truncation (and padding): counting
        # must see every token, and no pad.
        tokenizer.no_truncation()
        tokenizer.no_padding()

        def spans(texts: list[str]) -> list[Spans]:
            encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
            return [encoding.offsets for encoding in encodings]

        processor = tokenizer.post_processor
        special = processor.num_special_tokens_to_add(False) if processor is not None else 0
        free_space = not spans(["   "])[0]
        return cls(spans, special, _separator_cost(spans), free_space)

    @classmethod
    def words(cls) -> Tokens:
        """One token per run of letters or digits, one per other character: a stand-in."""
        return cls(lambda texts: [[m.span() for m in _WORD.finditer(text)] for text in texts])

    def count(self, text: str) -> int:
        """Tokens in ``text``, lines joined as the model reads them; no special tokens."""
        lines = text.split("\n")
        return sum(map(len, self.spans(lines))) + self.separator * (len(lines) - 1)


_WORD = re.compile(r"\w+|[^\w\s]")
_NO_TOKENIZER = (
    "model at {}: no tokenizer.json (a fast tokenizer), which --passages needs to count tokens"
)


def _separator_cost(spans: Tokenize) -> int:
    """Tokens a line break adds (BPE tokenizers make it a token; WordPiece drops it)."""
    joined, a, b = (len(s) for s in spans(["a\nb", "a", "b"]))
    return max(0, joined - a - b)


def _tokenizer_file(directory: Path) -> Path | None:
    """tokenizer.json of the model's first module (its folder named in modules.json)."""
    folders = [directory]
    try:
        modules = json.loads((directory / "modules.json").read_text())
        folders.insert(0, directory / str(modules[0].get("path") or ""))
    except (OSError, ValueError, TypeError, LookupError, AttributeError):
        pass
    for folder in folders:
        if (folder / "tokenizer.json").is_file():
            return folder / "tokenizer.json"
    return None


def check_sizes(
    passage_tokens: int | None, overlap: int | None, limit: int | None
) -> tuple[int, int]:
    """``--passage-tokens`` and ``--overlap`` checked against the model's limit; defaults filled.

    >>> check_sizes(None, None, 128)
    (128, 32)
    """
    if passage_tokens is None:
        passage_tokens = min(DEFAULT_PASSAGE_TOKENS, limit or DEFAULT_PASSAGE_TOKENS)
    elif passage_tokens < MIN_PASSAGE_TOKENS:
        raise UsageError(
            f"--passage-tokens {passage_tokens}: a passage needs at least "
            f"{MIN_PASSAGE_TOKENS} tokens"
        )
    elif limit is not None and passage_tokens > limit:
        raise UsageError(
            f"--passage-tokens {passage_tokens} exceeds the model's limit of {limit} tokens"
        )
    if overlap is None:
        overlap = min(DEFAULT_OVERLAP, passage_tokens // 4)
    elif overlap < 0:
        raise UsageError(f"--overlap {overlap}: must be 0 or more")
    elif overlap >= passage_tokens:
        raise UsageError(
            f"--overlap {overlap} must be smaller than --passage-tokens ({passage_tokens})"
        )
    return passage_tokens, overlap


def text_budget(
    passage_tokens: int, limit: int | None, tokens: Tokens, prompt: str | None = None
) -> int:
    """Tokens a passage's text may have so the model reads all of it, with its special
    tokens and the prompt put before it."""
    if limit is None:
        return passage_tokens
    reserve = tokens.special + (tokens.count(prompt) if prompt else 0)
    return max(1, min(passage_tokens, limit - reserve))


# Bump when a change to the code below changes where passages are cut or what they
# hold: passages the split cache kept under another version are then cut afresh.
SPLIT_VERSION = 1


@dataclass
class Splitter:
    """How one model's passages are cut: its tokenizer, a passage's text budget, the overlap.

    The tokenizer is loaded on first need: files whose passages the split cache
    (:mod:`modernbert_cli.split_cache`) kept need none, and are not read either.

    >>> splitter = Splitter.for_embedder(Embedder("minilm"))  # doctest: +SKIP
    >>> next(splitter.passages(["sample_inputs/notes"])).source  # doctest: +SKIP
    'sample_inputs/notes/bees.md:1-11'
    """

    load: Callable[[], Tokens]  # the tokenizer
    budget: Callable[[Tokens], int]  # tokens of text per passage (special tokens, prompt out)
    overlap: int
    # All that decides the cuts besides a file and the code: the split cache's key.
    identity: dict[str, Any] = field(default_factory=dict)
    cache: SplitCache | None = None

    @classmethod
    def fixed(cls, tokens: Tokens, size: int, overlap: int = 0) -> Splitter:
        """A splitter of ``size``-token passages, with no cache."""
        return cls(lambda: tokens, lambda _: size, overlap)

    @classmethod
    def for_embedder(
        cls,
        embedder: Any,
        passage_tokens: int | None = None,
        overlap: int | None = None,
        prompt: str = "",
        warn: Callable[[str], None] | None = None,
    ) -> Splitter:
        """Sizes checked against ``embedder``'s token limit (read from its files: no torch,
        unless a hub model must be downloaded first); ``prompt`` is put before each text.
        Passages are kept in the split cache unless the embedder's ``cache`` is off;
        ``warn`` hears of a cache that cannot be used."""
        limit = embedder.max_seq_length or None
        passage_tokens, overlap = check_sizes(passage_tokens, overlap, limit)
        files = embedder.encoder.files
        if files is None or files.directory is None:  # a hub model not downloaded yet
            embedder.load()
            from modernbert_cli.model import ModelFiles

            files = ModelFiles.find(embedder.settings.model)
        if files.directory is None:
            raise ModelError(f"model '{embedder.name}': its files cannot be found")
        cache = None
        if embedder.settings.cache:
            from modernbert_cli import split_cache

            cache = split_cache.SplitCache(
                split_cache.default_path(), split_bound(embedder.settings.cache_max_mb), warn
            )
        return cls.for_files(files.directory, limit, passage_tokens, overlap, prompt, cache)

    @classmethod
    def for_files(
        cls,
        directory: Path,
        limit: int | None,
        passage_tokens: int | None,
        overlap: int | None,
        prompt: str = "",
        cache: SplitCache | None = None,
    ) -> Splitter:
        """The splitter of the model in ``directory`` (``limit``: its token limit), sizes
        checked; what :meth:`for_embedder` makes, and a warm server for its clients."""
        passage_tokens, overlap = check_sizes(passage_tokens, overlap, limit)
        file = _tokenizer_file(directory)
        if file is None:
            raise ModelError(_NO_TOKENIZER.format(directory))
        return cls(
            lambda: Tokens.for_model(directory),
            lambda tokens: text_budget(passage_tokens, limit, tokens, prompt),
            overlap,
            identity={
                "tokenizer": _file_identity(file),
                "tokenizers": _version("tokenizers"),
                "passage_tokens": passage_tokens,
                "limit": limit,
                "prompt": prompt,
            },
            cache=cache,
        )

    @cached_property
    def tokens(self) -> Tokens:
        return self.load()

    @cached_property
    def size(self) -> int:
        return self.budget(self.tokens)

    def key(self, max_line_bytes: int = MAX_LINE_BYTES) -> str:
        """What the split cache keeps passages under: everything that decides the cuts."""
        import hashlib

        payload = {
            **self.identity,
            "overlap": self.overlap,
            "max_line_bytes": max_line_bytes,
            "version": SPLIT_VERSION,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def passages(
        self,
        names: Iterable[str | Path],
        on_skip: walking.OnSkip | None = None,
        stdin: Any = None,
        max_line_bytes: int = MAX_LINE_BYTES,
        *,
        kept_files: bool = False,
        judge: walking.Judge | None = None,
        watch: walking.Watch | None = None,
    ) -> Iterator[Passage | KeptFile]:
        """The passages of each file named, and of each text file under each folder named.

        A named file must be UTF-8 text (an error names the line otherwise); files found
        in a folder are filtered as :func:`modernbert_cli.walk.walk` says, and skips
        reported. ``-`` names standard input (``stdin``, an
        :class:`~modernbert_cli.inputs.Stdin`). A line over ``max_line_bytes`` is an
        error (a guard against endless input). With ``kept_files``, a file whose
        passages the split cache kept is one :class:`KeptFile`, its passages not read.
        ``judge``: how a walk tells text files, ``watch`` hears of each path it looks at,
        each name's first (see :func:`modernbert_cli.walk.walk`).
        """
        skip = on_skip or (lambda skipped: None)
        key = self._cache_key(max_line_bytes)
        try:
            for position, name in enumerate(names):
                path = Path(name)
                if str(name) == STDIN:
                    yield from self._stdin(stdin, position, max_line_bytes)
                    continue
                if watch is not None:
                    watch(os.path.abspath(path), False)
                if path.is_dir():
                    for file in walking.walk(path, skip, judge, watch):
                        yield from self._file(
                            file, skip, max_line_bytes, key, strict=False, whole=kept_files
                        )
                else:
                    yield from self._file(
                        path, skip, max_line_bytes, key, strict=True, whole=kept_files
                    )
        finally:
            self.close()

    def file_passages(
        self,
        path: Path,
        on_skip: walking.OnSkip,
        max_line_bytes: int = MAX_LINE_BYTES,
        *,
        named: bool = False,
    ) -> Iterator[Passage]:
        """The passages of one file, as :meth:`passages` gives them (through the cache):
        ``named``, a file named itself (else one a walk found). What a
        :class:`KeptFile` that a warm server remembered reads."""
        key = self._cache_key(max_line_bytes)
        return self._file(path, on_skip, max_line_bytes, key, strict=named)  # type: ignore[return-value]

    def _cache_key(self, max_line_bytes: int) -> str | None:
        """The split cache's key for this splitter's cuts, or None when no cache applies."""
        return self.key(max_line_bytes) if self.cache is not None and self.identity else None

    def _stdin(self, stdin: Any, position: int, max_line_bytes: int) -> Iterator[Passage]:
        if stdin is None:
            raise InputError(f"{STDIN_NAME}: there is no standard input to read")
        claim = Claim(f"-i {STDIN}", position)
        with stdin.open(claim, InputSpec(max_line_bytes=max_line_bytes)) as stream:
            lines = read_lines(stream, STDIN_NAME, max_line_bytes=max_line_bytes)
            yield from split_lines(lines, self.tokens, self.size, self.overlap, STDIN_NAME)

    def _file(
        self,
        path: Path,
        skip: walking.OnSkip,
        max_line_bytes: int,
        key: str | None,
        *,
        strict: bool,
        whole: bool = False,
    ) -> Iterator[Passage | KeptFile]:
        """A file's passages: as kept by the cache when the file is unchanged, else cut.

        ``whole`` (with a cache): a file of at most :data:`MAX_WHOLE_PASSAGES` passages is
        one :class:`KeptFile` (when cut, once cut: its content is then known).
        """
        cache = self.cache if key is not None else None
        given = 0
        entry = cache.find(key, path) if cache is not None and key is not None else None
        whole = whole and key is not None
        if whole and entry and entry.digest and 0 < entry.passages <= MAX_WHOLE_PASSAGES:
            assert key is not None

            def read() -> Iterator[Passage]:
                return self._file(path, skip, max_line_bytes, key, strict=strict)  # type: ignore[return-value]

            yield KeptFile(str(path), entry.passages, block_key(key, entry.digest), read)
            return
        if cache is not None and entry is not None:
            from modernbert_cli.split_cache import Damaged

            try:
                for start, end, text in cache.read(entry):
                    yield Passage(str(path), start, end, text)
                    given += 1
            except Damaged:
                pass  # cut afresh below, leaving out the passages already given
            else:
                if not entry.passages:
                    skip(walking.Skipped(path, walking.EMPTY))
                return
        try:
            stream = path.open("rb")
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except OSError as error:
            if not strict:
                skip(walking.Skipped(path, f"{walking.UNREADABLE} ({error.strerror or error})"))
                return
            raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
        found = 0
        # Whole: the passages held until the file is read, up to the most a KeptFile has.
        held: list[Passage] | None = [] if whole else None
        with stream, _keeping(cache, key, path, stream) as (reading, keep):
            lines = read_lines(reading, str(path), strict=strict, max_line_bytes=max_line_bytes)
            for passage in split_lines(lines, self.tokens, self.size, self.overlap, str(path)):
                found += 1
                if keep is not None:
                    keep.add(passage.start, passage.end, passage.text)
                if found <= given:
                    continue
                if held is None:
                    yield passage
                    continue
                held.append(passage)
                if len(held) > MAX_WHOLE_PASSAGES:  # too many to hold: given as they come
                    yield from held
                    held = None
            if keep is not None:
                keep.finish(reading.digest())
        if held and key is not None:
            cut = held
            yield KeptFile(str(path), len(cut), block_key(key, reading.digest()), lambda: iter(cut))
        if not found:
            skip(walking.Skipped(path, walking.EMPTY))


@contextmanager
def _keeping(
    cache: SplitCache | None, key: str | None, path: Path, stream: BinaryIO
) -> Iterator[tuple[Any, Any]]:
    """(the stream to read, a cache writer) for a file being cut; the stream itself and
    None without a cache."""
    if cache is None or key is None:
        yield stream, None
        return
    from modernbert_cli.split_cache import HashingReader

    with cache.writer(key, path, stream) as keep:
        yield HashingReader(stream), keep


def _file_identity(path: Path) -> list[Any]:
    """A file as the key of what was made from it: where it really is, its size and time."""
    real = path.resolve()  # the hub cache's link to a content-addressed blob
    status = real.stat()
    return [str(real), status.st_size, status.st_mtime_ns]


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return ""


def check_names(names: Iterable[str | Path], max_line_bytes: int = MAX_LINE_BYTES) -> None:
    """Every file or folder named exists, and every file named is UTF-8 text: the errors
    :func:`iter_passages` would meet, found now, before any model loads (``-`` is stdin)."""
    for name in names:
        path = Path(name)
        if str(name) == STDIN or path.is_dir():
            continue
        try:
            stream = path.open("rb")
        except FileNotFoundError:
            raise InputError(f"{path}: no such file (nor folder)") from None
        except OSError as error:
            raise InputError(f"{path}: cannot read ({error.strerror or error})") from None
        with stream:
            for _ in read_lines(stream, str(path), strict=True, max_line_bytes=max_line_bytes):
                pass


def iter_passages(
    names: Iterable[str | Path],
    tokens: Tokens,
    size: int,
    overlap: int = 0,
    on_skip: walking.OnSkip | None = None,
    stdin: Any = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Iterator[Passage]:
    """The passages of the files and folders named (see :meth:`Splitter.passages`), cut
    with ``tokens`` to ``size`` tokens, no cache."""
    splitter = Splitter.fixed(tokens, size, overlap)
    return splitter.passages(names, on_skip, stdin, max_line_bytes)


def read_lines(
    stream: BinaryIO, name: str, *, strict: bool = True, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[str]:
    """Decoded lines without their line end (LF or CRLF), a UTF-8 BOM dropped.

    ``strict``: a NUL byte or invalid UTF-8 is an InputError naming the line; else
    invalid bytes become U+FFFD (a folder's file whose start was found to be text).
    A line over ``max_line_bytes`` is an InputError either way: it is never held whole.
    """
    for number, raw in enumerate(iter(lambda: stream.readline(max_line_bytes + 1), b""), 1):
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            raise InputError(
                f"{name}:{number}: a line longer than {max_line_bytes:,} bytes "
                "(see --max-line-bytes)"
            )
        if number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        if strict:
            if b"\x00" in raw:
                raise InputError(f"{name}:{number}: binary data (a NUL byte), not text")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                bad = raw[error.start : error.start + 1].hex()
                raise InputError(
                    f"{name}:{number}: invalid UTF-8 (byte 0x{bad}); convert it to UTF-8"
                ) from None
        else:
            line = raw.decode("utf-8", errors="replace")
        yield line.removesuffix("\n").removesuffix("\r")


def split_text(
    text: str, tokens: Tokens, size: int, overlap: int = 0, path: str = ""
) -> list[Passage]:
    """The passages of one text held in memory (lines end at LF or CRLF)."""
    lines = (line.removesuffix("\r") for line in text.split("\n"))
    return list(split_lines(lines, tokens, size, overlap, path))


def split_lines(
    lines: Iterable[str], tokens: Tokens, size: int, overlap: int = 0, path: str = ""
) -> Iterator[Passage]:
    """Passages of at most ``size`` tokens over ``lines`` (line 1 first), sharing up to
    ``overlap`` tokens with the one before."""
    if size < 1:
        raise ValueError(f"size must be at least 1, not {size}")
    overlap = max(0, min(overlap, size - 1))
    buffer = _Buffer(_records(lines, tokens))
    position = fresh = buffer.next_token((0, 0))
    while position is not None and fresh is not None:
        items, end = _fill(buffer, position, fresh, size, tokens)
        passage = _passage(buffer, items, path, tokens.free_space)
        if passage is not None:
            yield passage
        fresh = buffer.next_token(end)
        if fresh is None:
            return
        start = _overlap_start(buffer, items, fresh, size, overlap, tokens.separator)
        start = buffer.next_token(start) or fresh
        # Overlap never takes a passage back to where the last one began.
        position = start if start > position else fresh
        buffer.drop_before(position[0])


@dataclass(frozen=True)
class _Record:
    """A line, or a piece of a very long one, with its tokens' spans."""

    line: int
    text: str
    spans: Spans
    newline: bool  # begins a line (False: continues the line of the record before)

    @property
    def n(self) -> int:
        return len(self.spans)

    @property
    def glued(self) -> bool:
        """Whether this record continues a word of the one before: tokenised apart, the two
        may count fewer tokens than together, so no passage spans the joint."""
        return not self.newline and not self.text[:1].isspace()

    def word_start(self, k: int) -> bool:
        """Whether token ``k`` begins a word (or the record): a clean place to cut."""
        if k == 0 or k >= self.n:
            return True
        before_end, start = self.spans[k - 1][1], self.spans[k][0]
        gap = self.text[before_end:start]
        return any(c.isspace() for c in gap) or self.text[start : start + 1].isspace()

    def char(self, k: int) -> int:
        """Where a piece from token ``k`` begins: right after token ``k - 1``, so that the
        space before a word stays with it, as byte-level BPE counts " word"."""
        if k == 0:
            return 0
        return self.spans[k - 1][1] if k < self.n else len(self.text)


class _Buffer:
    """Records read on demand and dropped once behind: a block of lines in memory at a time."""

    def __init__(self, records: Iterator[_Record]) -> None:
        self._records = records
        self._held: list[_Record] = []
        self._base = 0  # the index of _held[0]

    def get(self, i: int) -> _Record | None:
        while i - self._base >= len(self._held):
            record = next(self._records, None)
            if record is None:
                return None
            self._held.append(record)
        return self._held[i - self._base]

    def split(self, i: int, k: int, tokens: Tokens) -> None:
        """Make record ``i`` two at token ``k``, the second tokenised anew: a cut inside a
        word changes how its rest is tokenised (WordPiece's ##, BPE's merges)."""
        record = self._held[i - self._base]
        cut = record.char(k)
        head = _Record(record.line, record.text[:cut], record.spans[:k], record.newline)
        rest = record.text[cut:]
        tail = _Record(record.line, rest, tokens.spans([rest])[0], newline=False)
        self._held[i - self._base : i - self._base + 1] = [head, tail]

    def drop_before(self, i: int) -> None:
        del self._held[: i - self._base]
        self._base = i

    def next_token(self, position: tuple[int, int]) -> tuple[int, int] | None:
        """The first position at or after ``position`` that has a token (blank lines skipped)."""
        i, t = position
        while (record := self.get(i)) is not None:
            if t < record.n:
                return i, t
            i, t = i + 1, 0
        return None

    def fits_alone(self, i: int, size: int) -> bool:
        """Whether record ``i`` is a whole line that fits in a passage of its own."""
        record, after = self.get(i), self.get(i + 1)
        assert record is not None
        return record.newline and record.n <= size and (after is None or after.newline)


Item = tuple[int, int, int]  # record index, first token, end token (exclusive)


def _fill(
    buffer: _Buffer, position: tuple[int, int], fresh: tuple[int, int], size: int, tokens: Tokens
) -> tuple[list[Item], tuple[int, int]]:
    """As many whole lines from ``position`` as fit; a line too long for any passage is cut.

    Tokens before ``fresh`` are the overlap with the passage before: at least one token
    from ``fresh`` on is always taken.
    """
    items: list[Item] = []
    used = 0
    i, t = position
    while (record := buffer.get(i)) is not None:
        if items and record.glued:
            break
        join = tokens.separator if items and record.newline else 0
        if used + join + record.n - t <= size:
            items.append((i, t, record.n))
            used += join + record.n - t
            i, t = i + 1, 0
            continue
        if not items:  # the passage's first line does not fit: cut it
            cut = _cut(record, t, size, anywhere=True)
        elif not buffer.fits_alone(i, size):  # too long for any passage: fill the room
            cut = _cut(record, t, size - used - join, anywhere=(i, t) <= fresh)
        else:
            break
        if cut > t:
            if not record.word_start(cut):
                buffer.split(i, cut, tokens)
            items.append((i, t, cut))
        break
    if not items:
        return items, (i, t)
    last, _, end = items[-1]
    record = buffer.get(last)
    assert record is not None
    return items, ((last + 1, 0) if end >= record.n else (last, end))


def _cut(record: _Record, t: int, room: int, *, anywhere: bool) -> int:
    """Where to end a piece of ``record`` from token ``t`` holding at most ``room`` tokens: the
    last word boundary; ``anywhere``: a hard cut when none lies in the room's second half."""
    high = min(record.n, t + max(room, 0))
    low = t + room // 2 if anywhere else t
    for k in range(high, low, -1):
        if record.word_start(k):
            return k
    return high if anywhere else t


def _overlap_start(
    buffer: _Buffer,
    items: list[Item],
    following: tuple[int, int],
    size: int,
    overlap: int,
    separator: int,
) -> tuple[int, int]:
    """Where the next passage begins: back from ``following`` by whole lines, then a line's
    tail from a word start, up to ``overlap`` tokens and leaving room for the next line."""
    j, u = following
    record = buffer.get(j)
    assert record is not None
    if u == 0 and record.glued:
        return following
    if u == 0 and buffer.fits_alone(j, size):
        cap = min(overlap, size - record.n - separator)  # the next line must fit whole
    else:  # a long line goes on: leave room for at least one of its tokens
        cap = min(overlap, size - 1 - separator)
    start, used = following, 0
    for i, t0, t1 in reversed(items):
        if cap - used <= 0:
            break
        record = buffer.get(i)
        assert record is not None
        # Charging a separator to every line overstates a little: the overlap stays in the limit.
        cost = t1 - t0 + separator
        if used + cost <= cap:
            start, used = (i, t0), used + cost
            continue
        for k in range(max(t0, t1 - (cap - used)), t1):
            if record.word_start(k):
                start = (i, k)
                break
        break
    return start


def _passage(buffer: _Buffer, items: list[Item], path: str, free_space: bool) -> Passage | None:
    """The text of ``items`` (lines joined by LF) and the lines it spans."""
    while items and items[-1][1] == items[-1][2]:  # blank lines at the end
        items = items[:-1]
    while items and items[0][1] == items[0][2]:  # and at the start
        items = items[1:]
    if not items:
        return None
    parts: list[str] = []
    for index, (i, t0, t1) in enumerate(items):
        record = buffer.get(i)
        assert record is not None
        if index and record.newline:
            parts.append("\n")
        parts.append(record.text[record.char(t0) : record.char(t1)])
    # Where spaces are tokens (byte-level BPE), a leading one was counted: it stays.
    text = "".join(parts).strip() if free_space else "".join(parts).rstrip()
    if not text:
        return None
    first, last = buffer.get(items[0][0]), buffer.get(items[-1][0])
    assert first is not None and last is not None
    return Passage(path, first.line, last.line, text)


def _records(lines: Iterable[str], tokens: Tokens) -> Iterator[_Record]:
    """Lines (pieces of very long ones) with their tokens, tokenised a block at a time."""
    texts: list[str] = []
    places: list[tuple[int, bool]] = []
    chars = 0
    for number, line in enumerate(lines, 1):
        for k, piece in enumerate(_pieces(line)):
            texts.append(piece)
            places.append((number, k == 0))
        chars += len(line)
        if len(texts) >= _BLOCK_LINES or chars >= _BLOCK_CHARS:
            yield from _tokenised(texts, places, tokens)
            texts, places, chars = [], [], 0
    if texts:
        yield from _tokenised(texts, places, tokens)


def _tokenised(
    texts: list[str], places: list[tuple[int, bool]], tokens: Tokens
) -> Iterator[_Record]:
    for text, (number, newline), spans in zip(texts, places, tokens.spans(texts), strict=True):
        yield _Record(number, text, spans, newline)


def _pieces(line: str) -> list[str]:
    """A long line as pieces of at most ``_PIECE_CHARS`` characters, cut before a space (the
    space stays with the word after it, as byte-level BPE tokenises it), and runs without
    spaces cut every ``_RUN_PIECE_CHARS`` (a hard cut re-tokenises the rest of its piece)."""
    if len(line) <= _RUN_PIECE_CHARS:
        return [line]
    bounds = {0, len(line)}
    for run in _LONG_RUN.finditer(line):
        bounds.update(range(run.start() + _RUN_PIECE_CHARS, run.end(), _RUN_PIECE_CHARS))
    pieces = []
    for a, b in itertools.pairwise(sorted(bounds)):
        while b - a > _PIECE_CHARS:
            cut = line.rfind(" ", a + _PIECE_CHARS // 2, a + _PIECE_CHARS)
            cut = cut if cut > a else a + _PIECE_CHARS
            pieces.append(line[a:cut])
            a = cut
        pieces.append(line[a:b])
    return pieces
