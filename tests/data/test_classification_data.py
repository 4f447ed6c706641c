"""TextClassificationDataModule: labels, hold-out, truncation counts, caching, padding, and its errors."""

import json

import datasets
import pytest
import torch
from helpers import sentiment_rows, write_rows

from lit_finetune.data import TextClassificationDataModule
from lit_finetune.errors import ConfigError, DataError


def make(tmp_path, **kwargs) -> TextClassificationDataModule:
    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    return TextClassificationDataModule(model_name_or_path="tiny:bert", batch_size=8, **kwargs)


def prepared(tmp_path, **kwargs) -> TextClassificationDataModule:
    dm = make(tmp_path, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_string_labels_dynamic_padding_and_ids(tmp_path, tiny_data):
    dm = prepared(tmp_path, train_file=str(tiny_data["train"]), validation_file=str(tiny_data["validation"]),
                  id_column="id", text_column="text")
    assert dm.id2label == {0: "bad", 1: "good"} and dm.num_labels == 2
    batch = next(iter(dm.val_dataloader()))
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] == lengths.max() < dm.hparams.max_length  # padded to the batch, not max_length
    assert batch["labels"].dtype == torch.long
    # Evaluation batches come longest first (ties in data order), so each pads to little.
    lengths = [len(ids) for ids in dm.splits["validation"]["input_ids"]]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])[:16]
    assert order != list(range(16)) and batch["example_id"] == [f"validation-{i}" for i in order]
    rows = sentiment_rows(32, 1, "validation")
    assert batch["labels"].tolist() == [{"bad": 0, "good": 1}[rows[i]["label"]] for i in order]


def test_integer_labels_named_by_label_names(tmp_path):
    write_rows(tmp_path / "train.tsv", [{"sentence": f"s {i}", "label": i % 2} for i in range(20)])
    dm = prepared(tmp_path, train_file=str(tmp_path / "train.tsv"), text_column="sentence",
                  label_names=["negative", "positive"])
    assert dm.id2label == {0: "negative", 1: "positive"}
    unnamed = prepared(tmp_path, train_file=str(tmp_path / "train.tsv"), text_column="sentence")
    assert unnamed.id2label == {0: "0", 1: "1"}


def test_label_unseen_in_train_names_file_row_and_label(tmp_path, tiny_data):
    rows = sentiment_rows(6, 3, "v")
    rows[4]["label"] = "meh"
    validation = write_rows(tmp_path / "val.csv", rows)
    dm = make(tmp_path, train_file=str(tiny_data["train"]), validation_file=str(validation))
    with pytest.raises(DataError, match=r"val.csv, row 5 \(line 6\): label 'meh' never occurs in the training data; "
                                        r"known labels are \['bad', 'good'\]"):
        dm.prepare_data()


def test_num_labels_disagreeing_with_data_names_the_key(tmp_path, tiny_data):
    dm = make(tmp_path, train_file=str(tiny_data["train"]), num_labels=3)
    with pytest.raises(ConfigError, match=r"data.num_labels: set to 3 but the training data has 2 classes"):
        dm.prepare_data()


def test_regression_targets_are_floats_and_must_be_numbers(tmp_path):
    rows = [{"text": f"pair {i}", "label": i / 10} for i in range(20)]
    dm = prepared(tmp_path, train_file=str(write_rows(tmp_path / "train.csv", rows)), num_labels=1)
    assert dm.id2label is None and dm.num_labels == 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].dtype == torch.float32
    rows[7]["label"] = "high"
    bad = make(tmp_path, train_file=str(write_rows(tmp_path / "bad.csv", rows)), num_labels=1)
    with pytest.raises(DataError, match=r"bad.csv, row 8 \(line 9\): column 'label' is 'high'; expected a number"):
        bad.prepare_data()


def test_validation_held_out_from_train_is_stratified_and_seeded(tmp_path):
    rows = [{"text": f"t {i}", "label": "rare" if i % 5 == 0 else "common"} for i in range(200)]
    train = str(write_rows(tmp_path / "train.csv", rows))
    dm = prepared(tmp_path, train_file=train, validation_fraction=0.2)
    val = dm.splits["validation"]
    assert len(val) == 40 and len(dm.splits["train"]) == 160
    assert sum(1 for label in val["labels"] if dm.id2label[label] == "rare") == 8  # 20% of 40
    again = prepared(tmp_path / "again", train_file=train, validation_fraction=0.2)
    assert list(again.splits["validation"]["example_id"]) == list(val["example_id"])


def test_truncated_examples_are_counted(tmp_path):
    rows = [{"text": "word " * (3 if i % 4 else 40), "label": "ab"[i % 2]} for i in range(16)]
    dm = prepared(tmp_path, train_file=str(write_rows(tmp_path / "train.csv", rows)), max_length=16,
                  validation_fraction=0.25)
    assert dm.meta["truncated"]["train"] + dm.meta["truncated"]["validation"] == 4
    assert max(dm.splits["train"]["length"]) == 16


def test_sentence_pairs_get_segment_ids(tmp_path):
    rows = [{"a": "first part", "b": "second part", "label": "xy"[i % 2]} for i in range(8)]
    dm = prepared(tmp_path, train_file=str(write_rows(tmp_path / "train.csv", rows)), text_column="a",
                  text_pair_column="b", validation_fraction=0.25)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["token_type_ids"].unique().tolist()) == {0, 1}


def test_tokenized_once_then_loaded_from_cache(tmp_path, tiny_data):
    dm = prepared(tmp_path, train_file=str(tiny_data["train"]), validation_file=str(tiny_data["validation"]))
    cache = dm.cache_path()
    stamp = (cache / "meta.json").stat().st_mtime_ns
    again = prepared(tmp_path, train_file=str(tiny_data["train"]), validation_file=str(tiny_data["validation"]))
    assert again.cache_path() == cache and (cache / "meta.json").stat().st_mtime_ns == stamp
    other = prepared(tmp_path, train_file=str(tiny_data["train"]), validation_file=str(tiny_data["validation"]),
                     max_length=32)
    assert other.cache_path() != cache
    assert json.loads((cache / "meta.json").read_text())["sizes"] == {"train": 64, "validation": 32}
    # The key comes from the settings: how data is batched or loaded shares the cache, anything else does not.
    files = dict(train_file=str(tiny_data["train"]), validation_file=str(tiny_data["validation"]))
    batching = TextClassificationDataModule(model_name_or_path="tiny:bert", cache_dir=str(tmp_path / "cache"),
                                            batch_size=3, eval_batch_size=5, num_workers=1, **files)
    assert batching.cache_path() == cache
    for setting in (dict(seed=7), dict(id_column="text"), dict(label_names=["bad", "good"])):
        assert make(tmp_path, **files, **setting).cache_path() != cache, setting


def test_length_grouped_batches_pad_less(tmp_path):
    rows = [{"text": "w " * (1 + (i * 7) % 50), "label": "ab"[i % 2]} for i in range(256)]
    train = str(write_rows(tmp_path / "train.csv", rows))

    def padding(group_by_length: bool) -> float:
        dm = prepared(tmp_path, train_file=train, group_by_length=group_by_length, validation_fraction=0.1)
        batches = list(dm.train_dataloader())
        assert sorted(i for b in batches for i in b["example_id"]) == sorted(dm.splits["train"]["example_id"])
        return sum((1 - b["attention_mask"]).sum().item() for b in batches)

    assert padding(True) < 0.5 * padding(False)


def test_empty_text_fails_before_tokenizing(tmp_path):
    rows = sentiment_rows(10, 0, "t")
    rows[3]["text"] = ""
    dm = make(tmp_path, train_file=str(write_rows(tmp_path / "train.csv", rows)))
    with pytest.raises(DataError, match=r"train.csv, row 4 \(line 5\): column 'text' is empty or null"):
        dm.prepare_data()


def test_missing_label_column_lists_columns(tmp_path, tiny_data):
    dm = make(tmp_path, train_file=str(tiny_data["train"]), label_column="sentiment")
    with pytest.raises(DataError, match=r"no column 'sentiment' \(set by data.label_column\); the columns are "
                                        r"\['id', 'text', 'label'\]"):
        dm.prepare_data()


def test_validation_without_labels_is_refused(tmp_path, tiny_data):
    unlabeled = write_rows(tmp_path / "val.csv", [{"id": "1", "text": "fine"}])
    dm = make(tmp_path, train_file=str(tiny_data["train"]), validation_file=str(unlabeled))
    with pytest.raises(DataError, match=r"val.csv: no column 'label' \(set by data.label_column\); the columns are "
                                        r"\['id', 'text'\]"):
        dm.prepare_data()


def test_dataset_folder_with_classlabels_and_unlabeled_test(tmp_path):
    """The `dataset_name` path (as for hub datasets): ClassLabel names and a GLUE-style test split labeled -1."""
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    folder = tmp_path / "glue_like"
    for split, n, label in (("train", 20, None), ("validation", 6, None), ("test", 4, -1)):
        ds = datasets.Dataset.from_dict({"sentence": [f"s{i}" for i in range(n)],
                                         "label": [label if label is not None else i % 2 for i in range(n)]},
                                        features=features)
        ds.to_parquet(str(folder / f"{split}.parquet"))
    dm = prepared(tmp_path, dataset_name=str(folder), text_column="sentence")
    assert dm.id2label == {0: "negative", 1: "positive"}
    assert "labels" not in dm.splits["test"].column_names
    assert len(list(dm.predict_dataloader())[0]["example_id"]) == 4


def test_uncached_hub_dataset_offline_says_to_use_local_files(tmp_path):
    dm = make(tmp_path, dataset_name="no-such-org/no-such-dataset")
    with pytest.raises(ConfigError, match=r"data.dataset_name: could not load .*give local files instead"):
        dm.prepare_data()


def test_no_data_at_all_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="give either data.dataset_name"):
        make(tmp_path)


def write_class_folders(root, per_class: dict[str, list[str]]):
    """IMDB's layout: one folder per class, one review per .txt file, <id>_<rating>.txt names."""
    for name, texts in per_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(texts):
            (root / name / f"{i}_{7 if name == 'pos' else 2}.txt").write_text(text + "\n", encoding="utf-8")
    (root / f"urls_{next(iter(per_class))}.txt").write_text("http://example.com\n")  # a file beside them: ignored
    return root


def test_class_folders_give_rows_labelled_by_folder_in_turns(tmp_path):
    texts = {"neg": [f"bad film {i}" for i in range(12)], "pos": [f"good film {i}" for i in range(12)]}
    train = write_class_folders(tmp_path / "aclImdb" / "train", texts)
    write_class_folders(tmp_path / "aclImdb" / "train" / "unsup", {"x": ["unlabelled"]})  # skipped: not named
    dm = prepared(tmp_path, train_file=str(train), validation_file=str(train), id_column="file",
                  label_names=["neg", "pos"], max_train_examples=6)
    assert dm.id2label == {0: "neg", 1: "pos"}
    rows = dm.splits["train"]
    assert rows["example_id"] == ["neg/0_2.txt", "pos/0_7.txt", "neg/1_2.txt", "pos/1_7.txt", "neg/2_2.txt",
                                  "pos/2_7.txt"]  # the classes take turns, so the first N rows hold both
    assert rows["labels"] == [0, 1, 0, 1, 0, 1]
    assert len(dm.splits["validation"]) == 24
    (train / "pos" / "12_9.txt").write_text("another good film")  # a new file: tokenized again, not a stale cache
    again = make(tmp_path, train_file=str(train), validation_file=str(train), id_column="file",
                 label_names=["neg", "pos"])
    assert again.cache_path() != dm.cache_path()
    with pytest.raises(DataError, match=r"has no class folder 'neutral' \(data.label_names names the class folders"):
        make(tmp_path, train_file=str(train), label_names=["neg", "neutral"]).prepare_data()


def test_class_folder_errors_name_the_folder_or_file(tmp_path):
    empty = tmp_path / "empty"
    write_class_folders(empty, {"neg": ["bad"]})
    (empty / "pos").mkdir()
    with pytest.raises(DataError, match=r"data.train_file: class folder .*empty/pos has no .txt files"):
        make(tmp_path, train_file=str(empty)).prepare_data()
    latin = write_class_folders(tmp_path / "latin", {"neg": ["bad"], "pos": ["good"]})
    (latin / "pos" / "1_8.txt").write_bytes("caf\xe9 was great".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin/pos/1_8.txt: not valid UTF-8 at byte offset 3"):
        make(tmp_path, train_file=str(latin)).prepare_data()
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.txt").write_text("text")
    with pytest.raises(DataError, match="has no subfolders; expected one folder of .txt files per class"):
        make(tmp_path, train_file=str(flat)).prepare_data()


WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()


@pytest.mark.parametrize("truncation, kept", [
    ("head", WORDS[:6]),
    ("tail", WORDS[-6:]),
    ("head_tail", WORDS[:2] + WORDS[-4:]),
])
def test_truncation_keeps_the_head_the_tail_or_both(tmp_path, truncation, kept):
    long, kept = " ".join(WORDS), " ".join(kept)
    write_rows(tmp_path / "train.csv", [{"text": long, "label": "a"}, {"text": "one two", "label": "b"}])
    dm = prepared(tmp_path, train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "train.csv"),
                  max_length=8, truncation=truncation, head_tokens=2)
    tokenizer = dm.tokenizer
    expected = tokenizer(kept)["input_ids"]  # [CLS] + the kept tokens + [SEP]
    assert len(tokenizer(long)["input_ids"]) == 22  # each word a single token: the kept words are the kept tokens
    assert dm.splits["train"]["input_ids"] == [expected, tokenizer("one two")["input_ids"]]
    assert dm.meta["truncated"]["train"] == 1


def test_truncation_settings_that_cannot_apply_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="data.truncation: tail keeps the end of a single text; a pair task"):
        make(tmp_path, train_file="x.csv", text_pair_column="aspect", truncation="tail")
    with pytest.raises(ConfigError, match="data.head_tokens: 126 leaves no room for the tail within "
                                          "data.max_length=128"):
        make(tmp_path, train_file="x.csv", truncation="head_tail", head_tokens=126)
