"""MultipleChoiceDataModule: SWAG-style columns or a list column, labels as index or text, padding, and its errors."""

import pytest
from helpers import write_rows

from lit_finetune.data.multiple_choice import MultipleChoiceDataModule
from lit_finetune.errors import ConfigError, DataError


def swag_rows(n: int, prefix: str = "r") -> list[dict]:
    """SWAG's columns: the right ending says 'good', the others 'bad' (long enough to vary the lengths)."""
    rows = []
    for i in range(n):
        label = (i * 7) % 4
        endings = {f"ending{k}": ("good" if k == label else "bad") + " move" * ((i + k) % 3) for k in range(4)}
        rows.append({"id": f"{prefix}-{i}", "sent1": f"A man walks to scene {i}.", "sent2": "He", **endings,
                     "label": label})
    return rows


def make(tmp_path, **kwargs) -> MultipleChoiceDataModule:
    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    return MultipleChoiceDataModule(model_name_or_path="tiny:bert", batch_size=4, **kwargs)


def test_swag_columns_become_padded_choice_tensors(tmp_path):
    rows = swag_rows(12)
    dm = make(tmp_path, train_file=str(write_rows(tmp_path / "train.csv", rows)), id_column="id",
              validation_fraction=0.25)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_choices == 4 and len(dm.splits["train"]) == 9 and len(dm.splits["validation"]) == 3
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "example_id"}
    assert batch["input_ids"].shape[:2] == (4, 4) and batch["attention_mask"].shape == batch["input_ids"].shape
    lengths = batch["attention_mask"].sum(-1)
    assert batch["input_ids"].shape[2] == lengths.max() < dm.hparams.max_length and lengths.min() < lengths.max()
    by_id = {r["id"]: r for r in rows}
    for example_id, ids, label in zip(batch["example_id"], batch["input_ids"], batch["labels"].tolist()):
        row = by_id[example_id]
        assert label == row["label"]
        first = dm.tokenizer.decode(ids[0], skip_special_tokens=True)
        assert first == f"{row['sent1']} {row['sent2']} {row['ending0']}".lower()  # (context, question + ending)


def test_choices_list_column_labels_as_text_and_unlabeled_predict_data(tmp_path):
    rows = [{"q": f"which colour is {c}?", "options": ["red", "green", "blue"], "answer": c}
            for c in ("red", "blue", "green", "blue")]
    train = write_rows(tmp_path / "train.jsonl", rows)
    predict = write_rows(tmp_path / "predict.jsonl", [{"q": r["q"], "options": r["options"]} for r in rows])
    dm = make(tmp_path, train_file=str(train), validation_file=str(train), predict_file=str(predict),
              context_column="q", question_column=None, choices_column="options", label_column="answer")
    dm.prepare_data()
    dm.setup("predict")
    assert dm.num_choices == 3 and dm.splits["train"]["labels"] == [0, 2, 1, 2]
    batch = next(iter(dm.predict_dataloader()))
    assert "labels" not in batch and batch["input_ids"].shape[:2] == (4, 3) and batch["example_id"] == list("0123")


BAD_INPUT = {  # what is wrong -> the error that names it
    "choices": (DataError, r"train.jsonl, row 2 \(line 2\): column 'options' is \['x', 'y'\]; expected a list of 3 "
                           r"endings like the other rows"),
    "label": (DataError, r"train.csv, row 3 \(line 4\): column 'label' is 4; expected the index of the right ending "
                         r"\(0..3\) or its text"),
    "empty": (DataError, r"train.csv, row 2 \(line 3\): column 'ending2' is empty or null"),
    "column": (DataError, r"train.csv: no column 'ending3' \(set by data.ending_columns\)"),
    "config": (ConfigError, r"data.ending_columns: got \['ending0'\]; expected 2 or more columns"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_rows_name_file_row_and_column(tmp_path, case):
    rows = swag_rows(4)
    if case == "choices":
        lists = [{"ctx": "c", "options": ["x", "y", "z"], "label": 0}, {"ctx": "c", "options": ["x", "y"], "label": 0}]
        path = write_rows(tmp_path / "train.jsonl", lists)
        kwargs = dict(context_column="ctx", question_column=None, choices_column="options")
    else:
        if case == "label":
            rows[2]["label"] = 4
        elif case == "empty":
            rows[1]["ending2"] = " "
        elif case == "column":
            rows = [{k: v for k, v in r.items() if k != "ending3"} for r in rows]
        path, kwargs = write_rows(tmp_path / "train.csv", rows), {}
    if case == "config":
        kwargs["ending_columns"] = ["ending0"]
    error, message = BAD_INPUT[case]
    with pytest.raises(error, match=message):
        make(tmp_path, train_file=str(path), **kwargs).prepare_data()


def test_splits_must_agree_on_the_number_of_choices(tmp_path):
    three = [{"ctx": "c", "options": ["x", "y", "z"], "label": 1}] * 4
    four = [{"ctx": "c", "options": ["w", "x", "y", "z"], "label": 1}] * 2
    dm = make(tmp_path, train_file=str(write_rows(tmp_path / "train.jsonl", three)),
              validation_file=str(write_rows(tmp_path / "val.jsonl", four)), context_column="ctx",
              question_column=None, choices_column="options")
    with pytest.raises(DataError, match=r"val.jsonl, row 1 \(line 1\): .* expected a list of 3 endings"):
        dm.prepare_data()
