"""Multiple choice (SWAG-style): one score per (context, ending) pair from a Hugging Face head; the best one wins."""

from __future__ import annotations

import torchmetrics
from transformers import AutoModelForMultipleChoice, PreTrainedModel

from lit_finetune.errors import ConfigError
from lit_finetune.tasks.classification import SPLITS, SequenceClassificationModule


class MultipleChoiceModule(SequenceClassificationModule):
    """Fine-tunes ``AutoModelForMultipleChoice``; logs ``train/loss``, ``val/acc``, ``val/acc_best``, ``test/acc``.

    The choice positions are the classes (``num_labels`` is the number of choices), so loss, steps, metric logging and
    checkpoints are classification's; only the head, the metrics and the prediction rows differ.
    Features: label smoothing; accuracy per split plus the best validation value so far; predictions with each
    choice's probability.
    Raises: ConfigError when a checkpoint's number of choices differs from the data's.
    """

    def build_model(self) -> PreTrainedModel:
        dm = self.datamodule
        if self.num_labels is None and getattr(dm, "num_choices", None):
            self.num_labels = dm.num_choices
        if self.num_labels is None:
            raise ConfigError("model: the number of choices is unknown; train with a data module or load a checkpoint")
        for split in SPLITS:  # accuracy only: F1 over choice positions means nothing
            accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=self.num_labels)
            setattr(self, f"{split}_metrics", torchmetrics.MetricCollection({"acc": accuracy}, prefix=f"{split}/"))
        self.best = torchmetrics.MaxMetric()
        dropout = self.hparams.classifier_dropout
        return self.load_backbone(AutoModelForMultipleChoice,
                                  **({} if dropout is None else {"classifier_dropout": dropout}))

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        probabilities = self(batch).float().softmax(-1).tolist()
        return [{"id": example_id, "label": max(range(len(probs)), key=probs.__getitem__),
                 "probabilities": {str(choice): round(p, 6) for choice, p in enumerate(probs)}}
                for example_id, probs in zip(batch["example_id"], probabilities)]

