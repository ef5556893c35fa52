"""Parts of a resumable run, without Ray: inputs read as one-process embed reads them,
every text in exactly one part, and folders that refuse to be mixed."""

from __future__ import annotations

import json
import os

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from modernbert_cli import parts  # noqa: E402
from modernbert_cli.errors import InputError, UsageError  # noqa: E402
from modernbert_cli.inputs import InputSpec, read_texts  # noqa: E402

# Inputs with what trips readers up: a BOM, CRLF, blank lines, quoted newlines, non-ASCII.
FILES = {
    "lines.txt": "\ufefffirst line\r\n\r\n  second, indented  \nthird — ünïcode\n   \nlast",
    "records.jsonl": '{"text": "a json text"}\n\n"a bare"\n{"text": "  "}\n{"text": "x", "n": 1}\n',
    "table.csv": 'id,text\n1,plain\n2,"two\nlines"\n,\n3,  spaced  \n4,"a ""quote"""\n',
    "table.tsv": "text\tid\none\t1\n\t2\ntwo\t3\n",
}


@pytest.fixture
def files(tmp_path):
    for name, content in FILES.items():
        (tmp_path / name).write_bytes(content.encode())
    pq.write_table(
        pa.table({"id": [1, 2, 3, 4], "text": ["p one", None, " ", "p four"]}),
        tmp_path / "rows.parquet",
        row_group_size=2,
    )
    return tmp_path


def all_texts(path: str, field=None, column=None):
    source = parts.list_inputs([path])[0]
    return [text for _, _, text in parts.records(source, field, column)]


@pytest.mark.parametrize("name", sorted(FILES))
def test_texts_and_sources_are_those_of_one_process_embed(files, name):
    path = str(files / name)
    expected = read_texts(InputSpec(files=[path])).texts
    assert all_texts(path) == expected


def test_a_jsonl_field_and_a_csv_column_by_number(files):
    path = str(files / "table.csv")
    assert all_texts(path, column="1") == read_texts(InputSpec(files=[path], column="1")).texts
    (files / "f.jsonl").write_text('{"body": "b1"}\n{"body": "b2"}\n')
    assert [t.text for t in all_texts(str(files / "f.jsonl"), field="body")] == ["b1", "b2"]


def test_parquet_rows_are_sources(files):
    path = str(files / "rows.parquet")
    assert [(t.text, t.source) for t in all_texts(path)] == [
        ("p one", f"{path}:1"),
        ("p four", f"{path}:4"),
    ]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.txt", b"ok\nok\n\xff\n", "bad.txt:3: invalid UTF-8 (byte 0xff); convert it to UTF-8"),
        ("bin.txt", b"\x00\x01binary", "bin.txt: binary file, not text"),
        ("bad.jsonl", b'{"text": "a"}\n{nope\n', "bad.jsonl:2: invalid JSON"),
        ("f.jsonl", b'{"body": "a"}\n', "f.jsonl:1: no field 'text' (fields: body)"),
        ("t.csv", b"a,b\n1,2\n", "t.csv: several columns (a, b); choose one with --column"),
        ("short.csv", b"a,text\n1\n", "short.csv:2: row has 1 field(s), column 'text' is #2"),
    ],
)
def test_errors_name_the_file_and_line_as_one_process_does(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as ours:
        parts.scan_files(parts.list_inputs([str(path)]), None, None, 10)
    with pytest.raises(InputError) as theirs:
        read_texts(InputSpec(files=[str(path)]))
    assert str(ours.value).startswith(f"{path}".replace(name, "") + message)
    assert str(ours.value) == str(theirs.value)


# --- parts ---------------------------------------------------------------------------------


def plan(paths, part_size, field=None, column=None):
    sources = parts.list_inputs([str(p) for p in paths])
    manifest = parts.plan_parts(parts.scan_files(sources, field, column, part_size), part_size)
    return {**manifest, "field": field, "column": column}


@pytest.mark.parametrize("part_size", [1, 2, 3, 5, 7, 100])
def test_every_text_is_in_exactly_one_part_in_input_order(files, part_size):
    names = ["lines.txt", "table.csv", "rows.parquet", "records.jsonl", "table.tsv"]
    paths = [str(files / n) for n in names]
    manifest = plan(paths, part_size)
    expected = [t for p in paths for t in all_texts(p)]
    read = [parts.read_part(manifest, part) for part in manifest["parts"]]

    assert [t for texts in read for t in texts] == expected
    assert manifest["texts"] == len(expected)
    assert all(0 < len(texts) <= part_size for texts in read)
    assert [len(texts) for texts in read] == [p["texts"] for p in manifest["parts"]]


def test_files_fill_whole_parts_and_small_remainders_share_one(tmp_path):
    sizes = [5, 2, 2, 7]
    paths = []
    for i, size in enumerate(sizes):
        paths.append(tmp_path / f"{i}.txt")
        paths[-1].write_text("".join(f"text {i}.{n}\n" for n in range(size)))
    manifest = plan(paths, 4)
    # 0.txt: 4 | its 1 + 1.txt's 2 | 2.txt's 2 (3 + 2 > 4) | 3.txt: 4 | its 3
    assert [p["texts"] for p in manifest["parts"]] == [4, 3, 2, 4, 3]
    assert [p["name"] for p in manifest["parts"]][-1] == "part-00004.parquet"
    assert [[s[0] for s in p["segments"]] for p in manifest["parts"]] == [
        [0],
        [0, 1],
        [2],
        [3],
        [3],
    ]


def test_a_file_changed_since_the_plan_is_an_input_error(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one\ntwo\nthree\n")
    manifest = plan([path], 2)
    path.write_text("one\n")
    with pytest.raises(InputError, match=r"a\.txt: has changed since the run began"):
        parts.read_part(manifest, manifest["parts"][1])


def test_blank_inputs_are_an_input_error(tmp_path):
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(InputError, match="no input: every text given was blank"):
        plan([tmp_path / "blank.txt"], 10)


def test_a_folder_lists_its_files_sorted_skipping_hidden_ones_and_markers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("data/b.txt", "data/a/2.jsonl", "data/a/1.csv", "data/.hidden", "data/_SUCCESS"):
        os.makedirs(os.path.dirname(name), exist_ok=True)
        with open(name, "w") as f:
            f.write("text\n")
    sources = parts.list_inputs(["data", "data/b.txt"])
    assert [s["name"] for s in sources] == [
        "data/a/1.csv",
        "data/a/2.jsonl",
        "data/b.txt",
        "data/b.txt",
    ]
    assert [s["kind"] for s in sources] == ["csv", "jsonl", "lines", "lines"]
    assert sources[0]["uri"] == str(tmp_path / "data/a/1.csv")  # what a worker elsewhere opens


def test_missing_inputs_and_stdin_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"nope\.txt: no such file or folder"):
        parts.list_inputs([str(tmp_path / "nope.txt")])
    with pytest.raises(UsageError, match="not stdin"):
        parts.list_inputs(["-"])


# --- the output folder ---------------------------------------------------------------------


def test_a_new_or_empty_folder_has_no_manifest_and_one_is_read_back(tmp_path):
    folder = parts.OutputFolder(str(tmp_path / "out"))
    assert folder.manifest() is None
    (tmp_path / "out").mkdir()
    assert folder.manifest() is None
    folder.write_manifest({"format": parts.MANIFEST_FORMAT, "run": "x"})
    assert folder.manifest() == {"format": parts.MANIFEST_FORMAT, "run": "x"}
    assert sorted(os.listdir(tmp_path / "out")) == ["manifest.json"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: (d / "other.txt").write_text("x"), "not empty and has no manifest.json"),
        (lambda d: (d / "manifest.json").write_text("{broken"), "manifest.json is damaged"),
        (lambda d: (d / "manifest.json").write_text('{"format": 99}'), "not one this version"),
    ],
)
def test_folders_that_are_not_ours_are_refused(tmp_path, setup, message):
    (tmp_path / "out").mkdir()
    setup(tmp_path / "out")
    with pytest.raises(UsageError, match=message):
        parts.OutputFolder(str(tmp_path / "out")).manifest()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        parts.OutputFolder(str(tmp_path / "file")).manifest()


def test_a_part_counts_as_done_only_if_its_footer_says_this_run_and_all_rows(tmp_path):
    import numpy as np

    from modernbert_cli.inputs import Text
    from modernbert_cli.parquet import ParquetEmbeddingsWriter

    folder = parts.OutputFolder(str(tmp_path))
    part = {"name": "part-00000.parquet", "texts": 2}
    assert not folder.part_is_done(part, "run-a")
    with ParquetEmbeddingsWriter(folder.path(part["name"]), {"run": "run-a"}) as writer:
        writer.write([Text("a", "x:1"), Text("b", "x:2")], np.zeros((2, 3), np.float32))
    assert folder.part_is_done(part, "run-a")
    assert not folder.part_is_done(part, "run-b")
    assert not folder.part_is_done({**part, "texts": 3}, "run-a")
    (tmp_path / "part-00000.parquet").write_bytes(b"truncated")
    assert not folder.part_is_done(part, "run-a")


def test_mismatches_are_refused_with_what_differs(tmp_path):
    (tmp_path / "a.txt").write_text("x\n")
    sources = parts.list_inputs([str(tmp_path / "a.txt")])
    shape = {"inputs": parts.input_identity(sources), "field": None, "column": None}
    previous = {
        "inputs": sources,
        "field": None,
        "column": None,
        "part_size": 10,
        "settings": {"model": "m1", "precision": "float32"},
    }

    def refusal(**changes) -> str:
        settings = changes.pop("settings", previous["settings"])
        part_size = changes.pop("part_size", 10)
        with pytest.raises(UsageError) as error:
            parts.check_same("out", previous, {**shape, **changes}, part_size, settings)
        return str(error.value)

    parts.check_same("out", previous, shape, 10, previous["settings"])  # the same: fine
    assert "precision 'float32' → 'int8'" in refusal(settings={"model": "m1", "precision": "int8"})
    assert "--part-size 10, not 20" in refusal(part_size=20)
    assert "--field None, not 'body'" in refusal(field="body")
    changed = [[uri, size + 1, mtime] for uri, size, mtime in shape["inputs"]]
    assert f"{sources[0]['uri']} has changed since" in refusal(inputs=changed)
    assert "was not among them" in refusal(inputs=[*shape["inputs"], ["/b.txt", 1, 1]])
    assert all("\n" not in refusal(part_size=n) for n in (1, 2))
    assert json.dumps(previous)  # plain data: it is what manifest.json holds
