"""Parquet in and out: embeddings files that say what they are, texts read a batch at a time."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from modernbert_cli.errors import InputError, OutputError  # noqa: E402
from modernbert_cli.inputs import Text  # noqa: E402
from modernbert_cli.parquet import (  # noqa: E402
    METADATA_KEY,
    ParquetEmbeddingsWriter,
    iter_parquet_texts,
    read_embeddings,
)

SETTINGS = {"model": "tiny", "fingerprint": "abc", "precision": "float32", "normalize": False}


def texts(n: int, start: int = 0) -> list[Text]:
    return [Text(f"text {i}", f"in.txt:{i + 1}") for i in range(start, start + n)]


def write(path, chunks, settings=SETTINGS) -> None:
    with ParquetEmbeddingsWriter(str(path), settings) as writer:
        for chunk_texts, vectors in chunks:
            writer.write(chunk_texts, vectors)


# --- writing -------------------------------------------------------------------------------


def test_round_trip_with_pyarrow_and_pandas(tmp_path):
    import pandas as pd

    path = tmp_path / "out.parquet"
    vectors = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    write(path, [(texts(4), vectors[:4]), (texts(3, 4), vectors[4:])])

    table = pq.read_table(path)
    assert table.column_names == ["text", "source", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 5)
    assert table.column("source").to_pylist()[-1] == "in.txt:7"
    assert json.loads(table.schema.metadata[METADATA_KEY]) == SETTINGS
    # One row group per write: memory holds a chunk, never the whole file.
    assert pq.ParquetFile(path).metadata.num_row_groups == 2

    frame = pd.read_parquet(path)
    assert frame["text"].tolist() == [t.text for t in texts(7)]
    np.testing.assert_array_equal(np.stack(frame["embedding"].to_numpy()), vectors)

    back = read_embeddings(str(path))
    assert back.texts == texts(7)
    assert back.settings == SETTINGS
    np.testing.assert_array_equal(back.embeddings, vectors)


@pytest.mark.parametrize(
    ("precision", "dtype", "dims"),
    [
        ("int8", np.int8, 16),
        ("uint8", np.uint8, 16),
        ("binary", np.int8, 2),
        ("ubinary", np.uint8, 2),
    ],
)
def test_quantized_embeddings_keep_their_dtype(tmp_path, precision, dtype, dims):
    try:
        from sentence_transformers.util.quantization import quantize_embeddings
    except ImportError:
        from sentence_transformers.quantization import quantize_embeddings

    floats = np.random.default_rng(1).standard_normal((6, 16)).astype(np.float32)
    vectors = quantize_embeddings(floats, precision=precision)
    path = tmp_path / f"{precision}.parquet"
    write(path, [(texts(6), vectors)], {**SETTINGS, "precision": precision})

    field = pq.read_schema(path).field("embedding")
    assert field.type == pa.list_(pa.from_numpy_dtype(dtype), dims)
    back = read_embeddings(str(path))
    assert back.embeddings.dtype == dtype
    np.testing.assert_array_equal(back.embeddings, vectors)


def test_an_empty_file_is_still_a_valid_one(tmp_path):
    path = tmp_path / "empty.parquet"
    write(path, [], {**SETTINGS, "dimensions": 8, "precision": "int8"})
    table = pq.read_table(path)
    assert table.num_rows == 0
    assert table.schema.field("embedding").type == pa.list_(pa.int8(), 8)


def test_a_failure_half_way_leaves_no_file_and_the_old_one_untouched(tmp_path):
    path = tmp_path / "out.parquet"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), ParquetEmbeddingsWriter(str(path), SETTINGS) as writer:
        writer.write(texts(2), np.zeros((2, 3), np.float32))
        raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.parquet"]  # no temporary file left behind


def test_writes_to_an_open_binary_stream(tmp_path):
    path = tmp_path / "stream.parquet"
    with path.open("wb") as stream:
        writer = ParquetEmbeddingsWriter(stream, SETTINGS)
        writer.write(texts(3), np.ones((3, 4), np.float32))
        writer.close()
    assert pq.read_table(path).num_rows == 3


def test_an_unwritable_folder_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="no-such-folder"):
        ParquetEmbeddingsWriter(str(tmp_path / "no-such-folder" / "out.parquet"), SETTINGS)


# --- reading -------------------------------------------------------------------------------


def corpus(path, **columns) -> str:
    pq.write_table(pa.table(columns), path, row_group_size=3)
    return str(path)


def test_texts_keep_their_row_as_source(tmp_path):
    path = corpus(tmp_path / "c.parquet", body=["a cat", "  ", None, " a dog ", "a bird"])
    assert list(iter_parquet_texts(path, "body")) == [
        Text("a cat", f"{path}:1"),
        Text("a dog", f"{path}:4"),  # stripped; blank and null rows skipped, rows still counted
        Text("a bird", f"{path}:5"),
    ]


def test_a_slice_of_rows_reads_across_row_groups(tmp_path):
    path = corpus(tmp_path / "c.parquet", text=[f"t{i}" for i in range(10)])
    got = list(iter_parquet_texts(path, start_row=2, stop_row=7))
    assert [t.text for t in got] == ["t2", "t3", "t4", "t5", "t6"]
    assert got[0].source == f"{path}:3"
    assert list(iter_parquet_texts(path, start_row=10)) == []


@pytest.mark.parametrize(
    ("columns", "column", "expected"),
    [
        ({"id": [1], "text": ["x"], "title": ["y"]}, None, "x"),  # "text" by default
        ({"id": [1], "body": ["x"]}, None, "x"),  # the only string column
        ({"id": [1], "body": ["x"]}, "2", "x"),  # a number counts from 1, as for CSV
        ({"body": pa.array(["x"], pa.large_string())}, "body", "x"),
        ({"body": pa.array(["x"]).dictionary_encode()}, "body", "x"),
    ],
)
def test_which_column_is_read(tmp_path, columns, column, expected):
    path = corpus(tmp_path / "c.parquet", **columns)
    assert [t.text for t in iter_parquet_texts(path, column)] == [expected]


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ("nope", "no column 'nope' (columns: id, title, body)"),
        ("id", "column 'id' holds int64, not strings"),
        ("9", "no column #9; --column counts from 1 to 3"),
        (None, "several columns (id, title, body); choose one with --column"),
    ],
)
def test_column_errors_name_the_file_and_the_choices(tmp_path, column, message):
    path = corpus(tmp_path / "c.parquet", id=[1], title=["t"], body=["b"])
    with pytest.raises(InputError) as error:
        list(iter_parquet_texts(path, column))
    assert str(error.value) == f"{path}: {message}"


def test_unreadable_files_are_one_line_input_errors(tmp_path):
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    cases = {
        str(garbage): "not a readable Parquet file",
        str(tmp_path / "missing.parquet"): "no such file",
        str(tmp_path): "is a directory",
    }
    for path, message in cases.items():
        with pytest.raises(InputError) as error:
            list(iter_parquet_texts(path))
        assert str(error.value).startswith(f"{path}: {message}")
        assert "\n" not in str(error.value)


# --- a folder of parts (embed --ray) -------------------------------------------------------


def parts_folder(tmp_path, names, run="run-1", written=None):
    folder = tmp_path / "out"
    folder.mkdir()
    manifest = {"run": run, "parts": [{"name": n} for n in names]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for i, name in enumerate(written if written is not None else names):
        write(
            folder / name,
            [(texts(2, 2 * i), np.full((2, 3), i, np.float32))],
            {**SETTINGS, "run": run, "part": i},
        )
    return folder


def test_a_finished_folder_of_parts_reads_as_one_file_in_part_order(tmp_path):
    folder = parts_folder(tmp_path, ["part-00000.parquet", "part-00001.parquet"])
    back = read_embeddings(str(folder))
    assert back.texts == texts(4)
    assert back.embeddings[:, 0].tolist() == [0, 0, 1, 1]
    assert back.settings == {**SETTINGS, "run": "run-1"}  # no part number: it is the whole


def test_an_unfinished_folder_is_refused_with_how_to_finish_it(tmp_path):
    names = ["part-00000.parquet", "part-00001.parquet"]
    folder = parts_folder(tmp_path, names, written=names[:1])
    with pytest.raises(InputError) as error:
        read_embeddings(str(folder))
    assert str(error.value) == (
        f"{folder}: 1 of 2 parts are missing (part-00001.parquet, …): the run did not "
        "finish; run the same command again"
    )


def test_a_folder_without_a_manifest_or_with_a_stranger_part_is_refused(tmp_path):
    folder = parts_folder(tmp_path, ["part-00000.parquet"])
    (folder / "manifest.json").write_text(
        json.dumps({"run": "run-2", "parts": [{"name": "part-00000.parquet"}]})
    )
    with pytest.raises(InputError, match="a part of another run"):
        read_embeddings(str(folder))
    (folder / "manifest.json").unlink()
    with pytest.raises(InputError, match=r"a folder without manifest\.json"):
        read_embeddings(str(folder))


# --- through the command line ------------------------------------------------------------


def test_embed_to_parquet_reads_back_with_pandas(cli, tiny_model, tmp_path):
    import pandas as pd

    out = tmp_path / "out.parquet"
    args = ["embed", "a cat", "a dog", "-m", tiny_model, "--device", "cpu"]
    result = cli(*args, "-o", str(out), "--precision", "int8")
    assert result.code == 0, result.stderr
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["text", "source", "embedding"]
    assert list(frame.text) == ["a cat", "a dog"]
    assert list(frame.source) == ["<arg>:1", "<arg>:2"]
    assert frame.embedding[0].dtype == np.int8
    meta = json.loads(pq.read_schema(out).metadata[b"modernbert_cli"])
    assert meta["precision"] == "int8"
    assert meta["fingerprint"]  # which model files and settings made them
    jsonl = cli(*args, "-f", "jsonl", "--precision", "int8")
    expected = [json.loads(line)["embedding"] for line in jsonl.stdout.splitlines()]
    assert [list(e) for e in frame.embedding] == expected
    stdout = cli(*args, "-f", "parquet")
    assert stdout.code == 2 and "give a file with -o FILE.parquet" in stdout.stderr


def test_parquet_input_by_column(cli, tiny_model, tmp_path):
    source = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "body": ["a cat", None, "a dog"]}), source)
    result = cli("embed", "-i", str(source), "--column", "body", "-m", tiny_model, "-f", "jsonl")
    assert result.code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["text"], r["source"]) for r in records] == [
        ("a cat", f"{source}:1"),
        ("a dog", f"{source}:3"),
    ]
    missing = cli("embed", "-i", str(source), "--column", "nope", "-m", tiny_model)
    assert missing.code == 3 and "nope" in missing.stderr and "body" in missing.stderr
