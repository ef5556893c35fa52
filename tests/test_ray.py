"""`embed --ray` as a library call, on a local Ray: every text once, one-process numbers,
resumable after an interrupt, mismatched folders refused, bad addresses refused at once.

Ray starts once per test session (2 CPUs); the tests that run jobs on it are slow.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from conftest import ROOT  # noqa: E402

from modernbert_cli import distributed  # noqa: E402
from modernbert_cli.distributed import RayProgress, run_ray_embed  # noqa: E402
from modernbert_cli.errors import InputError, SettingError, UsageError  # noqa: E402
from modernbert_cli.inputs import InputSpec, read_texts  # noqa: E402
from modernbert_cli.parquet import iter_parquet_texts, read_embeddings  # noqa: E402

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "river",
    "blue",
    "fast",
    "slow",
    "code",
    "data",
    "model",
    "text",
    "idaho",
]


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session: starting it costs seconds, and 2 CPUs is all."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="mbcli-ray-")  # short: Ray's socket paths must fit
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        _temp_dir=temp_dir,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
    )
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def sentences(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(1, 14))) for _ in range(count)]


def write_inputs(folder: Path) -> list[str]:
    """One file of each kind, with blank lines and a quoted newline to keep sources honest."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = sentences(23, 0)
    lines[4] = "   "
    (folder / "a.txt").write_text("\n".join(lines) + "\n")
    rows = [f'{i},"{s}"' for i, s in enumerate(sentences(9, 1))]
    rows[2] = '2,"two\nlines"'
    (folder / "b.csv").write_text("id,text\n" + "\n".join(rows) + "\n")
    pq.write_table(
        pa.table({"n": list(range(6)), "text": [*sentences(5, 2), None]}),
        folder / "c.parquet",
        row_group_size=4,
    )
    (folder / "d.jsonl").write_text(
        "".join(json.dumps({"text": s}) + "\n" for s in sentences(8, 3))
    )
    return [str(folder / n) for n in ("a.txt", "b.csv", "c.parquet", "d.jsonl")]


def expected_texts(paths: list[str]):
    texts = []
    for path in paths:
        if path.endswith(".parquet"):
            texts += list(iter_parquet_texts(path))
        else:
            texts += read_texts(InputSpec(files=[path])).texts
    return texts


def one_process(model_path: str, texts) -> np.ndarray:
    from conftest import load_model

    return load_model(model_path).encode([t.text for t in texts])


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Each part file's inode and modification time: rewritten parts show up here."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.glob("part-*"))}


# --- no Ray needed -------------------------------------------------------------------------


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UsageError) as error:
        run_ray_embed(["in.txt"], "out", embedder_options={"model": "minilm"})
    assert str(error.value) == "Ray is not installed: pip install 'modernbert-cli[ray]'"


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("ray://nowhere:1", "address='ray://nowhere:1': unknown host 'nowhere'"),
        ("ray://127.0.0.1:1", "address='ray://127.0.0.1:1': cannot connect to 127.0.0.1:1"),
        ("127.0.0.1:1", "address='127.0.0.1:1': cannot connect to 127.0.0.1:1"),
        ("nowhere", "address='nowhere': nowhere: give local, auto, ray://HOST:PORT or HOST:PORT"),
        ("http://host:1", "address='http://host:1': http://host:1: give local, auto"),
    ],
)
def test_a_bad_address_is_refused_before_ray_tries_it(
    tmp_path, tiny_model, monkeypatch, address, message
):
    import ray

    # Ray would retry a dead address for minutes: it must never get to try.
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init was called"))
    (tmp_path / "in.txt").write_text("a text\n")
    with pytest.raises(UsageError) as error:
        run_ray_embed(
            [str(tmp_path / "in.txt")],
            str(tmp_path / "out"),
            address=address,
            embedder_options={"model": tiny_model},
        )
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_auto_checks_the_address_in_ray_address(tmp_path, tiny_model, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init was called"))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    (tmp_path / "in.txt").write_text("a text\n")
    with pytest.raises(SettingError, match=r"'auto': RAY_ADDRESS=127\.0\.0\.1:1: cannot connect"):
        run_ray_embed(
            [str(tmp_path / "in.txt")],
            str(tmp_path / "out"),
            address="auto",
            embedder_options={"model": tiny_model},
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"workers": 0}, "workers=0: must be at least 1"),
        ({"part_size": 0}, "part_size=0: must be at least 1"),
        ({"gpus_per_worker": -1}, "gpus_per_worker=-1: cannot be negative"),
        ({"precision": "float16"}, "precision='float16': choose from float32"),
        ({"prompt": "q: ", "prompt_name": "query"}, "prompt: cannot be given with prompt_name"),
        ({"prompt_name": "query"}, "prompt_name='query': model"),
        ({"embedder_options": {"model": "x", "device": "cuda"}}, "device='cuda': needs gpus_per"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(tmp_path, tiny_model, options, message):
    (tmp_path / "in.txt").write_text("a text\n")
    kwargs = {"embedder_options": {"model": tiny_model}, "address": "ray://nowhere:1", **options}
    with pytest.raises(SettingError) as error:
        run_ray_embed([str(tmp_path / "in.txt")], str(tmp_path / "out"), **kwargs)
    assert str(error.value).startswith(message)


# --- on a local Ray ------------------------------------------------------------------------

PART_SIZE = 7


@pytest.fixture(scope="module")
def first_run(ray_session, tiny_model, tmp_path_factory):
    """One complete run over four kinds of input; the tests below read and re-run it."""
    root = tmp_path_factory.mktemp("ray")
    paths = write_inputs(root / "inputs")
    seen: list[RayProgress] = []
    result = run_ray_embed(
        paths,
        str(root / "out"),
        embedder_options={"model": tiny_model},
        address="local",
        workers=2,
        part_size=PART_SIZE,
        progress=seen.append,
    )
    return {"paths": paths, "out": root / "out", "result": result, "progress": seen}


@pytest.mark.slow
def test_every_text_once_with_its_source_and_one_process_numbers(first_run, tiny_model):
    texts = expected_texts(first_run["paths"])
    saved = read_embeddings(str(first_run["out"]))

    assert saved.texts == texts  # parts in name order are the input order
    np.testing.assert_allclose(saved.embeddings, one_process(tiny_model, texts), atol=1e-5)
    assert saved.embeddings.dtype == np.float32
    assert saved.settings["model"] == tiny_model
    assert saved.settings["precision"] == "float32"

    result = first_run["result"]
    manifest = json.loads((first_run["out"] / "manifest.json").read_text())
    names = sorted(p.name for p in first_run["out"].glob("part-*.parquet"))
    assert names == [p["name"] for p in manifest["parts"]]
    assert manifest["done"] == list(range(len(names)))
    assert all(pq.read_metadata(first_run["out"] / n).num_rows <= PART_SIZE for n in names)
    assert result.texts == manifest["texts"] == len(texts)
    assert (result.parts_written, result.parts_kept) == (len(names), 0)
    last = first_run["progress"][-1]
    assert (last.parts_done, last.parts_total) == (len(names), len(names))
    assert last.texts_done == len(texts)
    assert last.line().startswith(f"embedding: {len(names)}/{len(names)} parts, {len(texts)}/")


@pytest.mark.slow
def test_a_rerun_writes_only_the_missing_parts(first_run, tiny_model):
    out = first_run["out"]
    (out / "part-00002.parquet").unlink()
    (out / ".part-00003.parquet.1234abcd.tmp").write_bytes(b"a worker stopped mid-write")
    before = snapshot(out)

    result = run_ray_embed(  # no --part-size: the folder's own
        first_run["paths"], str(out), embedder_options={"model": tiny_model}, workers=2
    )

    after = snapshot(out)
    assert {n: after[n] for n in before} == before  # the others untouched, not rewritten
    assert "part-00002.parquet" in after
    assert (result.parts_written, result.parts_kept) == (1, len(before))
    assert not list(out.glob(".*.tmp"))
    saved = read_embeddings(str(out))
    assert saved.texts == expected_texts(first_run["paths"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"precision": "int8"}, "holds embeddings made otherwise (precision 'float32' → 'int8')"),
        ({"normalize": True}, "normalize False → True"),
        ({"model": "minilm"}, "model '"),
        ({"part_size": 5}, "was begun with --part-size 7, not 5"),
        ({"inputs": 1}, "was begun on other inputs ("),
        ({"column": "text"}, "was begun with --column None, not 'text'"),
    ],
)
def test_a_folder_of_another_model_settings_or_inputs_is_refused(
    first_run, tiny_model, minilm_path, change, message
):
    out = first_run["out"]
    before = snapshot(out), (out / "manifest.json").read_bytes()
    change = dict(change)
    paths = first_run["paths"][: change.pop("inputs", None) or None]
    model = minilm_path if change.pop("model", None) else tiny_model
    with pytest.raises(UsageError) as error:
        run_ray_embed(
            paths,
            str(out),
            embedder_options={"model": model},
            part_size=change.pop("part_size", PART_SIZE),
            **change,
        )
    assert message in str(error.value)
    assert str(error.value).startswith(f"-o {out}: ")
    assert "\n" not in str(error.value)
    assert (snapshot(out), (out / "manifest.json").read_bytes()) == before


@pytest.mark.slow
def test_int8_parts_share_the_ranges_of_the_first_texts_as_one_process_embed(
    ray_session, tiny_model, tmp_path, cli
):
    paths = write_inputs(tmp_path / "inputs")[:1]
    out = tmp_path / "out"
    run_ray_embed(
        paths,
        str(out),
        embedder_options={"model": tiny_model},
        part_size=5,
        precision="int8",
        normalize=True,
    )
    saved = read_embeddings(str(out))
    result = cli(
        "embed",
        "-m",
        tiny_model,
        "-i",
        paths[0],
        "--precision",
        "int8",
        "--normalize",
        "-o",
        str(tmp_path / "one.npy"),
    )
    assert result.code == 0, result.stderr
    expected = np.load(tmp_path / "one.npy")

    assert saved.embeddings.dtype == np.int8
    assert pq.read_schema(out / "part-00000.parquet").field("embedding").type == pa.list_(
        pa.int8(), expected.shape[1]
    )
    # Float rounding may move a value across a bucket edge; per-part ranges would move many.
    difference = np.abs(saved.embeddings.astype(int) - expected.astype(int))
    assert difference.max() <= 1
    assert (difference > 0).mean() < 0.01
    assert len(json.loads((out / "manifest.json").read_text())["ranges"]) == 2


_INTERRUPTED = textwrap.dedent(
    """
    import sys
    from modernbert_cli.distributed import run_ray_embed

    address, model, source, out = sys.argv[1:]
    try:
        run_ray_embed([source], out, address=address, workers=1, part_size=40,
                      # one text per batch: slow enough to be stopped part-way
                      embedder_options={"model": model, "max_batch_tokens": 32})
    except KeyboardInterrupt:
        sys.exit(130)
    """
)


@pytest.mark.slow
def test_ctrl_c_then_the_same_command_finishes_the_job(ray_session, tiny_model, tmp_path):
    source = tmp_path / "corpus.txt"
    texts = sentences(1200, 4)
    source.write_text("\n".join(texts) + "\n")
    out = tmp_path / "out"
    address = ray_session.get_runtime_context().gcs_address  # a second driver joins
    driver = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED, address, tiny_model, str(source), str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300  # a bound on a broken run, not a speed test
        while not list(out.glob("part-*.parquet")):
            assert driver.poll() is None, driver.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "no part was written"
            time.sleep(0.05)
        driver.send_signal(signal.SIGINT)
        _, stderr = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode == 130, stderr.decode()[-2000:]
    _wait_until_still(out)  # a worker of the stopped job may finish the part it was on
    before = snapshot(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert 0 < len(before) < len(manifest["parts"])  # stopped part-way
    assert {manifest["parts"][i]["name"] for i in manifest["done"]} <= set(before)

    result = run_ray_embed(
        [str(source)],
        str(out),
        embedder_options={"model": tiny_model, "max_batch_tokens": 32},
        part_size=40,
    )

    after = snapshot(out)
    assert {n: after[n] for n in before} == before
    assert len(after) == len(manifest["parts"]) == result.parts_total
    assert result.parts_kept == len(before)
    saved = read_embeddings(str(out))
    expected = read_texts(InputSpec(files=[str(source)])).texts
    assert saved.texts == expected  # every text exactly once, in order
    np.testing.assert_allclose(saved.embeddings, one_process(tiny_model, expected), atol=1e-5)


def _wait_until_still(folder: Path, quiet_s: float = 3.0, limit_s: float = 60.0) -> None:
    """Wait until no part file has appeared for ``quiet_s`` seconds."""
    start = time.monotonic()
    seen, since = snapshot(folder), time.monotonic()
    while time.monotonic() - since < quiet_s and time.monotonic() - start < limit_s:
        time.sleep(0.2)
        now = snapshot(folder)
        if now != seen:
            seen, since = now, time.monotonic()


def test_a_model_that_is_not_there_is_refused_before_ray_starts(tmp_path, monkeypatch):
    import ray

    from modernbert_cli.errors import ModelError

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init was called"))
    (tmp_path / "in.txt").write_text("a text\n")
    with pytest.raises(ModelError, match="no-such-model"):
        run_ray_embed(
            [str(tmp_path / "in.txt")],
            str(tmp_path / "out"),
            embedder_options={"model": str(tmp_path / "no-such-model")},
        )


class _Cluster:
    def __init__(self, **resources: float) -> None:
        self.resources = resources

    def cluster_resources(self) -> dict[str, float]:
        return self.resources


@pytest.mark.parametrize(
    ("address", "resources", "asked", "workers", "note"),
    [
        ("local", {"CPU": 8}, (4, 0, 2), 4, None),
        ("local", {"CPU": 2}, (4, 0, 1), 2, "4 workers do not fit on this machine: running 2"),
        ("local", {"CPU": 16, "GPU": 2}, (4, 1, 2), 2, "running 2"),
        ("ray://head:10001", {"CPU": 2}, (4, 0, 1), 4, "the cluster holds 2 of the 4 workers"),
        ("ray://head:10001", {"CPU": 8}, (2, 1, 1), 2, "has 0 GPUs for now, a worker needs 1"),
    ],
)
def test_workers_fit_what_ray_has(address, resources, asked, workers, note):
    notes: list[str] = []
    count, gpus, cpus = asked
    fit = distributed._fit_workers(_Cluster(**resources), address, count, gpus, cpus, notes.append)
    assert fit == workers
    assert notes == [] if note is None else note in notes[0]


@pytest.mark.parametrize(
    ("device", "compile", "texts", "workers", "expected"),
    [
        ("cpu", "auto", 10**6, 1, "off"),
        ("cuda", "auto", 100_000, 2, "on"),  # 50,000 texts a worker: worth compiling
        ("cuda", "auto", 30_000, 2, "off"),  # 15,000 a worker: one-process embed would not
        ("cuda", "off", 10**6, 1, "off"),
        ("cpu", "on", 10, 1, "on"),
    ],
)
def test_compile_auto_is_decided_for_a_workers_share(device, compile, texts, workers, expected):
    options = {"device": device, "compile": compile}
    assert distributed._resolve_compile(options, texts, workers) == expected


def test_a_local_ray_without_the_gpus_asked_for_is_refused():
    with pytest.raises(SettingError, match="gpus_per_worker=1: this machine's Ray has 0 GPUs"):
        distributed._fit_workers(_Cluster(CPU=2), "local", 1, 1, 1, print)


def test_the_worker_factory_is_the_one_place_that_builds_the_model(monkeypatch):
    built = []
    monkeypatch.setattr(distributed, "Embedder", lambda **o: built.append(o) or "emb")
    assert distributed._make_embedder({"model": "m", "dtype": "float32"}) == "emb"
    assert built == [{"model": "m", "dtype": "float32"}]


# --- a worker, in this process -------------------------------------------------------------


def _job(tmp_path: Path, tiny_model: str, paths: list[str], part_size: int) -> dict:
    from modernbert_cli import parts

    sources = parts.list_inputs(paths)
    manifest = parts.plan_parts(parts.scan_files(sources, None, None, part_size), part_size)
    settings = {**distributed._describe({"model": tiny_model, "dtype": "float32"})}
    settings.update(normalize=False, precision="float32", truncate_dim=None, prompt=None)
    manifest.update(run="run-1", settings={**settings, "prompt_name": None}, field=None)
    manifest.update(column=None, ranges=None)
    options = distributed._worker_options({"model": tiny_model, "dtype": "float32"}, 0)
    return {"manifest": manifest, "options": options, "output": str(tmp_path / "out")}


def test_a_worker_reads_embeds_and_writes_a_part_a_chunk_at_a_time(
    tmp_path, tiny_model, monkeypatch
):
    monkeypatch.setattr(distributed, "CHUNK_TEXTS", 4)
    paths = write_inputs(tmp_path / "inputs")[:1]
    (tmp_path / "out").mkdir()
    worker = distributed._PartWorker(_job(tmp_path, tiny_model, paths, part_size=100))

    row = worker({"part": np.array([0])})

    assert row["error"] == [""]
    texts = expected_texts(paths)
    assert row["texts"] == [len(texts)]
    assert all(row[k][0] >= 0 for k in ("read_s", "embed_s", "write_s"))
    part = tmp_path / "out" / "part-00000.parquet"
    assert pq.ParquetFile(part).metadata.num_row_groups == -(-len(texts) // 4)
    saved = read_embeddings(str(part))
    assert saved.texts == texts
    np.testing.assert_allclose(saved.embeddings, one_process(tiny_model, texts), atol=1e-5)


def test_a_worker_hands_back_an_input_error_and_leaves_no_part(tmp_path, tiny_model):
    paths = write_inputs(tmp_path / "inputs")[:1]
    (tmp_path / "out").mkdir()
    worker = distributed._PartWorker(_job(tmp_path, tiny_model, paths, part_size=100))
    Path(paths[0]).write_text("shorter now\n")

    row = worker({"part": np.array([0])})

    assert row["kind"] == ["InputError"]
    assert row["error"] == [f"{paths[0]}: has changed since the run began"]
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    "error",
    [
        SettingError("truncate_dim", "must be between 1 and the model's 32 dimensions", 99),
        SettingError("prompt", "cannot be given with {prompt_name}"),
        InputError("a.txt:3: invalid UTF-8 (byte 0xff); convert it to UTF-8"),
    ],
)
def test_an_error_in_a_worker_is_raised_again_in_the_driver_as_itself(error):
    data = distributed._error(error)
    assert all(isinstance(v, str) for v in data.values())  # one type per column
    with pytest.raises(type(error)) as again:
        distributed._raise(json.loads(json.dumps(data)))
    assert str(again.value) == str(error)
    if isinstance(error, SettingError):
        assert again.value.worded(lambda n: f"--{n}") == error.worded(lambda n: f"--{n}")


def test_read_ahead_keeps_order_and_raises_where_the_reader_failed():
    def chunks():
        yield [1]
        yield [2]
        raise UsageError("broken")

    got = []
    with pytest.raises(UsageError, match="broken"):
        for chunk in distributed._read_ahead(chunks()):
            got.append(chunk)
    assert got == [[1], [2]]
    assert list(distributed._read_ahead(iter([[1], [2], [3]]))) == [[1], [2], [3]]


# --- through the command line ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a text"], "--ray reads files given with -i"),
        (["-i", "x.txt", "--documents"], "--ray reads files given with -i"),
        (["-i", "x.txt", "-f", "jsonl"], "--ray reads files given with -i"),
        (["-i", "x.txt"], "name it with -o DIR"),
    ],
)
def test_embed_ray_usage_errors_come_before_ray(cli, no_model, args, message, monkeypatch):
    monkeypatch.setattr(distributed, "_import_ray", lambda: pytest.fail("Ray was started"))
    result = cli("embed", "--ray", "local", *args)
    assert result.code == 2, result.stderr
    assert message in result.stderr
    assert result.stderr.count("\n") == 1


def test_embed_ray_bad_address_is_one_line_naming_the_option(cli, tiny_model, tmp_path):
    (tmp_path / "a.txt").write_text("a cat\n")
    result = cli(
        "embed", "--ray", "nowhere::", "-i", str(tmp_path / "a.txt"), "-o", str(tmp_path / "out"),
        "-m", tiny_model,
    )  # fmt: skip
    assert result.code == 2, result.stderr
    assert result.stderr.startswith("modernbert-cli: error: --ray nowhere::")
    assert result.stderr.count("\n") == 1


@pytest.mark.slow
def test_embed_ray_from_the_command_line(cli, ray_session, tiny_model, tmp_path):
    paths = write_inputs(tmp_path / "inputs")
    out = tmp_path / "out"
    args = ["embed", "--ray", "local", "--workers", "2", "--part-size", "7"]
    args += [x for path in paths for x in ("-i", path)]
    result = cli(*args, "-o", str(out), "-m", tiny_model, "--device", "cpu")
    assert result.code == 0, result.stderr
    assert result.stdout == ""  # data went to the folder; notes to stderr
    texts = expected_texts(paths)
    assert f"{len(texts):,} texts in " in result.stderr
    saved = read_embeddings(str(out))
    assert saved.texts == texts
    np.testing.assert_allclose(saved.embeddings, one_process(tiny_model, texts), atol=1e-5)
    again = cli(*args, "-o", str(out), "-m", tiny_model, "--device", "cpu")
    assert again.code == 0, again.stderr
    assert "(0 written now," in again.stderr
