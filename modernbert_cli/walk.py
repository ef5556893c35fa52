"""Walking a folder as ripgrep does: .gitignore honoured inside a git work tree,
hidden, binary and non-UTF-8 files skipped, every skip reported with its path.

Files are yielded one at a time (a generator over ``os.scandir``), so memory stays
flat however large the folder; binary detection reads an 8 KiB prefix, never the
whole file. Gitignore semantics come from :class:`pathspec.GitIgnoreSpec`, the rules
of git itself: nested ``.gitignore`` files (a deeper file wins), ``!`` negation,
``.git/info/exclude``, and no re-inclusion below an ignored folder. As in ripgrep,
``.gitignore`` files count only inside a git work tree (a ``.git`` in the folder or
above it); elsewhere they are plain hidden files.

>>> skipped = []
>>> files = list(walk(Path("sample_inputs/notes"), on_skip=skipped.append))  # doctest: +SKIP
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# How much of a file is looked at to decide whether it is binary (as git and grep do).
SNIFF_BYTES = 8192

# Why a file or folder was left out; the words the verbose listing shows.
HIDDEN = "hidden"
IGNORED = "ignored by .gitignore"
BINARY = "binary"
NOT_UTF8 = "not UTF-8"
EMPTY = "empty"
SYMLINK = "symbolic link"
SPECIAL = "not a regular file"
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class Skipped:
    """A file or folder the walk left out, and why."""

    path: Path
    reason: str
    folder: bool = False

    def __str__(self) -> str:
        return f"{self.path}{os.sep if self.folder else ''}: {self.reason}"


OnSkip = Callable[[Skipped], None]


@dataclass(frozen=True)
class _Rules:
    """One ignore file's patterns, relative to the folder it applies to."""

    base: Path  # absolute folder the patterns are relative to
    spec: object  # pathspec.GitIgnoreSpec


Judge = Callable[[str], str | None]  # why a file is no text file, or None
# Told of each path (absolute) the walk is about to look at or read: what a warm server
# stats to know, next time, that a walk would find the same. True: a ``.git`` probed,
# whose being there counts, and if it is a file (a linked work tree's) what it says;
# not what happens inside a ``.git`` folder (each git command writes there).
Watch = Callable[[str, bool], None]


def _unwatched(path: str, probe: bool) -> None:
    pass


def walk(
    root: Path,
    on_skip: OnSkip | None = None,
    judge: Judge | None = None,
    watch: Watch | None = None,
) -> Iterator[Path]:
    """Every text file under ``root``, in sorted order, depth first; skips go to ``on_skip``.

    ``root`` itself is searched even when it is hidden or ignored (as ripgrep does
    with a folder named on its command line); what is below it is filtered. ``judge``
    says why a file (its absolute path) is no text file, as :func:`sniff` does (the
    default): a warm server remembers its verdicts. ``watch`` hears every path whose
    state the walk depends on (each folder before it is listed, each file before it is
    judged, each ``.git`` probed and each rules file read), before it is looked at.
    """
    skip = on_skip or (lambda skipped: None)
    watch = watch or _unwatched
    top = Path(os.path.abspath(root))
    repo = git_work_tree(top, watch)
    rules = _inherited_rules(repo, top, watch) if repo is not None else None
    yield from _walk(top, root, rules, skip, judge or sniff, watch)


def git_work_tree(folder: Path, watch: Watch = _unwatched) -> Path | None:
    """The root of the git work tree that holds ``folder`` (a ``.git`` entry), or None."""
    for candidate in (folder, *folder.parents):
        dot_git = candidate / ".git"
        watch(str(dot_git), True)
        if dot_git.exists():
            return candidate
    return None


def _walk(
    folder: Path,
    shown: Path,
    rules: list[_Rules] | None,
    skip: OnSkip,
    judge: Judge,
    watch: Watch,
) -> Iterator[Path]:
    """``folder`` is absolute (for matching); ``shown`` is the path as the user wrote it."""
    watch(str(folder), False)  # its entries: added, removed, renamed
    if rules is None or folder != rules[0].base:
        dot_git = folder / ".git"
        watch(str(dot_git), True)  # a link named .git may point at a folder that comes and goes
        if dot_git.exists():
            # A repository's own rules only: git applies no outer .gitignore inside a nested
            # one, and a plain folder holding repositories has them honoured in each (as
            # ripgrep does).
            rules = _repo_rules(folder, watch)
    if rules is not None:
        own = _read_rules(folder / ".gitignore", folder, watch)
        if own is not None:
            rules = [*rules, own]
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as error:
        skip(Skipped(shown, f"{UNREADABLE} ({error.strerror or error})", folder=True))
        return
    subfolders = []
    for entry in entries:
        # The absolute path as a string (scandir's): a Path only where one is needed, as
        # a warm server walks every file of a folder on every search.
        path, where = entry.path, shown / entry.name
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            is_file = entry.is_file(follow_symlinks=False)
            is_link = entry.is_symlink()
        except OSError:
            skip(Skipped(where, UNREADABLE))
            continue
        if entry.name.startswith("."):
            skip(Skipped(where, HIDDEN, folder=is_dir))
        elif rules is not None and _ignored(rules, Path(path), is_dir):
            skip(Skipped(where, IGNORED, folder=is_dir))
        elif is_link:
            # ripgrep follows no symbolic link unless told (-L): a link can loop or leave the tree.
            skip(Skipped(where, SYMLINK))
        elif is_dir:
            subfolders.append((Path(path), where))
        elif not is_file:
            skip(Skipped(where, SPECIAL))
        else:
            watch(path, False)
            reason = judge(path)
            if reason is None:
                yield where
            else:
                skip(Skipped(where, reason))
    for path, where in subfolders:
        yield from _walk(path, where, rules, skip, judge, watch)


def sniff(path: str | Path) -> str | None:
    """Why ``path`` is no text file (binary, not UTF-8, empty, unreadable), from 8 KiB; or None."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(SNIFF_BYTES)
    except OSError as error:
        return f"{UNREADABLE} ({error.strerror or error})"
    if not head:
        return EMPTY
    if b"\x00" in head:
        return BINARY
    try:
        # final=False: a character cut by the end of the prefix is not an error.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return NOT_UTF8
    return None


def _ignored(rules: list[_Rules], path: Path, is_dir: bool) -> bool:
    """Git's precedence: the deepest ignore file with a matching pattern decides."""
    for rule in reversed(rules):
        try:
            relative = path.relative_to(rule.base).as_posix()
        except ValueError:
            continue
        result = rule.spec.check_file(relative + "/" if is_dir else relative)  # type: ignore[attr-defined]
        if result.include is not None:
            return bool(result.include)
    return False


def _inherited_rules(repo: Path, top: Path, watch: Watch) -> list[_Rules]:
    """The rules in force at ``top``: the repository's excludes, then each .gitignore from the
    work tree's root down to (not including) ``top``, whose own file the walk reads."""
    rules = _repo_rules(repo, watch)
    folder = repo
    for part in top.relative_to(repo).parts:
        own = _read_rules(folder / ".gitignore", folder, watch)
        if own is not None:
            rules.append(own)
        folder = folder / part
    return rules


def _repo_rules(repo: Path, watch: Watch = _unwatched) -> list[_Rules]:
    """``.git/info/exclude`` of the work tree at ``repo`` (a linked work tree's too)."""
    exclude = _read_rules(_git_dir(repo, watch) / "info" / "exclude", repo, watch)
    # The first entry always names the repository's root, for the nested-repository check.
    return [exclude or _Rules(repo, _spec([]))]


def _git_dir(repo: Path, watch: Watch = _unwatched) -> Path:
    """The folder with ``info/exclude``: ``.git``, or for a linked work tree (``.git`` is a
    file saying ``gitdir: …``) the main repository's, named by that folder's ``commondir``."""
    dot_git = repo / ".git"
    watch(str(dot_git), True)
    if dot_git.is_dir():
        return dot_git
    try:
        pointer = dot_git.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return dot_git
    if not pointer.startswith("gitdir:"):
        return dot_git
    git_dir = (repo / pointer.removeprefix("gitdir:").strip()).resolve()
    watch(str(git_dir / "commondir"), False)
    try:
        common = (git_dir / "commondir").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return git_dir
    return (git_dir / common).resolve()


def _read_rules(file: Path, base: Path, watch: Watch = _unwatched) -> _Rules | None:
    watch(str(file), False)
    try:
        text = file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return _Rules(base, _spec(text.splitlines()))


def _spec(lines: list[str]) -> object:
    # Imported here: only a folder walk inside a git work tree needs it.
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines(lines)
