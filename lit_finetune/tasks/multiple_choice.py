"""Multiple choice (SWAG-style): one score per (context, ending) pair from a Hugging Face head; the best one wins."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchmetrics
from transformers import AutoModelForMultipleChoice, PreTrainedModel

from lit_finetune import heads
from lit_finetune.bounds import Fraction, PositiveInt
from lit_finetune.tasks.base import PerSplit, TaskModule
from lit_finetune.tasks.pooling import Pooling, build_head, resolve_pooling

SPLITS = ("train", "val", "test")


class MultipleChoiceModule(TaskModule):
    """Fine-tunes ``AutoModelForMultipleChoice``; logs ``train/loss``, ``val/acc``, ``val/acc_best``, ``test/acc``.

    The choice positions are the classes; their number comes from the data (or a checkpoint). Features: label
    smoothing; the pooling under the scoring head (as for classification: a sentence-transformers checkpoint's own
    by default); accuracy per split plus the best validation value so far; predictions with each choice's
    probability.
    No distillation: a teacher would need the same choices, and none is offered.
    Raises: ConfigError when a checkpoint's number of choices differs from the data's.
    """

    auto_class = AutoModelForMultipleChoice
    best_mode = "max"
    key_metric = "acc"
    from_data = ("num_choices",)

    def __init__(
        self,
        model_name_or_path: str = "minilm",
        label_smoothing: Fraction = 0.0,
        classifier_dropout: Fraction | None = None,
        pooling: Pooling | None = None,
        num_choices: PositiveInt | None = None,
        **kwargs,
    ):
        """
        Args:
            model_name_or_path: Backbone to fine-tune (see TaskModule).
            label_smoothing: Cross-entropy label smoothing over the choices (0 = off).
            classifier_dropout: Dropout before the scoring head; the backbone's dropout when unset.
            pooling: What each (context, choice) input is scored from: ``pooler``, ``cls``, ``mean`` or ``max``
                (see SequenceClassificationModule); unset, the checkpoint's own pooling, else ``pooler``.
            num_choices: Choices per example; taken from the training data when unset, and saved with the checkpoint.
        """
        super().__init__(model_name_or_path=model_name_or_path, **kwargs)

    def build_model(self) -> PreTrainedModel:
        # Accuracy only: F1 over choice positions means nothing.
        accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=self.hparams.num_choices)
        self.metrics = PerSplit({split: torchmetrics.MetricCollection({"acc": accuracy.clone()}, prefix=f"{split}/")
                                 for split in SPLITS})
        from transformers.models.auto.modeling_auto import MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES

        dropout = self.hparams.classifier_dropout
        self.hparams.pooling = resolve_pooling(self, MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES, "multiple-choice")
        return build_head(self, self.auto_class, heads.PooledForMultipleChoice,
                          **({} if dropout is None else {"classifier_dropout": dropout}))

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(**self.model_inputs(batch)).logits

    def shared_step(self, batch: dict, split: str) -> torch.Tensor:
        logits = self(batch)
        loss = F.cross_entropy(logits, batch["labels"], label_smoothing=self.hparams.label_smoothing)
        self.metrics[split].update(logits.detach().argmax(-1), batch["labels"])
        self.log_loss(split, loss, len(batch["labels"]))
        return loss

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        probabilities = self(batch).float().softmax(-1).tolist()
        return [{"id": example_id, "label": max(range(len(probs)), key=probs.__getitem__),
                 "probabilities": {str(choice): round(p, 6) for choice, p in enumerate(probs)}}
                for example_id, probs in zip(batch["example_id"], probabilities)]
