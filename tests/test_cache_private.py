"""The embedding cache is private: its folder 0700 and its files 0600, so another user can
neither read a user's vectors nor test whether a sentence was ever embedded."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from modernbert_cli.cache import EmbeddingCache
from modernbert_cli.errors import ExitStatus

TEXTS = ["A man is eating food.", "A woman plays the violin.", "The new movie is awesome."]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def _cache_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("embeddings.sqlite3*"))


def test_the_cache_folder_and_files_are_private(cli, tiny_model, tmp_path, monkeypatch):
    cache_dir = tmp_path / "new" / "cache"
    monkeypatch.setenv("MODERNBERT_CLI_CACHE_DIR", str(cache_dir))
    old_mask = os.umask(0o022)
    try:
        assert cli("embed", "-m", tiny_model, *TEXTS).code == ExitStatus.OK
        store = EmbeddingCache(cache_dir / "embeddings.sqlite3")
        assert store.stats()  # opened again, with its -wal and -shm
        files = _cache_files(cache_dir)
        store.close()
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    assert [f.name for f in files][:1] == ["embeddings.sqlite3"]
    assert {stat.S_IMODE(f.stat().st_mode) for f in files if f.exists()} == {0o600}


def test_a_cache_file_made_readable_before_is_narrowed(cli, tiny_model, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    monkeypatch.setenv("MODERNBERT_CLI_CACHE_DIR", str(cache_dir))
    assert cli("embed", "-m", tiny_model, *TEXTS).code == ExitStatus.OK
    for file in _cache_files(cache_dir):
        file.chmod(0o644)  # as an older version left it

    assert cli("embed", "-m", tiny_model, "another text").code == ExitStatus.OK

    assert {stat.S_IMODE(f.stat().st_mode) for f in _cache_files(cache_dir)} == {0o600}


@root_only
@pytest.mark.skipif(shutil.which("runuser") is None, reason="needs runuser")
def test_another_user_cannot_read_the_cache(cli, tiny_model, monkeypatch):
    # pytest's own temporary folders are closed to others: use one that is open to them,
    # so that only the cache's own modes stand in the way.
    shared = Path(tempfile.mkdtemp(prefix="modernbert-cli-shared-"))
    try:
        shared.chmod(0o755)
        control = shared / "control.txt"
        control.write_text("anyone may read this\n")
        control.chmod(0o644)
        cache_dir = shared / "cache"
        monkeypatch.setenv("MODERNBERT_CLI_CACHE_DIR", str(cache_dir))
        assert cli("embed", "-m", tiny_model, *TEXTS).code == ExitStatus.OK
        cache_file = cache_dir / "embeddings.sqlite3"
        assert cache_file.stat().st_size > 0

        def nobody_reads(path: Path) -> subprocess.CompletedProcess:
            command = ["runuser", "-u", "nobody", "--", "head", "-c", "16", str(path)]
            return subprocess.run(command, capture_output=True, timeout=60)

        assert nobody_reads(control).returncode == 0, "the test cannot reach the folder"
        # The folder stops them; and should it be opened, the file still does.
        for opened in (False, True):
            if opened:
                cache_dir.chmod(0o755)
            result = nobody_reads(cache_file)
            assert result.returncode != 0, f"nobody read the cache (folder opened: {opened})"
            assert b"Permission denied" in result.stderr
    finally:
        shutil.rmtree(shared)
