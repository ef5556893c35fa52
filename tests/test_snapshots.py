"""A warm server's walks remembered (``split_cache.Snapshots``): a repeat search of an
unchanged folder stats the paths its walk looked at instead of walking; any change to
what a walk would find is seen, and the answer is the walk's own."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from modernbert_cli import server, split_cache, walk
from modernbert_cli.cache import default_path
from modernbert_cli.embedder import Embedder
from modernbert_cli.passages import split_bound

LINES = ["a kitten sleeps on the rug", "lava flows from the volcano", "the river floods the town"]


def note(n: int, tag: str = "") -> str:
    return "".join(f"{tag}{n} {LINES[(n + i) % len(LINES)]} {i}\n" for i in range(6))


@pytest.fixture(scope="module")
def encoder(tiny_model):
    return Embedder(tiny_model, device="cpu", cache=False, server=False).load().encoder


@pytest.fixture
def old_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files and folders made by a test count as settled (not racy), as after two seconds."""
    monkeypatch.setattr(split_cache, "RACY_NS", 0)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Notes in a git work tree: a subfolder, a hidden, an empty and a binary file."""
    root = tmp_path / "notes"
    (root / "deep").mkdir(parents=True)
    (root / ".git").mkdir()
    for n in range(3):
        (root / f"{n}.txt").write_text(note(n))
    (root / "deep" / "d.md").write_text(note(7, "deep "))
    (root / ".hidden.txt").write_text("a cat\n")
    (root / "empty.txt").write_text("")
    (root / "blob.bin").write_bytes(b"\x00\x01" * 50)
    return root


class Served:
    """One warm server's searches, in-process; what each listed (os.scandir) is noted."""

    def __init__(self, encoder, monkeypatch: pytest.MonkeyPatch) -> None:
        self.backend = server.Backend(encoder, "k", 600.0)
        self.listed: list[str] = []
        self.under = "/nowhere"
        self.monkeypatch = monkeypatch
        scandir = os.scandir

        def listing(path="."):
            if str(path).startswith(self.under):  # not the model's folder, say
                self.listed.append(os.path.basename(path))
            return scandir(path)

        monkeypatch.setattr(os, "scandir", listing)

    def search(self, folder: Path, query: str = "a kitten", **options) -> dict:
        """The reply to a client's ``similar QUERY --passages -i FOLDER -v``."""
        self.listed.clear()
        self.under = str(folder)
        message = {
            "queries": [query],
            "names": [[str(folder), "notes"]],
            "passage_tokens": 16,
            "overlap": None,
            "limit": 128,
            "prompt": "",
            "directory": self.backend.encoder.files.directory.as_posix(),
            "max_line_bytes": 1 << 20,
            "top_k": 5,
            "threshold": None,
            "metric": "cosine",
            "per_document": False,
            "cache": {"path": str(default_path()), "max_bytes": 1 << 30},
            "split_cache": {"path": str(split_cache.default_path()), "max_bytes": split_bound(1)},
            **options,
        }
        reply = self.backend.search(message)
        assert "redo" not in reply, reply
        return reply

    def walked(self, folder: Path, **options) -> dict:
        """The same search, walked (no walk remembered is asked)."""
        with self.monkeypatch.context() as patch:
            patch.setattr(split_cache.Snapshots, "get", lambda self, key: None)
            return self.search(folder, **options)


@pytest.fixture
def served(encoder, monkeypatch) -> Served:
    return Served(encoder, monkeypatch)


def paths(reply: dict) -> list[str]:
    return [hit[2] for row in reply["hits"] for hit in row]


def skips(reply: dict) -> list[str]:
    return [f"{path}: {reason}" for kind, path, reason, *_ in reply["events"] if kind == "skip"]


def test_a_repeat_search_does_not_walk(served, folder, old_files, monkeypatch):
    first = served.search(folder)  # cut, embedded, kept
    assert served.listed == ["notes", "deep"]
    assert len(served.backend.snapshots) == 1
    found: list[str] = []
    find = split_cache.SplitCache.find

    def noting_find(self, key, path):
        found.append(Path(path).name)
        return find(self, key, path)

    with monkeypatch.context() as patch:
        patch.setattr(walk, "sniff", lambda path: pytest.fail(f"{path} was sniffed"))
        patch.setattr(split_cache.SplitCache, "find", noting_find)
        again = served.search(folder, "lava")
    assert served.listed == []
    # Only the files holding a hit are looked up (their passages read), each once.
    assert sorted(found) == sorted({Path(path).name for path in paths(again)})
    assert again["events"] == first["events"]  # the skips -v names, in order
    assert "notes/.hidden.txt: hidden" in skips(again) and "notes/blob.bin: binary" in skips(again)
    assert again == served.walked(folder, query="lava")
    assert any("lava" in hit[5] for row in again["hits"] for hit in row)  # passages read


def change_and_search(served: Served, folder: Path, change, **options) -> dict:
    """A search remembered, then ``change`` made: walked again, and answering as a walk."""
    served.search(folder, **options)
    served.search(folder, **options)
    assert served.listed == []  # remembered
    change()
    reply = served.search(folder, **options)
    assert served.listed, "the change was not seen"
    assert reply == served.walked(folder, **options)
    served.search(folder, **options)
    assert served.listed == []  # remembered again
    return reply


def test_a_file_edited_to_the_same_size_is_seen(served, folder, old_files):
    deep = folder / "deep" / "d.md"  # its folder unchanged: the file's own stat tells

    def edit() -> None:
        deep.write_text(deep.read_text().replace("kitten", "KITTEN"))

    change_and_search(served, folder, edit)
    reply = served.search(folder, top_k=50)  # every passage
    assert any("KITTEN" in hit[5] for row in reply["hits"] for hit in row)


def test_a_file_added_deleted_or_renamed_is_seen(served, folder, old_files):
    reply = change_and_search(served, folder, lambda: (folder / "3.txt").write_text(note(0)))
    assert "notes/3.txt" in paths(reply)
    reply = change_and_search(served, folder, lambda: (folder / "0.txt").unlink())
    assert "notes/0.txt" not in paths(reply)
    reply = change_and_search(served, folder, lambda: (folder / "3.txt").rename(folder / "9.txt"))
    assert "notes/9.txt" in paths(reply) and "notes/3.txt" not in paths(reply)


def test_a_gitignore_edited_is_obeyed(served, folder, old_files):
    reply = change_and_search(served, folder, lambda: (folder / ".gitignore").write_text("1.txt\n"))
    assert "notes/1.txt: ignored by .gitignore" in skips(reply)
    reply = change_and_search(served, folder, lambda: (folder / ".gitignore").write_text("2.txt\n"))
    assert "notes/1.txt" in paths(reply) and "notes/2.txt: ignored by .gitignore" in skips(reply)
    exclude = folder / ".git" / "info" / "exclude"
    exclude.parent.mkdir()
    reply = change_and_search(served, folder, lambda: exclude.write_text("0.txt\n"))
    assert "notes/0.txt: ignored by .gitignore" in skips(reply)


def test_git_at_work_in_its_folder_is_no_change_but_a_repository_gone_is(served, folder, old_files):
    """Of a .git folder only its being there counts (git writes in it all the time); its
    rules file is watched for itself."""
    (folder / ".gitignore").write_text("1.txt\n")
    served.search(folder)
    served.search(folder)
    (folder / ".git" / "index").write_bytes(b"what git status writes")
    served.search(folder)
    assert served.listed == []
    reply = change_and_search(served, folder, lambda: shutil.rmtree(folder / ".git"))
    assert not any("ignored" in skip for skip in skips(reply))


def test_a_work_tree_made_above_the_folder_is_seen(served, tmp_path, old_files):
    """Outside a work tree .gitignore is a hidden file; a .git made in a parent folder (a
    path the walk probed, not one it listed) makes it count."""
    root = tmp_path / "outer" / "notes"
    root.mkdir(parents=True)
    for n in range(3):
        (root / f"{n}.txt").write_text(note(n))
    (root / ".gitignore").write_text("1.txt\n")
    assert "notes/1.txt" in paths(served.search(root))

    def make_repository() -> None:
        (tmp_path / "outer" / ".git").mkdir()

    reply = change_and_search(served, root, make_repository)
    assert "notes/1.txt: ignored by .gitignore" in skips(reply)


def test_a_new_nested_folder_is_seen(served, folder, old_files):
    def nest() -> None:
        (folder / "deep" / "deeper").mkdir()
        (folder / "deep" / "deeper" / "e.txt").write_text(note(4, "nested "))

    reply = change_and_search(served, folder, nest)
    assert served.listed == []
    served.search(folder)
    (folder / "deep" / "deeper" / "f.txt").write_text(note(5, "also "))
    reply = served.search(folder)
    assert "deeper" in served.listed and reply == served.walked(folder)
    assert "notes/deep/deeper/f.txt" in paths(served.search(folder, "also"))


def test_a_racy_file_or_folder_is_not_remembered(served, folder):
    """Written within two seconds of the walk, a file or folder may change again with its
    stat unchanged: the walk is not remembered until everything it looked at is older."""
    served.search(folder)
    served.search(folder)
    assert served.listed and len(served.backend.snapshots) == 0
    old = os.stat(folder).st_mtime - 3600
    for path in folder.rglob("*"):
        if not path.is_dir():
            os.utime(path, (old, old))
    served.search(folder)  # the files are old, the folders new
    assert served.listed and len(served.backend.snapshots) == 0
    for path in (folder / "deep", folder / ".git", folder):
        os.utime(path, (old, old))
    served.search(folder)
    served.search(folder)
    assert served.listed == [] and len(served.backend.snapshots) == 1


def test_another_option_is_another_walk(served, folder, old_files):
    served.search(folder)
    served.search(folder, passage_tokens=24)  # other cuts: another split key
    assert served.listed == ["notes", "deep"]
    served.search(folder, passage_tokens=24)
    assert served.listed == []
    reply = served.search(folder)  # both remembered
    assert served.listed == [] and reply == served.walked(folder)
    served.search(folder, prompt="query: ")
    assert served.listed  # the prompt is in the split key too
    served.search(folder, split_cache=None)  # no split cache: nothing kept, never remembered
    served.search(folder, split_cache=None)
    assert served.listed


def test_a_walk_remembered_expires_for_the_split_caches_hourly_touch(
    served, folder, old_files, monkeypatch
):
    served.search(folder)
    served.search(folder)
    assert served.listed == []
    later = split_cache.time.time() + server._SNAPSHOT_S + 1
    monkeypatch.setattr(split_cache.time, "time", lambda: later)
    served.search(folder)
    assert served.listed


def test_walks_remembered_are_bounded(tmp_path, old_files):
    snapshots = split_cache.Snapshots(max_entries=10, max_walks=2)
    for n in range(4):
        (tmp_path / f"{n}.txt").write_text("text\n")

    def walked(*names: str) -> split_cache.Walked:
        record = split_cache.Walked(max_entries=5)
        for name in names:
            record.watch(str(tmp_path / name))
            record.add(name)
        return record

    snapshots.put("a", walked("0.txt"), until=float("inf"))
    snapshots.put("b", walked("1.txt"), until=float("inf"))
    snapshots.put("c", walked("2.txt"), until=float("inf"))  # past two walks: a goes
    assert snapshots.get("a") is None and snapshots.get("c") == ("2.txt",)
    too_long = walked("0.txt", "1.txt", "2.txt")  # 6 paths and steps, past its 5
    assert not too_long.usable and too_long.stats == {}
    snapshots.put("d", too_long, until=float("inf"))
    assert snapshots.get("d") is None
    snapshots.put("e", walked("0.txt", "1.txt"), until=float("inf"))
    assert snapshots.size <= 10
    (tmp_path / "1.txt").write_text("changed\n")
    assert snapshots.get("e") is None and len(snapshots) < 2


def test_files_and_folders_named_together(served, folder, old_files):
    """A file named itself (read strictly), a folder, and a folder holding both: one walk,
    remembered whole, each named as the client named it."""
    names = [
        [str(folder / "deep"), "./notes/deep/"],
        [str(folder / "0.txt"), "notes/0.txt"],
        [str(folder), str(folder)],
    ]
    change_and_search(
        served, folder, lambda: (folder / "0.txt").write_text(note(0, "zero ")), names=names
    )
    assert {"notes/0.txt", f"{folder}/0.txt"} <= set(
        paths(served.search(folder, top_k=50, names=names))
    )
