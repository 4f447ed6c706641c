"""Multi-label classification through the real CLI: label sets from lists or delimited strings, BCE on one sigmoid
per class, micro / macro / per-label F1 and exact match, a tuned threshold carried into predictions and the export,
and the label sets a run refuses."""

import json
import random

import pytest
import torch
from helpers import metrics_rows, tiny_args, write_rows
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from lit_finetune.commands.fit import LitFinetuneCLI
from lit_finetune.data import TextClassificationDataModule
from lit_finetune.errors import ConfigError, DataError
from lit_finetune.tasks import SequenceClassificationModule

CONFIG = "configs/classification/conll_entity_types.yaml"
COLORS = ("red", "blue", "green")


def color_rows(n: int, seed: int) -> list[dict]:
    """Each text names some colours among filler words; its labels are the colours it names (maybe none)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        colors = [c for c in COLORS if rng.random() < 0.4]
        words = colors + rng.sample(["the", "a", "car", "sky", "was", "very", "bright", "today"], 3)
        rng.shuffle(words)
        rows.append({"id": f"r{i}", "text": " ".join(words), "labels": "|".join(colors)})
    return rows


@pytest.fixture
def color_data(tmp_path):
    return {"train": write_rows(tmp_path / "train.csv", color_rows(96, 0)),
            "validation": write_rows(tmp_path / "validation.csv", color_rows(32, 1)),
            "predict": write_rows(tmp_path / "predict.csv", color_rows(8, 2))}


def args(data, run_dir, *extra):
    return tiny_args(data, run_dir, "--data.init_args.label_delimiter=|", "--data.init_args.label_column=labels",
                     "--data.init_args.id_column=id", "--trainer.max_epochs=10", "--model.init_args.learning_rate=3e-3",
                     "--model.init_args.pooling=mean", *extra, config=CONFIG)


def test_multi_label_learns_logs_tunes_and_exports_for_the_pipeline(tmp_path, color_data):
    run_dir = tmp_path / "run"
    cli = LitFinetuneCLI(args=["fit", *args(color_data, run_dir)])
    rows = metrics_rows(run_dir)
    keys = set().union(*rows)
    assert {"val/f1_micro", "val/f1", "val/exact_match", "val/f1_red", "val/f1_blue", "val/f1_green",
            "val/threshold", "val/f1_micro_tuned", "val/f1_micro_best"} <= keys
    f1 = [float(r["val/f1_micro"]) for r in rows if r.get("val/f1_micro")]
    assert max(f1) > 0.75  # well above always predicting every colour (micro F1 0.57 at 40% each)
    module = cli.model
    assert module.is_multi_label and module.model.config.problem_type == "multi_label_classification"
    [best] = (run_dir / "checkpoints").glob("best-*.ckpt")
    rebuilt = SequenceClassificationModule.load_checkpoint(best).eval()
    tuned = rebuilt.threshold
    assert tuned in [round(0.05 * i, 2) for i in range(1, 20)] and rebuilt.tuned_threshold == tuned
    export = run_dir / "export"
    assert json.loads((export / "config.json").read_text())["multi_label_threshold"] == tuned
    # The export predicts what the checkpoint's module predicts: the pipeline's sigmoid scores, label by label.
    texts = ["red car today", "the blue sky and green", "a bright day"]
    batch = AutoTokenizer.from_pretrained(export)(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = rebuilt(dict(batch)).sigmoid()
        loaded = AutoModelForSequenceClassification.from_pretrained(export).eval()
        assert torch.allclose(loaded(**batch).logits.sigmoid(), expected, atol=1e-5)
    scores = pipeline("text-classification", model=str(export), top_k=None)(texts)
    names = rebuilt.model.config.id2label
    for row, probs in zip(scores, expected.tolist()):
        assert {s["label"]: s["score"] for s in row} == pytest.approx({names[i]: p for i, p in enumerate(probs)},
                                                                      abs=1e-5)
    # predict writes label sets at the tuned threshold, with every label's score
    LitFinetuneCLI(args=["predict", *args(color_data, tmp_path / "predict"), "--ckpt_path", str(best)])
    predicted = [json.loads(line) for line in (tmp_path / "predict" / "predictions.jsonl").open()]
    assert [p["id"] for p in predicted] == [f"r{i}" for i in range(8)]
    for p in predicted:
        assert set(p["scores"]) == set(COLORS)
        assert sorted(p["labels"]) == sorted(n for n, s in p["scores"].items() if s >= tuned)
    truth = {r["id"]: set(filter(None, r["labels"].split("|"))) for r in color_rows(8, 2)}
    right = sum((c in p["labels"]) == (c in truth[p["id"]]) for p in predicted for c in COLORS)
    assert right >= 0.75 * 8 * len(COLORS)  # label by label, mostly right


def test_label_sets_from_json_lists_and_their_errors(tmp_path):
    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    train = write("train.jsonl", [{"text": "a", "labels": ["x", "y"]}, {"text": "b", "labels": ["y"]},
                                  {"text": "c", "labels": ["x"]}, {"text": "d", "labels": ["x", "y"]}])
    dm = TextClassificationDataModule(model_name_or_path="tiny:bert", train_file=train, validation_file=train,
                                      label_column="labels", multi_label=True, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    assert dm.id2label == {0: "x", 1: "y"} and dm.splits["train"]["labels"][:2] == [[1.0, 1.0], [0.0, 1.0]]

    def prepare(validation, **kwargs):
        dm = TextClassificationDataModule(model_name_or_path="tiny:bert", train_file=train, validation_file=validation,
                                          label_column="labels", multi_label=True, cache_dir=str(tmp_path / "cache"),
                                          **kwargs)
        dm.prepare_data()

    unseen = write("unseen.jsonl", [{"text": "a", "labels": ["x"]}, {"text": "b", "labels": ["z"]}])
    with pytest.raises(DataError, match=r"unseen.jsonl, row 2 \(line 2\): label 'z' never occurs in the training"):
        prepare(unseen)
    empty = write("empty.jsonl", [{"text": "a", "labels": []}])
    with pytest.raises(DataError, match=r"empty.jsonl, row 1 \(line 1\): the label set is empty; set "
                                        r"data.allow_no_label: true"):
        prepare(empty)
    prepare(empty, allow_no_label=True)
    with pytest.raises(ConfigError, match="data.label_delimiter: only multi-label data splits its labels"):
        TextClassificationDataModule(train_file=train, label_delimiter=",")


def test_settings_multi_label_cannot_take_are_refused(tmp_path, color_data):
    with pytest.raises(ConfigError, match="multi-label classification trains one sigmoid per class"):
        LitFinetuneCLI(args=["fit", *args(color_data, tmp_path / "run", "--model.init_args.loss=focal")])
