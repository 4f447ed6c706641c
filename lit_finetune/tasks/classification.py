"""Sequence and sentence-pair classification, and regression (``num_labels: 1``), on a Hugging Face head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchmetrics
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from lit_finetune.bounds import Fraction, settings_dict
from lit_finetune.tasks.base import PerSplit, TaskModule
from lit_finetune.tasks.distillation import DistillationSettings, Distiller, blended_loss, student_outputs

SPLITS = ("train", "val", "test")


def split_metrics(num_labels: int) -> torchmetrics.MetricCollection:
    """Accuracy, macro-F1, MCC (and class 1's F1 for two classes) for classes; Pearson, Spearman and MSE for
    regression."""
    if num_labels == 1:
        return torchmetrics.MetricCollection({"pearson": torchmetrics.PearsonCorrCoef(),
                                              "spearman": torchmetrics.SpearmanCorrCoef(),
                                              "mse": torchmetrics.MeanSquaredError()})
    kwargs = dict(task="multiclass", num_classes=num_labels)
    metrics = {"acc": torchmetrics.Accuracy(**kwargs), "f1": torchmetrics.F1Score(average="macro", **kwargs),
               "mcc": torchmetrics.MatthewsCorrCoef(**kwargs)}
    if num_labels == 2:  # GLUE's "F1" for MRPC and QQP: F1 of class 1 (paraphrase), not the macro average
        metrics["f1_binary"] = torchmetrics.F1Score(task="binary")
    return torchmetrics.MetricCollection(metrics)


class SequenceClassificationModule(TaskModule):
    """Fine-tunes ``AutoModelForSequenceClassification``; logs ``train/loss``, ``val/acc``, ``val/f1``, ...

    Features: label smoothing; MSE regression; knowledge distillation from a teacher (see tasks/distillation.py);
    one torchmetrics collection per split, plus the best validation value so far (``val/acc_best`` or
    ``val/spearman_best``); predictions with class probabilities.
    Raises: ConfigError when a checkpoint's labels differ from the data's, or the teacher does not fit the student.
    """

    auto_class = AutoModelForSequenceClassification
    best_mode = "max"  # accuracy and Spearman alike
    from_data = ("labels",)

    def __init__(
        self,
        model_name_or_path: str = "minilm",
        label_smoothing: Fraction = 0.0,
        classifier_dropout: Fraction | None = None,
        distillation: DistillationSettings | None = None,
        labels: dict[int, str] | None = None,
        **kwargs,
    ):
        """
        Args:
            model_name_or_path: Backbone to fine-tune (see TaskModule).
            label_smoothing: Cross-entropy label smoothing (0 = off).
            classifier_dropout: Dropout before the classification head; the backbone's dropout when unset.
            distillation: Also learn from a fine-tuned classifier of the same labels and vocabulary, e.g.
                ``{teacher: runs/sst2/export, alpha: 0.5}`` (see tasks/distillation.py).
            labels: The classes, ``{id: name}`` (``{0: score}`` for regression); taken from the training data when
                unset, and saved with the checkpoint.
        """
        distillation = settings_dict(distillation, DistillationSettings, "model.distillation")
        super().__init__(model_name_or_path=model_name_or_path, **kwargs)
        self.distiller = Distiller(distillation) if distillation else None

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def key_metric(self) -> str:
        return "spearman" if self.is_regression else "acc"

    def build_model(self) -> PreTrainedModel:
        h = self.hparams
        overrides = dict(self.label_overrides(),
                         problem_type="regression" if self.is_regression else "single_label_classification")
        if h.classifier_dropout is not None:
            overrides["classifier_dropout"] = h.classifier_dropout
        self.metrics = PerSplit({split: split_metrics(self.num_labels).clone(prefix=f"{split}/") for split in SPLITS})
        return self.load_backbone(self.auto_class, **overrides)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(**self.model_inputs(batch)).logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.is_regression:
            return F.mse_loss(logits.squeeze(-1), labels.float())
        return F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.squeeze(-1) if self.is_regression else logits.argmax(-1)

    def shared_step(self, batch: dict, split: str) -> torch.Tensor:
        outputs = student_outputs(self, batch, split)
        logits = outputs.logits
        loss = blended_loss(self, self.loss(logits, batch["labels"]), outputs, batch, split)
        self.metrics[split].update(self.predictions(logits.detach()), batch["labels"])
        self.log_loss(split, loss, len(batch["labels"]))
        return loss

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        logits = self(batch).float()
        if self.is_regression:
            return [{"id": i, "score": s} for i, s in zip(batch["example_id"], logits.squeeze(-1).tolist())]
        names = [self.labels[k] for k in sorted(self.labels)]
        rows = []
        for example_id, probs in zip(batch["example_id"], logits.softmax(-1).tolist()):
            best = max(range(len(probs)), key=probs.__getitem__)
            rows.append({"id": example_id, "label": names[best],
                         "probabilities": {name: round(p, 6) for name, p in zip(names, probs)}})
        return rows
