"""Token classification / NER on a Hugging Face head, with an optional CRF; entity-level metrics from seqeval."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForTokenClassification, PreTrainedModel

from lit_finetune.bounds import Fraction, NonNegativeFloat, settings_dict
from lit_finetune.data.tag_schemes import OUTSIDE, TagScheme
from lit_finetune.distributed import gather_objects
from lit_finetune.errors import ConfigError
from lit_finetune.tasks.base import TaskModule
from lit_finetune.tasks.crf import CRF
from lit_finetune.tasks.distillation import DistillationSettings, Distiller, blended_loss, student_outputs
from lit_finetune.training import losses

SEQEVAL_SCHEMES = {"IOB1": "IOB1", "IOB2": "IOB2", "BIOES": "IOBES"}  # our scheme names -> seqeval's classes
CRF_FILE = "crf.safetensors"  # the CRF's scores beside an export (transformers' pipeline ignores the file)


def words_first(values: torch.Tensor, word_starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's values at its word starts, moved to the front in order: ([batch, words, ...], mask)."""
    order = torch.sort((~word_starts).int(), dim=1, stable=True).indices  # word starts first, order kept
    width = max(int(word_starts.sum(1).max()), 1)
    index = order[:, :width]
    picked = values.gather(1, index.view(*index.shape, *[1] * (values.dim() - 2)).expand(-1, -1, *values.shape[2:]))
    return picked, word_starts.gather(1, index)


def entity_scores(gold: list[list[str]], predicted: list[list[str]], scheme: TagScheme, strict: bool) -> dict:
    """Entity-level precision, recall and F1 (micro over all entities, and F1 per type), as seqeval computes them:
    conlleval's rules by default, or only entities that are exactly right under the scheme with `strict`."""
    # seqeval (and scikit-learn under it) is imported here, not by every command that imports the tasks
    from seqeval import scheme as seqeval_schemes  # noqa: PLC0415
    from seqeval.metrics import classification_report  # noqa: PLC0415

    kwargs = dict(mode="strict", scheme=getattr(seqeval_schemes, SEQEVAL_SCHEMES[scheme])) if strict else {}
    report = classification_report(gold, predicted, output_dict=True, zero_division=0, **kwargs)
    micro = report.pop("micro avg")
    scores = {"precision": micro["precision"], "recall": micro["recall"], "f1": micro["f1-score"]}
    for entity_type, values in report.items():
        if not entity_type.endswith(" avg"):
            scores[f"f1_{entity_type}"] = values["f1-score"]
    return scores


class TokenClassificationModule(TaskModule):
    """Token classification (NER) with entity-level F1, and an optional CRF.

    Fine-tunes ``AutoModelForTokenClassification``; logs ``val/f1``, ``val/precision``, ``val/recall`` and
    ``val/f1_<TYPE>`` at the entity level (never token accuracy), and ``val/f1_best``.

    Features: optional CRF over the words with decoding constrained by the data's tag scheme; first-sub-token or
    all-sub-token training labels (set in the data module); conlleval or strict entity matching; predictions as
    tags per word (a CoNLL file with ``PredictionWriter(format=conll)``); export that
    ``pipeline("token-classification")`` loads (the CRF's scores are saved beside it in crf.safetensors);
    knowledge distillation from a teacher's per-token predictions (see tasks/distillation.py).
    Raises: ConfigError when a checkpoint's tags differ from the data's, or the teacher does not fit the student.
    """

    best_mode = "max"  # entity F1
    auto_class = AutoModelForTokenClassification
    from_data = ("labels", "tag_scheme")

    def __init__(
        self,
        model_name_or_path: str = "minilm",
        use_crf: bool = False,
        strict_metrics: bool = False,
        classifier_dropout: Fraction | None = None,
        class_weights: losses.ClassWeights = "none",
        loss: losses.Loss = "cross_entropy",
        focal_gamma: NonNegativeFloat = 2.0,
        distillation: DistillationSettings | None = None,
        labels: dict[int, str] | None = None,
        tag_scheme: TagScheme | None = None,
        **kwargs,
    ):
        """
        Args:
            model_name_or_path: Backbone to fine-tune (see TaskModule).
            use_crf: Score whole tag sequences with a CRF over the words: trained by likelihood, decoded by Viterbi
                into sequences the tag scheme allows.
            strict_metrics: Count an entity only when its span and type match exactly under the tag scheme
                (seqeval's strict mode); default is conlleval's matching, the one papers report.
            classifier_dropout: Dropout before the tagging head; the backbone's dropout when unset.
            class_weights: Weights of the tags in the training loss: ``none``, ``auto`` (inverse frequency of the
                training tokens' tags, printed at the start) or one weight per tag in id order; not with a CRF.
                Validation and test losses stay unweighted.
            loss: Training loss per token: ``cross_entropy`` or ``focal`` ((1 - p_true)^focal_gamma times the
                cross-entropy; the class weights as alpha); not with a CRF, which trains by sequence likelihood.
            focal_gamma: The focal loss's gamma (0 = cross-entropy).
            distillation: Also learn from a fine-tuned tagger of the same tags and vocabulary, e.g.
                ``{teacher: runs/conll/export}`` (see tasks/distillation.py); with a CRF on either side, the
                emissions are the logits that are distilled.
            labels: The tags, ``{id: name}``; taken from the training data when unset, and saved with the checkpoint.
            tag_scheme: How the tags mark entities (IOB2, IOB1, BIOES); taken from the data (data.tag_scheme) when
                unset.
        """
        distillation = settings_dict(distillation, DistillationSettings, "model.distillation")
        losses.check_class_weights(class_weights, "model.class_weights")
        if use_crf and (class_weights != "none" or loss != "cross_entropy"):
            raise ConfigError("model.class_weights / model.loss: the CRF trains on whole tag sequences' likelihood, "
                              "which per-tag weights and the focal loss do not apply to; set use_crf: false, or "
                              "class_weights: none and loss: cross_entropy")
        super().__init__(model_name_or_path=model_name_or_path, **kwargs)
        self.distiller = Distiller(distillation) if distillation else None
        self.class_weight: torch.Tensor | None = None  # per tag id, for the training loss
        self.crf: CRF | None = None
        self.sequences: dict[str, tuple[list, list]] = {}  # split -> (gold, predicted) tag sequences of the epoch

    @property
    def tag_scheme(self) -> TagScheme:
        return self.hparams.tag_scheme

    def build_model(self) -> PreTrainedModel:
        tags = [self.labels[i] for i in range(self.num_labels)]
        if self.hparams.use_crf:
            self.crf = CRF(tags, self.tag_scheme)
        self.class_weight = losses.training_class_weights(self)
        overrides = self.label_overrides()
        if self.hparams.classifier_dropout is not None:
            overrides["classifier_dropout"] = self.hparams.classifier_dropout
        return self.load_backbone(self.auto_class, **overrides)

    # ----------------------------------------------------------------------------------------------------------- #

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(**self.model_inputs(batch)).logits

    def loss(self, emissions: torch.Tensor, batch: dict, split: str = "val") -> torch.Tensor:
        h = self.hparams
        if self.crf is None and split == "train":
            return losses.classification_loss(emissions, batch["labels"], self.class_weight, h.loss, h.focal_gamma)
        if self.crf is None:
            return losses.classification_loss(emissions, batch["labels"])
        word_emissions, mask = words_first(emissions, batch["word_starts"])
        word_tags, _ = words_first(batch["labels"].clamp(min=0), batch["word_starts"])
        return -self.crf.log_likelihood(word_emissions, word_tags, mask).mean()

    def decode(self, emissions: torch.Tensor, word_starts: torch.Tensor) -> list[list[str]]:
        """Tags of each sentence's words (those within max_length)."""
        word_emissions, mask = words_first(emissions.detach(), word_starts)
        if self.crf is not None:
            ids = self.crf.decode(word_emissions, mask)
        else:
            ids = [row[:n].tolist() for row, n in zip(word_emissions.argmax(-1), mask.sum(1).tolist())]
        return [[self.labels[i] for i in row] for row in ids]

    def gold(self, batch: dict) -> list[list[str]]:
        return [[self.labels[int(i)] for i in labels[starts]]
                for labels, starts in zip(batch["labels"], batch["word_starts"])]

    def shared_step(self, batch: dict, split: str) -> torch.Tensor:
        outputs = student_outputs(self, batch, split)
        emissions = outputs.logits
        loss = blended_loss(self, self.loss(emissions, batch, split), outputs, batch, split,
                                      positions=batch["labels"] != -100)
        self.log_loss(split, loss, len(batch["input_ids"]))
        if split != "train":
            gold, predicted = self.sequences.setdefault(split, ([], []))
            gold.extend(self.gold(batch))
            predicted.extend(self.decode(emissions, batch["word_starts"]))
        return loss

    def log_entity_scores(self, split: str) -> dict[str, float]:
        gold, predicted = self.sequences.pop(split, ([], []))
        shares = gather_objects((gold, predicted), self.trainer.world_size)  # each rank tagged its own sentences
        gold = [s for share in shares for s in share[0]]
        predicted = [s for share in shares for s in share[1]]
        scores = {f"{split}/{k}": v for k, v in
                  entity_scores(gold, predicted, self.tag_scheme, self.hparams.strict_metrics).items()}
        headline = f"{split}/f1"
        self.log_dict({k: v for k, v in scores.items() if k != headline})
        self.log(headline, scores[headline], prog_bar=split == "val")
        return scores

    def on_validation_epoch_end(self) -> None:
        self.log_best("f1", self.log_entity_scores("val")["val/f1"])

    def on_test_epoch_end(self) -> None:
        self.log_entity_scores("test")

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        rows = []
        for example_id, words, tags in zip(batch["example_id"], batch["tokens"],
                                           self.decode(self(batch), batch["word_starts"])):
            rows.append({"id": example_id, "tokens": words, "tags": tags + [OUTSIDE] * (len(words) - len(tags))})
        return rows

    def write_export_extras(self, folder: Path) -> None:
        if self.crf is not None:  # pipeline() ignores the file and decodes tag by tag
            save_file({name: p.detach().cpu().contiguous() for name, p in self.crf.named_parameters()},
                      str(folder / CRF_FILE), metadata={"tag_scheme": self.tag_scheme})
