"""Masked (with NSP / SOP as an option) and causal language modeling on the corpus data module's blocks, on
transformers' own heads."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
import torchmetrics
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from lit_finetune import backbones
from lit_finetune.bounds import OpenFraction, PositiveFloat, Probability
from lit_finetune.data import packing
from lit_finetune.errors import ConfigError
from lit_finetune.tasks.base import PerSplit, TaskModule
from lit_finetune.tasks.pretraining.masking import IGNORE, mask_tokens, select_tokens

SPLITS = ("train", "val")


class TokenAverages(torch.nn.Module):
    """Token-weighted mean loss and accuracy per split (weighted by the predicted tokens, so the means are exact),
    and what a language model logs from them: loss, perplexity = exp(mean token loss) and accuracy."""

    def __init__(self, splits: tuple[str, ...], acc_name: str):
        super().__init__()
        self.acc_name = acc_name
        self.nll = PerSplit({split: torchmetrics.MeanMetric() for split in splits})
        self.token_acc = PerSplit({split: torchmetrics.MeanMetric() for split in splits})

    def record(self, split: str, logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        """Add a batch's mean token loss and accuracy to the split's averages."""
        scored = targets != IGNORE
        count = int(scored.sum())
        if count:
            correct = (logits.detach().argmax(-1) == targets) & scored
            self.nll[split].update(loss.detach(), weight=count)
            self.token_acc[split].update(correct.sum() / count, weight=count)

    def mean_loss(self, split: str) -> torch.Tensor | None:
        nll = self.nll[split]
        return nll.compute() if nll.update_count else None

    def log(self, module: TaskModule, split: str) -> None:
        """Log the split's averages (``train/loss_epoch`` for training, ``<split>/loss`` otherwise) and reset them."""
        nll, acc = self.nll[split], self.token_acc[split]
        if nll.update_count == 0:
            return
        loss = float(nll.compute())  # synced across processes by torchmetrics
        module.log_dict({"train/loss_epoch" if split == "train" else f"{split}/loss": loss,
                         f"{split}/perplexity": math.exp(min(loss, 50.0)), f"{split}/{self.acc_name}": acc.compute()},
                        prog_bar=split == "val")
        nll.reset()
        acc.reset()


def causal_step(module: TaskModule, tokens: TokenAverages, split: str, batch: dict,
                labels: torch.Tensor) -> torch.Tensor:
    """The next-token loss of a batch (position t predicts token t + 1; in packed rows, not across examples),
    recorded in `tokens` and, in training, logged per step as ``train/loss``."""
    inputs, labels = packing.causal_inputs(batch, labels)
    out = module.model(**inputs, labels=labels)
    tokens.record(split, out.logits[:, :-1], labels[:, 1:], out.loss)
    if split == "train":
        module.log("train/loss", out.loss, on_step=True, prog_bar=True, batch_size=len(labels))
    return out.loss


def load_causal_lm(module: TaskModule) -> PreTrainedModel:
    """The module's backbone as an ``AutoModelForCausalLM``, once `require_decoder` has let it through."""
    require_decoder(module.hparams)
    return module.load_backbone(AutoModelForCausalLM)


def require_decoder(hparams) -> None:
    """Encoders load as a causal LM (BERT has an LM-head variant) but were never trained to generate: refuse them
    before any weights are read.

    Raises: ConfigError naming ``model.model_name_or_path``.
    """
    found = backbones.preset(hparams.model_name_or_path)
    config = AutoConfig.for_model(found[1]) if found else AutoConfig.from_pretrained(
        backbones.resolve(hparams.model_name_or_path), trust_remote_code=hparams.trust_remote_code)
    kind = config.model_type
    if config.is_encoder_decoder or kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES \
            or kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(f"model.model_name_or_path: {hparams.model_name_or_path!r} is a {kind!r} model; causal "
                          "language modeling needs a decoder-only model such as smollm2, a GPT-2 / Llama / Qwen "
                          "checkpoint, or tiny:gpt2 (for an encoder-decoder model use the seq2seq task)")


class MaskedLMModule(TaskModule):
    """Masked-LM pretraining (BERT), alone or with next-sentence (NSP) or sentence-order (SOP) prediction.

    15% of tokens selected, of which 80% [MASK], 10% random, 10% unchanged. Features: whole-word masking; special and
    padding tokens never selected; a fixed masking of the validation data (same seed every validation), so
    validation perplexity is comparable across evaluations and runs; logs ``train/loss``, ``val/loss``,
    ``val/perplexity``, ``val/masked_acc``. With ``sentence_task`` (on ``AutoModelForPreTraining``: BertForPreTraining,
    AlbertForPreTraining, ...): loss = MLM loss + ``pair_weight`` x pair loss, both parts logged (``val/mlm_loss``,
    ``val/nsp_loss`` or ``val/sop_loss``) with ``val/nsp_acc`` or ``val/sop_acc``; it needs the corpus data module's
    ``examples`` to be the same task. Export: an ``AutoModelForMaskedLM`` (or ``ForPreTraining``) folder, which the
    classification task loads as its backbone.
    Raises: ConfigError when the tokenizer has no mask token, the probabilities are out of range, or the data's
    examples are of another kind.
    """

    def __init__(
        self,
        model_name_or_path: str = "minilm",
        mlm_probability: OpenFraction = 0.15,
        whole_word_mask: bool = False,
        mask_replace_prob: Probability = 0.8,
        random_replace_prob: Probability = 0.1,
        validation_seed: int = 1234,
        sentence_task: Literal["none", "nsp", "sop"] = "none",
        pair_weight: PositiveFloat = 1.0,
        **kwargs,
    ):
        """
        Args:
            model_name_or_path: Backbone to pretrain (see TaskModule).
            mlm_probability: Share of tokens (or of words, with whole-word masking) selected for prediction.
            whole_word_mask: Select whole words: all sub-tokens of a selected word are predicted.
            mask_replace_prob: Share of selected tokens replaced by [MASK].
            random_replace_prob: Share of selected tokens replaced by a random token (the rest stay unchanged).
            validation_seed: Seed of the validation masking, drawn anew from it at every validation.
            sentence_task: A sentence-pair objective beside masked LM: ``nsp`` (is B the text that follows A?,
                BERT) or ``sop`` (are A and B in their original order?, ALBERT); ``none`` for masked LM alone.
            pair_weight: Weight of the sentence-pair loss next to the masked-LM loss.
        """
        super().__init__(model_name_or_path=model_name_or_path, **kwargs)
        if not 0 < mlm_probability < 1:
            raise ConfigError(f"model.mlm_probability: got {mlm_probability}; expected a value in (0, 1)")
        if min(mask_replace_prob, random_replace_prob) < 0 or mask_replace_prob + random_replace_prob > 1:
            raise ConfigError(f"model.mask_replace_prob + model.random_replace_prob: got {mask_replace_prob} + "
                              f"{random_replace_prob}; expected non-negative shares summing to at most 1")
        self.val_generator: torch.Generator | None = None
        self.tokens = TokenAverages(SPLITS, "masked_acc")
        self.pair_acc = PerSplit({split: torchmetrics.classification.BinaryAccuracy() for split in SPLITS}) \
            if sentence_task != "none" else None

    @property
    def auto_class(self):
        """The masked-LM head alone, or with the sentence-pair head."""
        return AutoModelForMaskedLM if self.hparams.sentence_task == "none" else AutoModelForPreTraining

    def build_model(self) -> PreTrainedModel:
        if self.tokenizer.mask_token_id is None:
            raise ConfigError(f"model.model_name_or_path: the tokenizer of {self.hparams.model_name_or_path!r} has "
                              "no mask token; masked-LM needs one (use the causal LM task for GPT-style models)")
        return self.load_backbone(self.auto_class)

    def setup(self, stage: str) -> None:
        examples = getattr(getattr(self.datamodule, "hparams", None), "examples", None)
        task = self.hparams.sentence_task
        expected = "blocks" if task == "none" else task
        if examples is not None and examples != expected:
            raise ConfigError(f"data.examples: got {examples!r}, but model.sentence_task is {task!r}; set "
                              f"data.init_args.examples: {expected}")

    def on_validation_epoch_start(self) -> None:
        self.val_generator = torch.Generator().manual_seed(self.hparams.validation_seed)

    def inputs_and_labels(self, batch: dict, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hparams
        generator = self.val_generator if split == "val" else None
        selected = select_tokens(batch["special_tokens_mask"], batch["word_starts"] if h.whole_word_mask else None,
                                 h.mlm_probability, generator)
        return mask_tokens(batch["input_ids"], selected, self.tokenizer.mask_token_id, len(self.tokenizer),
                           h.mask_replace_prob, h.random_replace_prob, generator)

    def shared_step(self, batch: dict, split: str) -> torch.Tensor:
        input_ids, labels = self.inputs_and_labels(batch, split)
        if self.pair_acc is not None:
            return self.pair_step(batch, split, input_ids, labels)
        out = self.model(input_ids=input_ids, **packing.encoder_inputs(self.model, batch), labels=labels)
        self.tokens.record(split, out.logits, labels, out.loss)
        if split == "train":
            self.log("train/loss", out.loss, on_step=True, prog_bar=True, batch_size=len(input_ids))
        return out.loss

    def pair_step(self, batch: dict, split: str, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Masked LM plus the sentence-pair loss, each part logged."""
        out = self.model(input_ids=input_ids, attention_mask=batch["attention_mask"],
                         token_type_ids=batch["token_type_ids"])
        pair_logits = out.seq_relationship_logits if hasattr(out, "seq_relationship_logits") else out.sop_logits
        mlm_loss = F.cross_entropy(out.prediction_logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        pair_loss = F.cross_entropy(pair_logits, batch["pair_label"])
        loss = mlm_loss + self.hparams.pair_weight * pair_loss
        self.tokens.record(split, out.prediction_logits, labels, mlm_loss)
        self.pair_acc[split].update(pair_logits.detach().argmax(-1), batch["pair_label"])
        task = self.hparams.sentence_task
        on_step = split == "train"
        self.log_dict({f"{split}/pretraining_loss": loss, f"{split}/mlm_loss": mlm_loss,
                       f"{split}/{task}_loss": pair_loss}, on_step=on_step, on_epoch=True, prog_bar=on_step,
                      batch_size=len(input_ids), sync_dist=not on_step)
        return loss

    def log_split(self, split: str) -> None:
        if self.pair_acc is not None:
            pair_acc = self.pair_acc[split]
            self.log(f"{split}/{self.hparams.sentence_task}_acc", pair_acc.compute(), prog_bar=split == "val")
            pair_acc.reset()
        self.tokens.log(self, split)  # loss, perplexity and accuracy of the masked-LM part

    def on_train_epoch_end(self) -> None:
        self.log_split("train")

    def on_validation_epoch_end(self) -> None:
        self.log_split("val")


class CausalLMModule(TaskModule):
    """Causal-LM pretraining (GPT): next-token prediction over packed blocks.

    Features: logs ``train/loss``, ``val/loss``, ``val/perplexity`` (exp of the mean next-token loss) and
    ``val/next_token_acc``. Export: an ``AutoModelForCausalLM`` folder that ``pipeline("text-generation")`` loads.
    Raises: ConfigError for an encoder-only (BERT-style) or encoder-decoder backbone, before any weights are read.
    """

    causal_lm = True

    def __init__(self, model_name_or_path: str = "minilm", **kwargs):
        """
        Args:
            model_name_or_path: Decoder-only backbone to pretrain (see TaskModule).
        """
        super().__init__(model_name_or_path=model_name_or_path, **kwargs)
        self.tokens = TokenAverages(SPLITS, "next_token_acc")

    def build_model(self) -> PreTrainedModel:
        return load_causal_lm(self)

    def shared_step(self, batch: dict, split: str) -> torch.Tensor:
        return causal_step(self, self.tokens, split, batch, batch["input_ids"].masked_fill(batch["attention_mask"] == 0,
                                                                                           IGNORE))

    def on_train_epoch_end(self) -> None:
        self.tokens.log(self, "train")

    def on_validation_epoch_end(self) -> None:
        self.tokens.log(self, "val")
