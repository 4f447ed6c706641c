"""Masked LM plus a sentence-pair objective: next-sentence prediction (BERT) or sentence-order prediction (ALBERT)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
import torchmetrics
from transformers import AutoModelForPreTraining

from lit_finetune.errors import ConfigError
from lit_finetune.tasks.pretraining.language_modeling import SPLITS, MaskedLMModule
from lit_finetune.tasks.pretraining.masking import IGNORE


class SentencePairPretrainingModule(MaskedLMModule):
    """Masked-LM pretraining plus next-sentence (NSP) or sentence-order (SOP) prediction.

    Joint masked-LM and NSP or SOP pretraining on ``AutoModelForPreTraining`` (BertForPreTraining,
    AlbertForPreTraining, ...): loss = MLM loss + ``pair_weight`` x pair loss.

    Features: everything of masked-LM (80/10/10, whole-word masking, fixed validation masking); both parts logged
    (``train/mlm_loss``, ``train/nsp_loss`` or ``train/sop_loss``); ``val/nsp_acc`` or ``val/sop_acc``. Needs the corpus
    data module with ``examples: nsp`` or ``sop`` (the same as ``sentence_task``).
    Raises: ConfigError when the data's pairs are of the other kind, or the model has no pretraining heads.
    """

    auto_class = AutoModelForPreTraining

    def __init__(self, model_name_or_path: str = "minilm", sentence_task: Literal["nsp", "sop"] = "nsp",
                 pair_weight: float = 1.0, **kwargs):
        """
        Args:
            model_name_or_path: Backbone with pretraining heads (BERT, ALBERT, ...; see TaskModule).
            sentence_task: ``nsp``: is B the text that follows A? ``sop``: are A and B in their original order?
            pair_weight: Weight of the sentence-pair loss next to the masked-LM loss.
        """
        super().__init__(model_name_or_path=model_name_or_path, **kwargs)
        for split in SPLITS:
            setattr(self, f"{split}_pair_acc", torchmetrics.classification.BinaryAccuracy())

    def setup(self, stage: str) -> None:
        examples = getattr(getattr(self.datamodule, "hparams", None), "examples", None)
        if examples is not None and examples != self.hparams.sentence_task:
            task = self.hparams.sentence_task
            raise ConfigError(f"data.examples: got {examples!r}, but model.sentence_task is {task!r}; set "
                              f"data.init_args.examples: {task}")

    def shared_step(self, batch: dict, split: str) -> torch.Tensor:
        input_ids, labels = self.inputs_and_labels(batch, split)
        out = self.model(input_ids=input_ids, attention_mask=batch["attention_mask"],
                         token_type_ids=batch["token_type_ids"])
        pair_logits = out.seq_relationship_logits if hasattr(out, "seq_relationship_logits") else out.sop_logits
        mlm_loss = F.cross_entropy(out.prediction_logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        pair_loss = F.cross_entropy(pair_logits, batch["pair_label"])
        loss = mlm_loss + self.hparams.pair_weight * pair_loss
        self.tokens.record(split, out.prediction_logits, labels, mlm_loss)
        getattr(self, f"{split}_pair_acc").update(pair_logits.detach().argmax(-1), batch["pair_label"])
        task = self.hparams.sentence_task
        on_step = split == "train"
        self.log_dict({f"{split}/pretraining_loss": loss, f"{split}/mlm_loss": mlm_loss,
                       f"{split}/{task}_loss": pair_loss}, on_step=on_step, on_epoch=True, prog_bar=on_step,
                      batch_size=len(input_ids), sync_dist=not on_step)
        return loss

    def log_split(self, split: str) -> None:
        pair_acc = getattr(self, f"{split}_pair_acc")
        self.log(f"{split}/{self.hparams.sentence_task}_acc", pair_acc.compute(), prog_bar=split == "val")
        pair_acc.reset()
        super().log_split(split)  # val/loss and val/perplexity of the masked-LM part
