"""Readers: formats, and the errors that name the file, row, column and what was expected."""

import json

import pytest
from helpers import write_rows

from lit_finetune.data import readers
from lit_finetune.errors import DataError


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_format_reads_the_same_rows(tmp_path, suffix):
    rows = [{"text": "a word, then a comma", "label": "pos"}, {"text": "b", "label": "neg"}]
    path = tmp_path / f"data{suffix}"
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        write_rows(path, rows)
    ds = readers.read_file(path, "data.train_file")
    assert list(ds["text"]) == [r["text"] for r in rows]
    assert list(ds["label"]) == ["pos", "neg"]


def test_glue_tsv_keeps_quotes_as_text(tmp_path):
    """GLUE TSVs are unquoted: a stray double quote must not swallow the following rows."""
    path = tmp_path / "train.tsv"
    path.write_text('sentence\tlabel\nhe said " wow \t1\nnext row \t0\n', encoding="utf-8")
    ds = readers.read_file(path, "data.train_file")
    assert list(ds["sentence"]) == ['he said " wow ', "next row "]
    assert list(ds["label"]) == [1, 0]


def test_missing_file_names_key_and_path(tmp_path):
    with pytest.raises(DataError, match=r"data.validation_file: file .*nope.csv does not exist"):
        readers.read_file(tmp_path / "nope.csv", "data.validation_file")


def test_unknown_suffix_lists_supported_ones(tmp_path):
    path = tmp_path / "train.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match=r"suffix '.xlsx'; expected one of .csv, .tsv"):
        readers.read_file(path, "data.train_file")


def test_non_utf8_names_file_byte_offset_and_line(tmp_path):
    path = tmp_path / "train.csv"
    raw = b"text,label\ngood film,pos\ncaf\xe9 bad,neg\n"
    path.write_bytes(raw)
    with pytest.raises(DataError) as err:
        readers.read_file(path, "data.train_file")
    message = str(err.value)
    offset = raw.index(b"\xe9")
    assert str(path) in message and f"byte offset {offset} (line 3)" in message


def test_empty_and_null_text_point_at_the_first_bad_row(tmp_path):
    path = write_rows(tmp_path / "train.jsonl", [{"text": "fine"}, {"text": "  "}, {"text": None}])
    ds = readers.read_file(path, "data.train_file")
    with pytest.raises(DataError, match=r"train.jsonl, row 2 \(line 2\): column 'text' is empty or null \(2 such"):
        readers.require_text(ds, "text", str(path))


def test_csv_row_location_counts_the_header_line():
    assert readers.row_location("a.csv", 0) == "a.csv, row 1 (line 2)"
    assert readers.row_location("glue [train]", 4) == "glue [train], row 5"


def test_missing_column_lists_existing_columns(tmp_path):
    path = write_rows(tmp_path / "train.csv", [{"sentence": "x", "label": 1}])
    ds = readers.read_file(path, "data.train_file")
    with pytest.raises(DataError, match=r"no column 'text' \(set by data.text_column\); the columns are \['sentence', 'label'\]"):
        readers.require_columns(ds, ["text"], str(path), {"text": "data.text_column"})


def test_unparseable_json_names_the_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n{broken\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data.train_file: could not parse .*train.jsonl as jsonl"):
        readers.read_file(path, "data.train_file")
