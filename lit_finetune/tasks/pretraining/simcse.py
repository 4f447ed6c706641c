"""Contrastive sentence embeddings (SimCSE): unsupervised with dropout as noise, or supervised with positive pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import torchmetrics
from transformers import AutoModel, PreTrainedModel

from lit_finetune.errors import ConfigError
from lit_finetune.tasks.base import TaskModule


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """The [CLS] vector, or the mean of the non-padding token vectors."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class SimCSEModule(TaskModule):
    """Contrastive sentence embeddings (SimCSE), unsupervised or with labelled positives.

    SimCSE: each sentence must pick out its positive among the batch's other sentences (InfoNCE on cosine
    similarity / temperature).

    Features: unsupervised (the same sentence encoded twice: dropout is the only noise) or supervised (a positive
    column, optional hard negatives) depending on the data; CLS or mean pooling; ``val/spearman`` (and
    ``val/pearson``) between the cosine similarity of STS pairs and their gold scores. Export: the encoder plus
    sentence-transformers' module files, so ``SentenceTransformer(export_dir)`` encodes with the same pooling.
    Raises: ConfigError for a temperature that is not positive.
    """

    def __init__(self, model_name_or_path: str = "minilm", pooling: Literal["cls", "mean"] = "cls",
                 temperature: float = 0.05, **kwargs):
        """
        Args:
            model_name_or_path: Encoder to train (see TaskModule).
            pooling: Sentence vector: the ``cls`` token's, or the ``mean`` of the token vectors.
            temperature: Softmax temperature of the similarities (0.05 in the paper).
        """
        super().__init__(model_name_or_path=model_name_or_path, **kwargs)
        if temperature <= 0:
            raise ConfigError(f"model.temperature: got {temperature}; expected a positive number")
        self.train_acc = torchmetrics.MeanMetric()
        self.val_spearman = torchmetrics.SpearmanCorrCoef()
        self.val_pearson = torchmetrics.PearsonCorrCoef()

    def build_model(self) -> PreTrainedModel:
        return self.load_backbone(AutoModel)

    def encode(self, batch: dict, prefix: str = "") -> torch.Tensor:
        mask = batch[f"{prefix}attention_mask"]
        hidden = self.model(input_ids=batch[f"{prefix}input_ids"], attention_mask=mask).last_hidden_state
        return pool(hidden, mask, self.hparams.pooling)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        anchors = self.encode(batch)
        if "positive_input_ids" in batch:
            candidates = [self.encode(batch, "positive_")]
            if "negative_input_ids" in batch:
                candidates.append(self.encode(batch, "negative_"))
        else:
            candidates = [self.encode(batch)]  # a second pass: a different dropout mask makes the positive
        candidates = torch.cat(candidates)
        similarity = F.cosine_similarity(anchors[:, None], candidates[None], dim=-1) / self.hparams.temperature
        targets = torch.arange(len(anchors), device=anchors.device)  # sentence i's positive is candidate i
        loss = F.cross_entropy(similarity, targets)
        self.train_acc.update((similarity.detach().argmax(-1) == targets).float().mean())
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(anchors))
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/contrastive_acc", self.train_acc.compute())
        self.train_acc.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        similarity = F.cosine_similarity(self.encode(batch), self.encode(batch, "pair_"), dim=-1)
        self.val_spearman.update(similarity.float(), batch["score"])
        self.val_pearson.update(similarity.float(), batch["score"])

    def on_validation_epoch_end(self) -> None:
        self.log_dict({"val/spearman": self.val_spearman.compute(), "val/pearson": self.val_pearson.compute()},
                      prog_bar=True)
        self.val_spearman.reset()
        self.val_pearson.reset()

    def write_export_extras(self, folder: Path) -> None:
        """The module files sentence-transformers reads beside the encoder (encoder, then pooling)."""
        max_length = min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings)
        pooling = {"word_embedding_dimension": self.model.config.hidden_size,
                   "pooling_mode_cls_token": self.hparams.pooling == "cls",
                   "pooling_mode_mean_tokens": self.hparams.pooling == "mean",
                   "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
        (folder / "modules.json").write_text(json.dumps(modules, indent=2))
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length,
                                                                      "do_lower_case": False}, indent=2))
