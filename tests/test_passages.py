"""Long documents as located passages (modernbert_cli.passages) and the folder walk
(modernbert_cli.walk): line-aligned cuts, overlap, locations, token limits with real
tokenizers, .gitignore in real git work trees, hidden and binary files."""

from __future__ import annotations

import base64
import itertools
import json
import os
import random
import re
import subprocess
from pathlib import Path

import pytest
from conftest import SAMPLES, assert_error, forbid_model_loading

from modernbert_cli import walk as walk_module
from modernbert_cli.errors import InputError, ModelError, UsageError
from modernbert_cli.passages import (
    DEFAULT_OVERLAP,
    DEFAULT_PASSAGE_TOKENS,
    MIN_PASSAGE_TOKENS,
    Passage,
    Tokens,
    check_sizes,
    iter_passages,
    split_lines,
    split_text,
    text_budget,
)
from modernbert_cli.walk import BINARY, EMPTY, HIDDEN, IGNORED, NOT_UTF8, SYMLINK, walk

WORDS = Tokens.words()


def words(text: str) -> list[str]:
    return text.split()


def lines_of(passage: Passage, lines: list[str]) -> str:
    """The whole lines a passage says it spans."""
    return "\n".join(lines[passage.start - 1 : passage.end]).strip()


def numbered(count: int, width: int = 5) -> list[str]:
    """``count`` lines of varying length; line i begins with its number."""
    return [
        f"L{i} " + " ".join(f"w{i}x{j}" for j in range(i % width + 1)) for i in range(1, count + 1)
    ]


# Splitting -------------------------------------------------------------------


def test_a_short_text_is_one_passage():
    passages = split_text("A short note.\nTwo lines.\n", WORDS, size=64, path="note.txt")
    assert passages == [Passage("note.txt", 1, 2, "A short note.\nTwo lines.")]
    assert passages[0].source == "note.txt:1-2"


def test_cuts_fall_between_lines_and_cover_every_line_once_without_overlap():
    lines = numbered(200)
    passages = split_text("\n".join(lines), WORDS, size=20, overlap=0, path="f")
    assert len(passages) > 10
    for passage in passages:
        assert passage.text == lines_of(passage, lines)  # whole lines, nothing else
        assert WORDS.count(passage.text) <= 20
    # Consecutive, disjoint, and together every line exactly once.
    assert [p.start for p in passages[1:]] == [p.end + 1 for p in passages[:-1]]
    assert (passages[0].start, passages[-1].end) == (1, 200)


def test_a_passage_ends_before_a_line_that_would_not_fit():
    lines = ["a b c d e f", "g h i j k l", "m n o p q r"]  # 6 tokens each
    passages = split_text("\n".join(lines), WORDS, size=14, overlap=0, path="f")
    assert [(p.start, p.end) for p in passages] == [(1, 2), (3, 3)]


def test_neighbours_share_up_to_overlap_tokens():
    lines = numbered(300)
    passages = split_text("\n".join(lines), WORDS, size=40, overlap=10, path="f")
    shared_any = False
    for before, after in itertools.pairwise(passages):
        assert after.start <= before.end + 1
        a, b = words(before.text), words(after.text)
        # The longest tail of `before` that `after` begins with is the overlap.
        shared = max(k for k in range(len(b) + 1) if k <= len(a) and a[len(a) - k :] == b[:k])
        assert shared <= 10
        shared_any = shared_any or shared > 0
        assert len(b) > shared  # every passage brings something new
    assert shared_any
    for passage in passages:
        assert WORDS.count(passage.text) <= 40


def test_overlap_keeps_whole_lines_when_they_fit():
    lines = [f"short {i}" for i in range(1, 41)]  # 2 tokens each
    passages = split_text("\n".join(lines), WORDS, size=10, overlap=4, path="f")
    for before, after in itertools.pairwise(passages):
        assert after.start == before.end - 1  # two lines shared: 4 tokens
        assert after.text == lines_of(after, lines)


def test_one_huge_line_is_cut_inside_at_word_boundaries():
    line = " ".join(f"word{i}" for i in range(1000))
    text = f"first line\n{line}\nlast line"
    passages = split_text(text, WORDS, size=50, overlap=0, path="f")
    middle = [p for p in passages if p.start == p.end == 2]
    assert len(middle) >= 19
    for passage in passages:
        assert WORDS.count(passage.text) <= 50
    # Cut between words: the pieces, in order, are the line's words exactly once.
    assert [w for p in passages for w in words(p.text)] == words(text)
    assert (passages[0].start, passages[-1].end) == (1, 3)


def test_a_huge_line_without_spaces_is_still_cut_to_fit():
    text = "ab" * 20_000  # one "word"; each character pair is a token in this tokenizer
    tokens = Tokens(lambda texts: [[(i, i + 2) for i in range(0, len(t) - 1, 2)] for t in texts])
    passages = split_text(text, tokens, size=100, overlap=10, path="f")
    assert all(tokens.count(p.text) <= 100 for p in passages)
    assert all((p.start, p.end) == (1, 1) for p in passages)
    assert "".join(p.text for p in passages[:1]) == text[:200]
    assert len(passages) >= 20_000 // 100


def test_a_line_longer_than_a_tokenizer_block_keeps_its_place():
    line = " ".join(f"x{i}" for i in range(40_000))  # over 64 Ki characters: tokenised in pieces
    passages = split_text(f"before\n{line}\nafter", WORDS, size=256, overlap=0, path="f")
    assert [w for p in passages for w in words(p.text)] == ["before", *words(line), "after"]
    assert all(WORDS.count(p.text) <= 256 for p in passages)
    assert {p.start for p in passages[1:-1]} == {2}


def test_crlf_gives_the_same_passages_as_lf():
    lines = numbered(50)
    lf = split_text("\n".join(lines) + "\n", WORDS, size=20, overlap=5, path="f")
    crlf = split_text("\r\n".join(lines) + "\r\n", WORDS, size=20, overlap=5, path="f")
    assert crlf == lf
    assert not any("\r" in p.text for p in crlf)


def test_crlf_file_read_from_disk(tmp_path: Path):
    file = tmp_path / "dos.txt"
    file.write_bytes(b"\xef\xbb\xbfone two\r\nthree\r\n\r\nfour\r\n")
    (passage,) = list(iter_passages([file], WORDS, size=64))
    assert passage == Passage(str(file), 1, 4, "one two\nthree\n\nfour")


@pytest.mark.parametrize("text", ["", "\n", "   \n\t\n\r\n"])
def test_empty_and_blank_texts_have_no_passages(text: str):
    assert split_text(text, WORDS, size=16, path="f") == []


def test_blank_lines_never_begin_or_end_a_passage():
    text = "\n\n\npara one a b c\n\n\n\npara two d e f\n\n\npara three g h i\n\n"
    passages = split_text(text, WORDS, size=6, overlap=0, path="f")
    assert [(p.start, p.end) for p in passages] == [(4, 4), (8, 8), (11, 11)]


def test_unicode_text_keeps_characters_and_lines():
    lines = [
        "naïve café ☕ déjà vu",
        "日本語の文章です。",
        "emoji 🐝🐝 bees",
        "Ελληνικά γράμματα",
    ] * 20
    passages = split_text("\n".join(lines), WORDS, size=12, overlap=0, path="u")
    for passage in passages:
        assert passage.text == lines_of(passage, lines)


def test_a_needle_is_found_at_its_line():
    lines = numbered(400)
    lines[236] = "The secret launch code is PURPLE-OCTOPUS-42."
    for overlap in (0, 8):
        passages = split_text("\n".join(lines), WORDS, size=32, overlap=overlap, path="doc")
        holding = [p for p in passages if "PURPLE-OCTOPUS-42" in p.text]
        assert holding
        for passage in holding:
            assert passage.start <= 237 <= passage.end
        # ...and no passage claims line 237 without holding (part of) it.
        for passage in passages:
            if passage.start <= 237 <= passage.end:
                assert "PURPLE" in passage.text or "OCTOPUS" in passage.text


def test_splitting_streams_and_tokenises_each_line_once():
    """Memory stays flat: lines are read on demand, tokenised in bounded blocks, each once."""
    calls: list[list[str]] = []

    def spans(texts: list[str]):
        calls.append(texts)
        return WORDS.spans(texts)

    endless = (f"line {i} with some words" for i in itertools.count(1))
    passages = split_lines(endless, Tokens(spans), size=64, overlap=16, path="∞")
    first = list(itertools.islice(passages, 500))
    assert first[-1].end > 4000
    tokenised = [text for block in calls for text in block]
    assert tokenised == [f"line {i} with some words" for i in range(1, len(tokenised) + 1)]
    assert max(len(block) for block in calls) <= 1024
    assert len(tokenised) < first[-1].end + 2048  # not read far ahead


def test_split_rejects_a_size_below_one():
    with pytest.raises(ValueError):
        list(split_lines(["a"], WORDS, size=0))


# Real tokenizers: no passage is ever truncated by the model ---------------------


def _reference(directory: Path):
    """The model's tokenizer as the model runs it, special tokens included."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _hard_text() -> str:
    """Prose, code with indentation, a long line, CRLF, unicode: every kind of cut."""
    parts = [p.read_text() for p in sorted((SAMPLES / "notes").iterdir())]
    parts.append((SAMPLES / "corpus.txt").read_text())
    parts.append(Path(__file__).read_text())
    parts.append(" ".join(f"tok{i}-ünï" for i in range(3000)))  # one long line
    noise = random.Random(0).randbytes(15_000)
    parts.append(noise.hex())  # 30,000 characters without a space or punctuation
    parts.append("data: " + base64.b64encode(noise).decode() + " end")
    parts.append("\r\n".join("日本語の文章 🐝 données" * (i % 9) for i in range(200)))
    return "\n".join(parts)


def _assert_within_limit(tokens: Tokens, reference, limit: int, prompt: str | None = None):
    size = text_budget(limit, limit, tokens, prompt=prompt)
    passages = split_text(_hard_text(), tokens, size=size, overlap=32, path="t")
    assert len(passages) > 20
    lengths = [len(reference.encode((prompt or "") + p.text)) for p in passages]
    assert max(lengths) <= limit
    assert max(lengths) >= limit - 16  # and passages are filled, not timid


def test_minilm_passages_fit_its_limit_with_special_tokens(minilm_path: str):
    directory = Path(minilm_path)
    tokens = Tokens.for_model(directory)
    assert (tokens.special, tokens.separator) == (2, 0)  # [CLS] [SEP]; WordPiece drops \n
    _assert_within_limit(tokens, _reference(directory), 256)
    _assert_within_limit(tokens, _reference(directory), 256, prompt="search_document: ")


def test_tiny_modernbert_passages_fit_its_limit(tiny_model: str):
    directory = Path(tiny_model)
    tokens = Tokens.for_model(directory)  # found through modules.json's first module
    _assert_within_limit(tokens, _reference(directory), 128)


def test_byte_level_bpe_passages_fit_the_limit(tmp_path: Path):
    """ModernBERT's own tokenizer is byte-level BPE, where a line break is a token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["[CLS]", "[SEP]"],
    )
    tokenizer.train_from_iterator(_hard_text().splitlines(), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 0), ("[SEP]", 1)]
    )
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    tokens = Tokens.for_model(tmp_path)
    assert (tokens.special, tokens.separator) == (2, 1)
    _assert_within_limit(tokens, _reference(tmp_path), 200)


def test_truncation_in_tokenizer_json_does_not_cap_counts(minilm_path: str):
    tokens = Tokens.for_model(Path(minilm_path))  # its tokenizer.json truncates at 128
    assert tokens.count(" ".join(["word"] * 500)) == 500


def test_a_model_without_tokenizer_json_is_a_model_error(tmp_path: Path):
    (tmp_path / "modules.json").write_text('[{"path": "0_Transformer"}]')
    with pytest.raises(ModelError, match=r"no tokenizer\.json"):
        Tokens.for_model(tmp_path)


# Options ------------------------------------------------------------------------


def test_defaults_never_exceed_the_model_limit():
    assert check_sizes(None, None, 8192) == (DEFAULT_PASSAGE_TOKENS, DEFAULT_OVERLAP)
    assert check_sizes(None, None, 128)[0] == 128
    assert check_sizes(None, None, None) == (DEFAULT_PASSAGE_TOKENS, DEFAULT_OVERLAP)
    size, overlap = check_sizes(MIN_PASSAGE_TOKENS, None, 256)
    assert 0 <= overlap < size


@pytest.mark.parametrize(
    ("passage_tokens", "overlap", "fragments"),
    [
        (512, None, ("--passage-tokens 512", "limit of 256")),
        (8, None, ("--passage-tokens 8", f"at least {MIN_PASSAGE_TOKENS}")),
        (64, 64, ("--overlap 64", "smaller than --passage-tokens (64)")),
        (64, 100, ("--overlap 100",)),
        (64, -1, ("--overlap -1",)),
    ],
)
def test_bad_sizes_are_one_line_usage_errors(passage_tokens, overlap, fragments):
    with pytest.raises(UsageError) as caught:
        check_sizes(passage_tokens, overlap, 256)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_text_budget_leaves_room_for_special_tokens_and_prompt():
    tokens = Tokens(WORDS.spans, special=2)
    assert text_budget(256, 256, tokens) == 254
    assert text_budget(128, 256, tokens) == 128
    assert text_budget(256, 256, tokens, prompt="search_document: ") == 256 - 2 - 2


# Files and folders ---------------------------------------------------------------


def test_named_files_must_be_text(tmp_path: Path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(InputError, match=r"latin1\.txt:2: invalid UTF-8"):
        list(iter_passages([bad], WORDS, size=64))
    with pytest.raises(InputError, match="no such file"):
        list(iter_passages([tmp_path / "missing.txt"], WORDS, size=64))


def test_folder_passages_name_each_file_and_report_empty_ones(tmp_path: Path):
    (tmp_path / "a.md").write_text("alpha\nbeta\n")
    (tmp_path / "blank.txt").write_text("  \n\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("gamma\n")
    skipped = []
    passages = list(iter_passages([tmp_path], WORDS, size=64, on_skip=skipped.append))
    assert [p.source for p in passages] == [f"{tmp_path}/a.md:1-2", f"{tmp_path}/sub/b.txt:1-1"]
    assert [(s.path.name, s.reason) for s in skipped] == [("blank.txt", EMPTY)]


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def _tree(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def _walked(root: Path, **kwargs) -> tuple[list[str], dict[str, str]]:
    skipped = []
    found = [p.relative_to(root).as_posix() for p in walk(root, on_skip=skipped.append, **kwargs)]
    return found, {s.path.relative_to(root).as_posix(): s.reason for s in skipped}


GITIGNORED_TREE: dict[str, str | bytes] = {
    ".gitignore": "*.log\n!keep.log\nbuild/\n/top-only.txt\n",
    "a.txt": "a",
    "debug.log": "log",
    "keep.log": "kept",
    "top-only.txt": "ignored at the top only",
    "build/out.txt": "built",
    "docs/top-only.txt": "not ignored here",
    "docs/.gitignore": "draft*\n!draft-final.md\n",
    "docs/draft1.md": "draft",
    "docs/draft-final.md": "final",
    "docs/deep/draft2.md": "nested rule applies below too",
    "docs/deep/notes.log": "still *.log",
    "local/secret.txt": "excluded by info/exclude",
}


def test_gitignore_in_a_git_work_tree(tmp_path: Path):
    _tree(tmp_path, GITIGNORED_TREE)
    _git(tmp_path, "init", "-q")
    (tmp_path / ".git" / "info").mkdir(exist_ok=True)
    (tmp_path / ".git" / "info" / "exclude").write_text("local/\n")
    found, skipped = _walked(tmp_path)
    assert found == ["a.txt", "keep.log", "docs/draft-final.md", "docs/top-only.txt"]
    assert skipped == {
        ".git": HIDDEN,
        ".gitignore": HIDDEN,
        "build": IGNORED,
        "debug.log": IGNORED,
        "docs/.gitignore": HIDDEN,
        "docs/deep/draft2.md": IGNORED,
        "docs/deep/notes.log": IGNORED,
        "docs/draft1.md": IGNORED,
        "local": IGNORED,
        "top-only.txt": IGNORED,
    }
    # git itself agrees on every file.
    listed = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sorted(found) == sorted(name for name in listed if "/." not in name and name[0] != ".")


def test_a_subfolder_of_a_work_tree_inherits_the_rules_above(tmp_path: Path):
    _tree(tmp_path, GITIGNORED_TREE)
    _git(tmp_path, "init", "-q")
    found, skipped = _walked(tmp_path / "docs" / "deep")
    assert found == []
    assert set(skipped.values()) == {IGNORED}
    found, _ = _walked(tmp_path / "docs")
    assert found == ["draft-final.md", "top-only.txt"]


def test_no_gitignore_outside_a_git_work_tree(tmp_path: Path):
    """As ripgrep: .gitignore rules apply only where a .git is found (no --no-require-git)."""
    _tree(tmp_path, GITIGNORED_TREE)
    found, skipped = _walked(tmp_path)
    assert "debug.log" in found and "build/out.txt" in found and "local/secret.txt" in found
    assert IGNORED not in skipped.values()


def test_a_nested_repository_follows_its_own_rules(tmp_path: Path):
    _tree(
        tmp_path,
        {
            "outer/.gitignore": "*.md\n",
            "outer/a.md": "ignored",
            "outer/inner/.gitignore": "*.txt\n",
            "outer/inner/b.md": "inner repo: outer rules do not apply",
            "outer/inner/c.txt": "ignored by inner",
            "plain/repo/.gitignore": "*.txt\n",
            "plain/repo/d.txt": "ignored: a repository under a plain folder",
            "plain/e.txt": "kept",
        },
    )
    _git(tmp_path / "outer", "init", "-q")
    _git(tmp_path / "outer" / "inner", "init", "-q")
    _git(tmp_path / "plain" / "repo", "init", "-q")
    found, _ = _walked(tmp_path)
    assert found == ["outer/inner/b.md", "plain/e.txt"]


def test_a_linked_work_tree_uses_the_main_repository_excludes(tmp_path: Path):
    main = tmp_path / "main"
    _tree(main, {"a.txt": "a"})
    _git(main, "init", "-q")
    _git(main, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    _git(main, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    _git(main, "worktree", "add", "-q", str(tmp_path / "linked"))
    (main / ".git" / "info").mkdir(exist_ok=True)
    (main / ".git" / "info" / "exclude").write_text("scratch/\n")
    _tree(tmp_path / "linked", {"scratch/x.txt": "x", "b.txt": "b"})
    found, skipped = _walked(tmp_path / "linked")
    assert found == ["a.txt", "b.txt"]
    assert skipped["scratch"] == IGNORED


def test_hidden_binary_and_odd_files_are_skipped_and_named(tmp_path: Path):
    _tree(
        tmp_path,
        {
            ".env": "SECRET=1",
            ".cache/x.txt": "hidden folder",
            "photo.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
            "latin1.txt": b"caf\xe9 au lait",
            "empty.txt": "",
            "late-nul.txt": b"text " * 2000 + b"\x00",  # past the sniffed 8 KiB: text
            "ok.md": "fine",
        },
    )
    (tmp_path / "link.txt").symlink_to(tmp_path / "ok.md")
    found, skipped = _walked(tmp_path)
    assert found == ["late-nul.txt", "ok.md"]
    assert skipped == {
        ".cache": HIDDEN,
        ".env": HIDDEN,
        "empty.txt": EMPTY,
        "latin1.txt": NOT_UTF8,
        "link.txt": SYMLINK,
        "photo.png": BINARY,
    }


def test_binary_sniffing_reads_only_a_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    big = tmp_path / "big.bin"
    with big.open("wb") as out:
        out.write(b"\x00" * 16)
        out.truncate(64 << 20)
    sizes: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, stream):
            self.stream = stream

        def read(self, n: int = -1):
            sizes.append(n)
            return self.stream.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stream.close()

    monkeypatch.setattr(walk_module, "open", lambda *a, **k: Spy(real_open(*a, **k)), raising=False)
    found, skipped = _walked(tmp_path)
    assert (found, skipped) == ([], {"big.bin": BINARY})
    assert sizes == [8192]


def test_walk_is_lazy(tmp_path: Path):
    for i in range(50):
        (tmp_path / f"f{i:02}.txt").write_text("x")
    files = walk(tmp_path)
    assert next(files).name == "f00.txt"  # a generator: nothing is collected up front


def test_the_folder_named_is_searched_even_when_hidden(tmp_path: Path):
    hidden = tmp_path / ".notes"
    _tree(hidden, {"a.txt": "a"})
    assert _walked(hidden)[0] == ["a.txt"]


def test_paths_keep_the_form_they_were_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _tree(tmp_path, {"notes/a.txt": "a"})
    monkeypatch.chdir(tmp_path)
    assert [str(p) for p in walk(Path("notes"))] == [os.path.join("notes", "a.txt")]


# The command line: --passages, --per-document, --format grep ---------------------


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


FILLER = [
    "Quarterly figures were reviewed by the finance team and filed with the auditors.",
    "The meeting moved to the second floor because the projector in room four broke.",
    "Remember to water the office plants on Fridays before leaving for the weekend.",
    "A new coffee machine arrived and the instructions were only in Italian.",
    "Parking permits must be renewed online before the end of each month.",
]


def long_document(lines: int, needle: str, at: int) -> str:
    """``lines`` lines of office chatter with ``needle`` on line ``at`` (1-based)."""
    body = [FILLER[i % len(FILLER)] for i in range(lines)]
    body[at - 1] = needle
    return "\n".join(body) + "\n"


NEEDLE = "The lighthouse keeper's cat is called Biscuit and sleeps on the lamp-room stairs."


def test_similar_finds_a_needle_deep_in_a_long_file_at_its_lines(cli, tmp_path: Path):
    doc = tmp_path / "log.txt"
    doc.write_text(long_document(400, NEEDLE, 313))
    result = cli(
        "similar", "what is the lighthouse cat called?", "--passages", "-i", str(doc),
        "-m", "minilm", "-k", "3", "-f", "jsonl",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    best = records(result.stdout)[0]
    assert "Biscuit" in best["text"]
    start, end = best["lines"]
    assert start <= 313 <= end
    assert best["path"] == str(doc)
    assert best["source"] == f"{doc}:{start}-{end}"
    assert "truncated" not in result.stderr  # every passage fits the model


def test_documents_without_passages_cannot_see_past_the_limit(cli, tmp_path: Path):
    """The reason for --passages: whole documents are cut at the model's limit."""
    (tmp_path / "log.txt").write_text(long_document(400, NEEDLE, 313))
    (tmp_path / "other.txt").write_text("Cats often sleep in warm places like stairs.\n")
    result = cli(
        "similar", "what is the lighthouse cat called?", "--documents", "-i", str(tmp_path),
        "-m", "minilm", "-f", "jsonl",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert records(result.stdout)[0]["source"].endswith("other.txt")
    assert "truncated" in result.stderr


def test_per_document_keeps_each_files_best_passage(cli, tmp_path: Path, tiny_model: str):
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.txt").write_text(long_document(60, f"Needle of {name}.", 30))
    args = ("similar", "needle", "--passages", "-i", str(tmp_path), "-m", tiny_model, "-f", "jsonl")
    every = records(cli(*args, "-k", "50").stdout)
    assert len({r["path"] for r in every}) == 3 and len(every) > 3
    result = cli(*args, "-k", "50", "--per-document")
    assert result.code == 0, result.stderr
    best = records(result.stdout)
    assert sorted(r["path"] for r in best) == sorted(str(tmp_path / f"{n}.txt") for n in "abc")
    # Each file's row is its best passage: the first of that file in the full ranking.
    for row in best:
        first = next(r for r in every if r["path"] == row["path"])
        assert (row["lines"], row["score"]) == (first["lines"], first["score"])
    assert [r["rank"] for r in best] == [1, 2, 3]
    assert len(records(cli(*args, "-k", "2", "--per-document").stdout)) == 2


def test_grep_format_is_path_line_text(cli, tmp_path: Path, tiny_model: str):
    doc = tmp_path / "notes.md"
    doc.write_text(long_document(80, NEEDLE, 50))
    result = cli(
        "similar", "cat", "--passages", "-i", str(doc), "-m", tiny_model, "-k", "4",
        "--format", "grep", "--passage-tokens", "32",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    for line in lines:
        path, number, text = line.split(":", 2)
        assert path == str(doc)
        assert 1 <= int(number) <= 80
        assert text.startswith(" ") and text.strip() and "\n" not in text


def test_grep_format_works_for_plain_lines_too(cli, tiny_model: str):
    result = cli(
        "similar", "volcano", "-i", str(SAMPLES / "corpus.txt"), "-m", tiny_model, "-k", "2",
        "-f", "grep",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    for line in result.stdout.splitlines():
        assert re.match(rf"{re.escape(str(SAMPLES / 'corpus.txt'))}:\d+: \S", line), line


def test_embed_passages_records_carry_their_place(cli, tmp_path: Path, tiny_model: str):
    doc = tmp_path / "long.txt"
    doc.write_text(long_document(100, NEEDLE, 10))
    result = cli("embed", "--passages", "-i", str(doc), "-m", tiny_model, "-f", "jsonl")
    assert result.code == 0, result.stderr
    rows = records(result.stdout)
    assert len(rows) > 5
    assert rows[0]["lines"][0] == 1 and rows[-1]["lines"][1] == 100
    for row in rows:
        assert row["path"] == str(doc)
        assert row["source"] == f"{doc}:{row['lines'][0]}-{row['lines'][1]}"
    assert "truncated" not in result.stderr


def test_table_shows_the_file_name_and_lines_of_a_long_path(cli, tmp_path: Path, tiny_model):
    deep = tmp_path / "a-very-long-folder-name" / "and-another-one-below-it" / "notes.md"
    deep.parent.mkdir(parents=True)
    deep.write_text("Volcanoes erupt.\nLava flows.\n")
    result = cli("similar", "lava", "--passages", "-i", str(deep), "-m", tiny_model, "-f", "table")
    assert result.code == 0, result.stderr
    assert "…" in result.stdout and "notes.md:1-2" in result.stdout


def test_passages_from_stdin(cli, tiny_model: str):
    result = cli(
        "similar", "lava", "--passages", "-m", tiny_model, "-f", "jsonl",
        input="Volcanoes erupt.\r\nLava flows.\r\n",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    (row,) = records(result.stdout)
    assert (row["source"], row["text"]) == ("<stdin>:1-2", "Volcanoes erupt.\nLava flows.")


def test_folder_search_honours_gitignore_and_names_skips_with_verbose(cli, tmp_path, tiny_model):
    _tree(tmp_path, {".gitignore": "secret/\n", "a.md": "lava", "secret/b.md": "lava"})
    _git(tmp_path, "init", "-q")
    args = ("similar", "lava", "--passages", "-i", str(tmp_path), "-m", tiny_model, "-f", "jsonl")
    result = cli(*args)
    assert result.code == 0, result.stderr
    assert [r["path"] for r in records(result.stdout)] == [str(tmp_path / "a.md")]
    assert "skipped 3 file(s) or folder(s): 2 hidden, 1 ignored by .gitignore" in result.stderr
    verbose = cli(*args, "-v")
    assert f"skipped {tmp_path / 'secret'}/: ignored by .gitignore" in verbose.stderr


def test_a_rerun_over_an_unchanged_folder_loads_no_model(cli, tmp_path, tiny_model, monkeypatch):
    (tmp_path / "long.txt").write_text(long_document(200, NEEDLE, 150))
    args = ("--passages", "-i", str(tmp_path), "-m", tiny_model, "-f", "jsonl")
    first = cli("similar", "the cat", *args)
    assert first.code == 0, first.stderr
    forbid_model_loading(monkeypatch)
    again = cli("similar", "the cat", *args)
    assert (again.code, again.stdout) == (0, first.stdout)


def test_an_edited_file_re_embeds_only_its_changed_passages(cli, tmp_path, tiny_model, monkeypatch):
    from modernbert_cli import engine

    doc = tmp_path / "long.txt"
    rng = random.Random(1)
    lines = [f"Line {i}: " + " ".join(rng.choices(FILLER, k=rng.randint(0, 2))) for i in range(300)]
    doc.write_text("\n".join(lines) + "\n")
    args = ("embed", "--passages", "-i", str(doc), "-m", tiny_model, "-f", "jsonl")
    before = records(cli(*args).stdout)
    # A line added at the top: later cuts shift, but line-aligned packing falls back
    # into step within a passage or two.
    doc.write_text("A new first line.\n" + "\n".join(lines) + "\n")
    calls: list[list[str]] = []
    original = engine.Engine.encode
    monkeypatch.setattr(
        engine.Engine,
        "encode",
        lambda self, texts, **kw: calls.append(list(texts)) or original(self, texts, **kw),
    )
    after = records(cli(*args).stdout)
    embedded = [text for call in calls for text in call]
    changed = [r["text"] for r in after if r["text"] not in {b["text"] for b in before}]
    assert embedded and sorted(embedded) == sorted(changed)
    assert len(embedded) <= 3 < len(after)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--passage-tokens", "512"), ("--passage-tokens 512", "limit of 128")),
        (("--passage-tokens", "8"), ("--passage-tokens 8",)),
        (("--passage-tokens", "64", "--overlap", "64"), ("--overlap 64",)),
    ],
)
def test_bad_sizes_stop_before_the_model_loads(cli, no_model, tiny_model, args, fragments):
    result = cli(
        "similar", "q", "--passages", "-i", str(SAMPLES / "notes"), "-m", tiny_model, *args
    )
    assert_error(result, 2, *fragments)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--overlap", "8"), "--overlap needs --passages"),
        (("--per-document",), "--per-document needs --passages"),
        (("--passages", "--field", "x"), "--field and --column do not apply"),
        (("--passages", "--embeddings", "x.jsonl"), "exclude each other"),
    ],
)
def test_passage_options_that_make_no_sense(cli, no_model, tiny_model, args, fragment):
    result = cli("similar", "q", "-i", str(SAMPLES / "notes"), "-m", tiny_model, *args)
    assert_error(result, 2, fragment)


def test_input_errors_come_before_the_model(cli, no_model, tiny_model, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\n")
    assert_error(cli("embed", "--passages", "-i", str(bad), "-m", tiny_model), 3, "bad.txt:2")
    missing = str(tmp_path / "missing")
    assert_error(cli("embed", "--passages", "-i", missing, "-m", tiny_model), 3, "no such file")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("\n\n")
    result = cli("similar", "q", "--passages", "-i", str(empty), "-m", tiny_model)
    assert result.code == 3 and "no passages" in result.stderr, result.stderr


def test_distinct_top_k_does_not_depend_on_chunking():
    import numpy as np

    from modernbert_cli.scoring import TopK

    rng = np.random.default_rng(0)
    queries, corpus = rng.standard_normal((3, 8)), rng.standard_normal((40, 8))
    items = [Passage(f"f{i % 7}", i, i, str(i)) for i in range(40)]

    def ranked(chunk: int) -> list[list[tuple[int, float]]]:
        best = TopK(3, "cosine", k=5, distinct=lambda p: p.path)
        for start in range(0, 40, chunk):
            best.add(queries, corpus[start : start + chunk], items[start : start + chunk])
        return [[(h.index, h.score) for h in hits] for hits in best.results()]

    whole = ranked(40)
    assert ranked(1) == ranked(7) == whole
    for hits in whole:
        assert len({items[i].path for i, _ in hits}) == len(hits) == 5
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)


def test_top_k_with_ties_at_the_cut_does_not_depend_on_chunking():
    """Each chunk's scores below its k-th best are dropped before sorting; ties with the
    k-th are all kept, so the earliest rows of a tie win however the corpus is cut."""
    import numpy as np

    from modernbert_cli.scoring import TopK

    rng = np.random.default_rng(1)
    rows = rng.standard_normal((6, 8))
    corpus = rows[rng.integers(0, 6, size=60)]  # every score tied with several others
    queries = rng.standard_normal((2, 8))

    def ranked(chunk: int, k: int | None) -> list[list[tuple[int, float]]]:
        best = TopK(2, "cosine", k=k)
        for start in range(0, 60, chunk):
            best.add(queries, corpus[start : start + chunk], list(range(start, start + chunk)))
        return [[(h.index, h.score) for h in hits] for hits in best.results()]

    for k in (1, 4, 13):
        everything = [hits[:k] for hits in ranked(60, None)]  # one sort of all: the reference
        assert ranked(60, k) == ranked(7, k) == ranked(1, k) == everything


def test_a_line_over_max_line_bytes_is_an_error(cli, no_model, tiny_model, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("short\n" + "x" * 100 + "\nshort\n")
    result = cli("embed", "--passages", "-i", str(doc), "--max-line-bytes", "50", "-m", tiny_model)
    assert_error(result, 3, "doc.txt:2", "50 bytes", "--max-line-bytes")
    with pytest.raises(InputError, match=r":2: a line longer than 50 bytes"):
        list(iter_passages([tmp_path], WORDS, size=64, max_line_bytes=50))


# A progress bar with no total ------------------------------------------------------------


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_passages_progress_counts_what_was_read_without_a_total(terminal: bool):
    """How many passages there are is known only once they are cut: the bar shows the
    passages and files read, what was embedded, the rate and the time spent; only on a
    terminal."""
    import io

    from rich.console import Console

    from modernbert_cli.cli import Reading, Session

    class FakeEmbedder:
        progress = None

    stderr = io.StringIO()
    session = Session(False, Console(file=stderr, force_terminal=terminal, width=140), None)
    session.reading = Reading()
    texts = [Passage("a.md", 1, 2, "x"), Passage("a.md", 3, 4, "y"), Passage("b.md", 1, 1, "z")]
    embedder = FakeEmbedder()
    with session.progress(embedder, None):
        assert list(session.reading.count(texts)) == texts
        if terminal:
            embedder.progress(2, 40)
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stderr.getvalue())
    if terminal:
        assert "3 passages from 2 file(s), 2 embedded" in shown
        assert "tokens/s" in shown and "0:00:0" in shown  # time spent, not time left
        assert "/" not in shown.split("embedding")[-1].split("tokens/s")[0]  # no total
    else:
        assert shown == "" and embedder.progress is None
