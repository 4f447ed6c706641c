"""Sequence and sentence-pair classification, multi-label classification and regression (``num_labels: 1``), on a
Hugging Face head or a pooled one (lit_finetune/heads.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
import torchmetrics
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from lit_finetune import heads
from lit_finetune.bounds import Fraction, NonNegativeFloat, Probability, settings_dict
from lit_finetune.errors import ConfigError
from lit_finetune.tasks.base import PerSplit, TaskModule
from lit_finetune.tasks.distillation import DistillationSettings, Distiller, blended_loss, student_outputs
from lit_finetune.tasks.pooling import Pooling, build_head, resolve_pooling
from lit_finetune.training import losses

SPLITS = ("train", "val", "test")
THRESHOLD_GRID = [round(0.05 * i, 2) for i in range(1, 20)]  # what tune_threshold tries on validation
THRESHOLD_KEY = "lit_finetune_threshold"  # checkpoint entry: the threshold validation chose (tune_threshold)


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


def multi_label_metrics(names: list[str], threshold: float) -> torchmetrics.MetricCollection:
    """Micro and macro F1, exact-match accuracy (every label of the set right) and each label's F1, at the
    decision threshold."""
    kwargs = dict(num_labels=len(names), threshold=threshold)
    per_label = torchmetrics.wrappers.ClasswiseWrapper(
        torchmetrics.classification.MultilabelF1Score(average=None, **kwargs), labels=list(names), prefix="f1_")
    return torchmetrics.MetricCollection({
        "f1_micro": torchmetrics.classification.MultilabelF1Score(average="micro", **kwargs),
        "f1": torchmetrics.classification.MultilabelF1Score(average="macro", **kwargs),
        "exact_match": torchmetrics.classification.MultilabelExactMatch(**kwargs), "per_label": per_label},
        compute_groups=False)


class SequenceClassificationModule(TaskModule):
    """Fine-tunes ``AutoModelForSequenceClassification``; logs ``train/loss``, ``val/acc``, ``val/f1``, ...

    Features: the pooling of token states under the head (the model's own pooler, [CLS], mean or max; a
    sentence-transformers checkpoint's own by default); label sets (multi-label: BCE, micro/macro/per-label F1,
    exact match, a tunable threshold); class weights and the focal loss; label smoothing; MSE regression; knowledge
    distillation from a teacher (see tasks/distillation.py); one torchmetrics collection per split, plus the best
    validation value so far (``val/acc_best``, ``val/f1_micro_best`` or ``val/spearman_best``); predictions with
    class probabilities (label sets with scores for multi-label).
    Raises: ConfigError when a checkpoint's labels differ from the data's, the teacher does not fit the student, or
    the backbone cannot give the pooling.
    """

    auto_class = AutoModelForSequenceClassification
    best_mode = "max"  # accuracy, micro F1 and Spearman alike
    from_data = ("labels", "multi_label")

    def __init__(
        self,
        model_name_or_path: str = "minilm",
        label_smoothing: Fraction = 0.0,
        classifier_dropout: Fraction | None = None,
        pooling: Pooling | None = None,
        class_weights: losses.ClassWeights = "none",
        loss: losses.Loss = "cross_entropy",
        focal_gamma: NonNegativeFloat = 2.0,
        threshold: Probability = 0.5,
        tune_threshold: bool = False,
        distillation: DistillationSettings | None = None,
        labels: dict[int, str] | None = None,
        multi_label: bool | None = None,
        **kwargs,
    ):
        """
        Args:
            model_name_or_path: Backbone to fine-tune (see TaskModule).
            label_smoothing: Cross-entropy label smoothing (0 = off).
            classifier_dropout: Dropout before the classification head; the backbone's dropout when unset.
            pooling: What the head classifies: ``pooler`` (the model's own Hugging Face head; for BERT the pooler
                over [CLS]), ``cls`` (the first token's state), ``mean`` or ``max`` (over the non-padding tokens).
                Unset: a sentence-transformers checkpoint's own pooling (from its ``modules.json``; ``mean`` for the
                packaged MiniLM, whose pooler was never trained), else ``pooler``. Exports of cls/mean/max load in
                ``pipeline`` after ``import lit_finetune.heads``.
            class_weights: Weights of the classes in the training loss: ``none``, ``auto`` (inverse frequency in
                the training labels, printed at the start) or one weight per class in id order. Validation and
                test losses stay unweighted, comparable across runs.
            loss: Training loss: ``cross_entropy``, or ``focal`` (each example's term scaled by
                (1 - p_true)^focal_gamma, so confidently right examples count less; with the class weights as alpha).
            focal_gamma: The focal loss's gamma (0 = cross-entropy).
            threshold: Multi-label: a label is predicted when its probability reaches this.
            tune_threshold: Multi-label: after each validation, also try thresholds 0.05..0.95 and keep the one with
                the best validation micro F1 (logged as ``val/threshold``, ``val/f1_micro_tuned``); predictions and
                the export (``multi_label_threshold`` in its config.json) use it.
            distillation: Also learn from a fine-tuned classifier of the same labels and vocabulary, e.g.
                ``{teacher: runs/sst2/export, alpha: 0.5}`` (see tasks/distillation.py).
            labels: The classes, ``{id: name}`` (``{0: score}`` for regression); taken from the training data when
                unset, and saved with the checkpoint.
            multi_label: Whether each example has a set of labels (one sigmoid per class, BCE loss); taken from the
                data (data.multi_label) when unset.
        """
        distillation = settings_dict(distillation, DistillationSettings, "model.distillation")
        losses.check_class_weights(class_weights, "model.class_weights")
        super().__init__(model_name_or_path=model_name_or_path, **kwargs)
        self.distiller = Distiller(distillation) if distillation else None
        self.class_weight: torch.Tensor | None = None  # per class id, for the training loss
        self.tuning: torchmetrics.MetricCollection | None = None  # micro F1 at each grid threshold (validation)
        self.tuned_threshold: float | None = None

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    def adopt_from_data(self) -> None:
        dm = self.datamodule
        if self.hparams.get("multi_label") is None and getattr(dm, "splits", None) is None:
            self.hparams["multi_label"] = False  # no data to ask (and checkpoints from before label sets)
        super().adopt_from_data()

    @property
    def is_multi_label(self) -> bool:
        return bool(self.hparams.get("multi_label"))

    @property
    def key_metric(self) -> str:
        return "spearman" if self.is_regression else "f1_micro" if self.is_multi_label else "acc"

    def build_model(self) -> PreTrainedModel:
        h = self.hparams
        problem_type = "regression" if self.is_regression else \
            "multi_label_classification" if self.is_multi_label else "single_label_classification"
        overrides = dict(self.label_overrides(), problem_type=problem_type)
        if h.classifier_dropout is not None:
            overrides["classifier_dropout"] = h.classifier_dropout
        if self.is_multi_label:
            if self.distiller is not None:
                raise ConfigError("model.distillation: distils a teacher's softmax over classes, and multi-label "
                                  "classification has one sigmoid per class; remove model.distillation")
            names = [self.labels[i] for i in range(self.num_labels)]
            self.metrics = PerSplit({split: multi_label_metrics(names, h.threshold).clone(prefix=f"{split}/")
                                     for split in SPLITS})
            if h.tune_threshold:
                self.tuning = torchmetrics.MetricCollection({
                    f"t{round(100 * t)}": torchmetrics.classification.MultilabelF1Score(
                        len(names), threshold=t, average="micro") for t in THRESHOLD_GRID}, compute_groups=False)
        else:
            self.metrics = PerSplit({split: split_metrics(self.num_labels).clone(prefix=f"{split}/")
                                     for split in SPLITS})
        if (self.is_regression or self.is_multi_label) and (h.class_weights != "none" or h.loss != "cross_entropy"):
            kind = "regression (one label) trains on the MSE" if self.is_regression else \
                "multi-label classification trains one sigmoid per class (BCE)"
            raise ConfigError(f"model.class_weights / model.loss: {kind}; set class_weights: none and loss: "
                              "cross_entropy")
        self.class_weight = losses.training_class_weights(self)
        h.pooling = self.chosen_pooling()
        return build_head(self, self.auto_class, heads.PooledForSequenceClassification, **overrides)

    def chosen_pooling(self) -> str:
        """The configured pooling, checked against the backbone; unset, the checkpoint's own (logged)."""
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

        return resolve_pooling(self, MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, "sequence-classification")

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(**self.model_inputs(batch)).logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, split: str = "val") -> torch.Tensor:
        h = self.hparams
        if self.is_regression:
            return F.mse_loss(logits.squeeze(-1), labels.float())
        if self.is_multi_label:
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        if split == "train":
            return losses.classification_loss(logits, labels, self.class_weight, h.loss, h.focal_gamma,
                                              h.label_smoothing)
        return F.cross_entropy(logits, labels, label_smoothing=h.label_smoothing)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """What the metrics compare with the labels: scores, label probabilities (multi-label) or class ids."""
        if self.is_regression:
            return logits.squeeze(-1)
        return logits.float().sigmoid() if self.is_multi_label else logits.argmax(-1)

    @property
    def threshold(self) -> float:
        """The multi-label decision threshold: the one validation chose (tune_threshold), else the setting."""
        return self.tuned_threshold if self.tuned_threshold is not None else self.hparams.threshold

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.tuning is None or not any(metric.update_count for metric in self.tuning.values()):
            return
        scores = {int(key[1:]) / 100: float(v) for key, v in self.tuning.compute().items()}
        self.tuning.reset()
        best = max(THRESHOLD_GRID, key=lambda t: scores[t])  # ties: the lowest threshold
        self.log_dict({"val/threshold": best, "val/f1_micro_tuned": scores[best]})
        if not self.trainer.sanity_checking:
            self.tuned_threshold = best  # the checkpoint written after this validation carries it

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.tuned_threshold is not None:
            checkpoint[THRESHOLD_KEY] = self.tuned_threshold

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tuned_threshold = checkpoint.get(THRESHOLD_KEY)
        super().on_load_checkpoint(checkpoint)

    def write_export_extras(self, folder: Path) -> None:
        """A multi-label export records its decision threshold in config.json (``multi_label_threshold``)."""
        if self.is_multi_label:
            path = folder / "config.json"
            config = json.loads(path.read_text())
            config["multi_label_threshold"] = self.threshold
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    def shared_step(self, batch: dict, split: str) -> torch.Tensor:
        outputs = student_outputs(self, batch, split)
        logits = outputs.logits
        loss = blended_loss(self, self.loss(logits, batch["labels"], split), outputs, batch, split)
        targets = batch["labels"].long() if self.is_multi_label else batch["labels"]
        self.metrics[split].update(self.predictions(logits.detach()), targets)
        if self.tuning is not None and split == "val":
            self.tuning.update(self.predictions(logits.detach()), targets)
        self.log_loss(split, loss, len(batch["labels"]))
        return loss

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        logits = self(batch).float()
        if self.is_regression:
            return [{"id": i, "score": s} for i, s in zip(batch["example_id"], logits.squeeze(-1).tolist())]
        names = [self.labels[k] for k in sorted(self.labels)]
        if self.is_multi_label:
            return [{"id": example_id, "labels": [n for n, p in zip(names, probs) if p >= self.threshold],
                     "scores": {n: round(p, 6) for n, p in zip(names, probs)}}
                    for example_id, probs in zip(batch["example_id"], logits.sigmoid().tolist())]
        rows = []
        for example_id, probs in zip(batch["example_id"], logits.softmax(-1).tolist()):
            best = max(range(len(probs)), key=probs.__getitem__)
            rows.append({"id": example_id, "label": names[best],
                         "probabilities": {name: round(p, 6) for name, p in zip(names, probs)}})
        return rows
