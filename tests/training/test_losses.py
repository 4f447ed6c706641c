"""Class weights and the focal loss: the loss math against independent computations, label counting, the weights
a config may give, and both classification tasks trained with them through the real CLI."""

import logging

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from helpers import entity_sentences, first_losses, tiny_args, write_conll, write_rows
from sklearn.utils.class_weight import compute_class_weight

from lit_finetune.errors import ConfigError, DataError
from lit_finetune.tasks import SequenceClassificationModule, TokenClassificationModule
from lit_finetune.training import losses


def test_cross_entropy_path_is_pytorchs_weighted_mean():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 2, 1, -100, 2, 2])
    weights = torch.tensor([2.0, 0.5, 1.0])
    assert losses.classification_loss(logits, labels) == pytest.approx(
        float(F.cross_entropy(logits, labels, ignore_index=-100)))
    assert losses.classification_loss(logits, labels, weights) == pytest.approx(
        float(F.cross_entropy(logits, labels, weight=weights, ignore_index=-100)))
    # gamma 0: the focal loss is the cross-entropy, weighted the same way
    assert losses.classification_loss(logits, labels, weights, "focal", gamma=0.0) == pytest.approx(
        float(F.cross_entropy(logits, labels, weight=weights, ignore_index=-100)), rel=1e-6)


def test_focal_loss_matches_its_definition():
    torch.manual_seed(1)
    logits, labels = torch.randn(5, 4), torch.tensor([3, 0, -100, 1, 1])
    weights, gamma = torch.tensor([1.0, 3.0, 1.0, 0.5]), 2.0
    expected_terms, expected_scale = [], []
    for row, label in zip(logits.tolist(), labels.tolist()):
        if label == -100:
            continue
        p = torch.tensor(row).softmax(-1)[label]
        expected_terms.append(float(weights[label] * (1 - p) ** gamma * -torch.log(p)))
        expected_scale.append(float(weights[label]))
    expected = sum(expected_terms) / sum(expected_scale)
    assert losses.classification_loss(logits, labels, weights, "focal", gamma) == pytest.approx(expected, rel=1e-5)
    easy = torch.tensor([[8.0, 0.0], [0.0, 8.0]])
    assert losses.classification_loss(easy, torch.tensor([0, 1]), loss="focal") < \
        0.01 * losses.classification_loss(easy, torch.tensor([0, 1]))  # confident, right: nearly nothing


def test_auto_weights_are_balanced_inverse_frequencies():
    labels = [0] * 8 + [1] * 2 + [2] * 6
    counts = losses.label_counts(pa.chunked_array([labels]), 3)
    assert counts == [8, 2, 6]
    weights = losses.class_weights_tensor("auto", {0: "a", 1: "b", 2: "c"}, counts, "model.class_weights")
    assert weights.tolist() == pytest.approx(compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=np.array(labels)).tolist())
    tokens = pa.chunked_array([[[-100, 0, 0, 1, -100], [-100, 1, -100]]])  # per-token tags, special tokens -100
    assert losses.label_counts(tokens, 2) == [2, 2]


@pytest.mark.parametrize("weights, error, message", [
    ([1.0, -0.5], ConfigError, "must be >= 0, got -0.5"),
    ([0.0, 0.0], ConfigError, "every weight is 0"),
])
def test_weights_no_data_could_make_right_are_refused_at_once(weights, error, message):
    with pytest.raises(error, match=message):
        SequenceClassificationModule(class_weights=weights)


def test_weights_that_do_not_fit_the_labels_are_refused():
    labels = {0: "neg", 1: "pos", 2: "neutral"}
    with pytest.raises(ConfigError, match=r"2 weights for 3 classes; expected one per class, in id order: "
                                          r"\['neg', 'pos', 'neutral'\]"):
        losses.class_weights_tensor([1.0, 2.0], labels, None, "model.class_weights")
    with pytest.raises(DataError, match="the training data has no 'neutral' label"):
        losses.class_weights_tensor("auto", labels, [5, 3, 0], "model.class_weights")


def test_settings_that_cannot_apply_are_refused():
    with pytest.raises(ConfigError, match="CRF trains on whole tag sequences"):
        TokenClassificationModule(use_crf=True, loss="focal")
    module = SequenceClassificationModule(model_name_or_path="tiny:bert", labels={0: "score"}, class_weights="auto")
    with pytest.raises(ConfigError, match="regression .* trains on the MSE"):
        module.configure_model()


def test_classification_trains_with_auto_weights_and_focal_loss(tmp_path, caplog):
    rows = [{"id": str(i), "text": ("good plot " if i % 4 == 0 else "bad acting ") * 2,
             "label": "good" if i % 4 == 0 else "bad"} for i in range(64)]
    data = {"train": write_rows(tmp_path / "train.csv", rows), "validation": write_rows(tmp_path / "val.csv", rows[:16])}
    args = tiny_args(data, tmp_path / "unused")
    with caplog.at_level(logging.INFO):
        weighted = first_losses(tmp_path / "auto", *args, "--model.init_args.class_weights=auto",
                                "--model.init_args.loss=focal")
    assert "model.class_weights: bad 0.667, good 2 (inverse frequency of 64 training labels)" in caplog.text
    plain = first_losses(tmp_path / "plain", *args)
    assert len(weighted) == len(plain) == 4 and weighted[0] != pytest.approx(plain[0], rel=1e-3)


def test_token_classification_weights_tags_from_training_tokens(tmp_path, caplog):
    files = {split: write_conll(tmp_path / f"{split}.txt", entity_sentences(n, seed))
             for split, n, seed in (("train", 96, 0), ("validation", 32, 1))}
    args = ["--config", "configs/ner/conll2003.yaml", "--data.init_args.dataset_name=null",
            "--model.init_args.model_name_or_path=tiny:bert", "--data.init_args.batch_size=8",
            *[f"--data.init_args.{split}_file={path}" for split, path in files.items()]]
    with caplog.at_level(logging.INFO):
        first_losses(tmp_path / "auto", *args, "--model.init_args.class_weights=auto", "--model.init_args.loss=focal")
    line = next(m for m in caplog.messages if m.startswith("model.class_weights:"))
    weights = dict(part.rsplit(" ", 1) for part in line.split(": ", 1)[1].split(" (")[0].split(", "))
    assert float(weights["O"]) < 1 < float(weights["B-ORG"])  # the common tag counts less, a rare one more
