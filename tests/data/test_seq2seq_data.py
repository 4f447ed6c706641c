"""Seq2SeqDataModule: parallel text (plain and gzip), tables, the batch contract, truncation counts, and its errors."""

import gzip
import json

import pytest
from helpers import write_rows

from lit_finetune.data.seq2seq import Seq2SeqDataModule
from lit_finetune.errors import ConfigError, DataError

EN = ["A man rides a bike .", "Two dogs play in the snow .", "A girl reads a book ."]
DE = ["Ein Mann fährt Fahrrad .", "Zwei Hunde spielen im Schnee .", "Ein Mädchen liest ein Buch ."]


def write_lines(path, lines: list[str]):
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def parallel(folder, name: str, en=EN, de=DE, suffix: str = ".gz") -> str:
    write_lines(folder / f"{name}.en{suffix}", en)
    write_lines(folder / f"{name}.de{suffix}", de)
    return str(folder / f"{name}.{{lang}}{suffix}")


def make(tmp_path, **kwargs) -> Seq2SeqDataModule:
    kwargs.setdefault("source_lang", "en")
    kwargs.setdefault("target_lang", "de")
    return Seq2SeqDataModule(model_name_or_path="tiny:t5", batch_size=2, cache_dir=str(tmp_path / "cache"), **kwargs)


def prepared(tmp_path, stage: str = "fit", **kwargs) -> Seq2SeqDataModule:
    dm = make(tmp_path, **kwargs)
    dm.prepare_data()
    dm.setup(stage)
    return dm


def test_gzip_parallel_files_make_the_batch_contract(tmp_path):
    train = parallel(tmp_path, "train")
    validation = parallel(tmp_path, "val", suffix="")  # plain text works the same
    dm = prepared(tmp_path, train_file=train, validation_file=validation, source_prefix="translate: ")
    batch = next(iter(dm.val_dataloader()))
    order = [int(i) for i in batch["example_id"]]  # evaluation batches come longest first
    assert sorted(order) == [0, 1, 2] and batch["source_text"] == [EN[i] for i in order]
    assert batch["target_text"] == [DE[i] for i in order]
    first = batch["input_ids"][order.index(0)]
    assert dm.tokenizer.convert_ids_to_tokens(first)[:5] == ["[CLS]", "translate", ":", "a", "man"]
    assert "token_type_ids" not in batch  # T5 / BART take none
    lengths = [len(dm.tokenizer(text_target=DE[i])["input_ids"]) for i in order]
    labels = batch["labels"]
    assert labels.shape[1] == max(lengths)  # padded to the batch's longest target
    for row, n in zip(labels.tolist(), lengths):
        assert row[n:] == [-100] * (labels.shape[1] - n) and -100 not in row[:n]
    assert batch["attention_mask"].tolist() == (batch["input_ids"] != dm.tokenizer.pad_token_id).long().tolist()


def test_mismatched_line_counts_name_both_files_and_counts(tmp_path):
    train = parallel(tmp_path, "train", de=DE[:2])
    with pytest.raises(DataError, match=r"train.en.gz has 3 lines but .*train.de.gz has 2; parallel files"):
        make(tmp_path, train_file=train).prepare_data()


def test_empty_target_line_is_named_but_allowed_when_predicting(tmp_path):
    train = parallel(tmp_path, "train", de=[DE[0], "  ", DE[2]])
    with pytest.raises(DataError, match=r"train.de.gz, line 2: empty target sentence \(1 such lines"):
        make(tmp_path, train_file=train).prepare_data()
    predict = parallel(tmp_path, "new", de=[])  # only the source file is read for predict
    dm = prepared(tmp_path, "predict", predict_file=predict)
    batch = next(iter(dm.predict_dataloader()))
    assert "labels" not in batch and "target_text" not in batch and sorted(batch["source_text"]) == sorted(EN)


def test_tables_with_named_columns_ids_and_translation_dicts(tmp_path):
    rows = [{"key": f"k{i}", "article": en, "summary": de} for i, (en, de) in enumerate(zip(EN, DE))]
    dm = prepared(tmp_path, train_file=str(write_rows(tmp_path / "train.csv", rows)),
                  validation_file=str(write_rows(tmp_path / "val.jsonl", rows)),
                  source_column="article", target_column="summary", id_column="key")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["example_id"]) <= {"k0", "k1", "k2"} and batch["labels"].shape[0] == 2
    # wmt-style: one `translation` column of {lang: text} dicts
    wmt = [{"translation": {"en": en, "de": de}} for en, de in zip(EN, DE)]
    path = tmp_path / "wmt.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in wmt))
    dm = prepared(tmp_path, "validate", validation_file=str(path))
    assert sorted(next(iter(dm.val_dataloader()))["target_text"]) == sorted(DE)


def test_table_errors_name_file_row_and_column(tmp_path):
    rows = [{"source": en, "target": de} for en, de in zip(EN, DE)]
    rows[1]["target"] = ""
    unnamed = dict(source_lang=None, target_lang=None)  # columns default to `source` / `target`
    with pytest.raises(DataError, match=r"train.csv, row 2 \(line 3\): column 'target' is empty"):
        make(tmp_path, train_file=str(write_rows(tmp_path / "train.csv", rows)), **unnamed).prepare_data()
    with pytest.raises(DataError, match=r"no column 'en' \(set by data.source_column\)"):  # named by source_lang
        make(tmp_path, validation_file=str(write_rows(tmp_path / "v.csv", rows))).prepare_data()


def test_settings_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"data.train_file: .*\{lang\}.*set data.source_lang and data.target_lang"):
        make(tmp_path, train_file="t.{lang}.gz", source_lang=None)
    with pytest.raises(DataError, match=r"data.train_file: t.en.gz is not a table .* path with \{lang\}"):
        make(tmp_path, train_file="t.en.gz").prepare_data()
    dm = prepared(tmp_path, "validate", validation_file=parallel(tmp_path, "val"))
    with pytest.raises(ConfigError, match=r"stage 'fit' needs a train split"):
        dm.setup("fit")


def test_truncation_is_counted_and_max_train_examples_applied(tmp_path):
    long_en = [" ".join(["word"] * 40)] + EN[1:]
    train = parallel(tmp_path, "train", en=long_en)
    with pytest.warns(UserWarning, match=r"1 of 2 train sources \(50.0%\) were truncated to data.max_source_length=10"):
        dm = prepared(tmp_path, train_file=train, validation_file=parallel(tmp_path, "val"), max_source_length=10,
                      max_train_examples=2)
    assert len(dm.splits["train"]) == 2 and max(map(len, dm.splits["train"]["input_ids"])) == 10
    assert dm.meta["truncated"]["train.source"] == 1 and dm.meta["truncated"]["train.target"] == 0
