"""Training losses for imbalanced classes, shared by sequence and token classification: class weights (given, or
inverse frequency from the training labels) and the focal loss (Lin et al. 2017)."""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from lit_finetune.errors import ConfigError, DataError

Loss = Literal["cross_entropy", "focal"]
ClassWeights = Literal["none", "auto"] | list[float]
IGNORE = -100  # labels the loss skips (special tokens, non-first sub-tokens)


def check_class_weights(class_weights: ClassWeights, key: str) -> None:
    """Refuse, when the config is read, weights that no label count could make right."""
    if isinstance(class_weights, str):
        return
    bad = [w for w in class_weights if not w >= 0]
    if bad:
        raise ConfigError(f"{key}: weights must be >= 0, got {bad[0]} in {list(class_weights)}")
    if not any(class_weights):
        raise ConfigError(f"{key}: every weight is 0, so nothing would be learned")


def label_counts(labels: pa.ChunkedArray | pa.Array, num_labels: int) -> list[int]:
    """How often each class id occurs in a column of labels (ints, or lists of ints per token; -100 skipped)."""
    while pa.types.is_list(labels.type) or pa.types.is_large_list(labels.type):
        labels = pc.list_flatten(labels)
    counts = pc.value_counts(labels).to_pylist()
    found = {int(c["values"]): int(c["counts"]) for c in counts if c["values"] is not None}
    return [found.get(i, 0) for i in range(num_labels)]


def class_weights_tensor(class_weights: ClassWeights, labels: dict[int, str], counts: list[int] | None,
                         key: str) -> torch.Tensor | None:
    """The weight of each class id, or None for unweighted: ``auto`` is N / (C x count) (scikit-learn's
    "balanced": every class then weighs as much in total), from the training labels' `counts`."""
    if class_weights == "none":
        return None
    names = [labels[i] for i in range(len(labels))]
    if class_weights == "auto":
        if counts is None:
            return None  # not training (a checkpoint evaluated or exported): the weights are not needed
        missing = [name for name, n in zip(names, counts) if n == 0]
        if missing:
            raise DataError(f"{key}: auto weights are inverse class frequencies, and the training data has no "
                            f"{missing[0]!r} label; give the weights as a list")
        total = sum(counts)
        return torch.tensor([total / (len(counts) * n) for n in counts], dtype=torch.float32)
    if len(class_weights) != len(names):
        raise ConfigError(f"{key}: {len(class_weights)} weights for {len(names)} classes; expected one per class, "
                          f"in id order: {names}")
    return torch.tensor(class_weights, dtype=torch.float32)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
                        loss: Loss = "cross_entropy", gamma: float = 2.0,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean loss over the labels that are not -100, each weighted by its class's weight (the weighted mean, as
    PyTorch's cross-entropy takes it); ``focal`` scales each term by (1 - p_true)^gamma, so examples the model
    already gets right count less."""
    logits, labels = logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
    if weights is not None:
        weights = weights.to(logits.device)
    if loss == "cross_entropy":
        return F.cross_entropy(logits, labels, weight=weights, ignore_index=IGNORE, label_smoothing=label_smoothing)
    keep = labels != IGNORE
    logits, labels = logits[keep], labels[keep]
    terms = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    p_true = logits.log_softmax(-1).gather(1, labels[:, None]).squeeze(1).exp()
    terms = (1 - p_true).pow(gamma) * terms
    scale = weights[labels] if weights is not None else torch.ones_like(terms)
    return (scale * terms).sum() / scale.sum().clamp(min=torch.finfo(terms.dtype).tiny)


def training_class_weights(module, key: str = "model.class_weights") -> torch.Tensor | None:
    """A task module's class weights, counted from its data module's cached train split for ``auto`` (and
    printed); None when unweighted, or for ``auto`` outside training."""
    from lightning.pytorch.utilities import rank_zero_info

    setting, counts = module.hparams.class_weights, None
    splits = getattr(module.datamodule, "splits", None) or {}
    if setting == "auto" and module.fitting and "train" in splits:
        counts = label_counts(splits["train"].with_format("arrow")["labels"], module.num_labels)
    weights = class_weights_tensor(setting, module.labels, counts, key)
    if weights is not None:
        shown = ", ".join(f"{module.labels[i]} {w:.3g}" for i, w in enumerate(weights.tolist()))
        rank_zero_info(f"{key}: {shown}" + (f" (inverse frequency of {sum(counts):,} training labels)"
                                            if counts else ""))
    return weights
