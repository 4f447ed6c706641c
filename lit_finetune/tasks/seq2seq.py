"""Sequence-to-sequence fine-tuning (translation, summarization) of an encoder-decoder model, scored on what it
generates."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForSeq2SeqLM, PreTrainedModel

from lit_finetune import backbones
from lit_finetune.bounds import Fraction, NonNegativeInt, PositiveInt
from lit_finetune.errors import ConfigError
from lit_finetune.tasks.base import PerSplit, TaskModule
from lit_finetune.tasks.generation_metrics import GenerationScores
from lit_finetune.training.samples import record_samples

ScoreName = Literal["bleu", "rouge1", "rouge2", "rougeL"]


class Seq2SeqModule(TaskModule):
    """Sequence-to-sequence fine-tuning (T5, BART, Marian, ...), scored by BLEU and ROUGE.

    Fine-tunes ``AutoModelForSeq2SeqLM`` (T5, BART, Marian, ...) with teacher forcing; at validation and test it
    generates and logs ``val/bleu``, ``val/rouge1``, ``val/rouge2``, ``val/rougeL`` next to ``val/loss``.

    Features: greedy or beam-search generation; label smoothing; generation on all or the first N validation
    batches (or none: then monitor ``val/loss``); the best validation score so far (``val/bleu_best``); a few
    generated samples per validation in samples.jsonl of the run folder and a W&B table (``val/samples``);
    predictions as ``{id, source, prediction}`` rows.
    Raises: ConfigError for an encoder-only backbone (BERT, MiniLM, ...), which has no decoder to generate with.
    """

    best_mode = "max"  # BLEU and ROUGE: higher is better

    def __init__(
        self,
        model_name_or_path: str = "google-t5/t5-small",
        num_beams: PositiveInt = 1,
        max_new_tokens: PositiveInt = 64,
        label_smoothing: Fraction = 0.0,
        generate_during_validation: bool = True,
        max_eval_generate_batches: PositiveInt | None = None,
        best_metric: ScoreName = "bleu",
        num_samples: NonNegativeInt = 4,
        **kwargs,
    ):
        """
        Args:
            model_name_or_path: Encoder-decoder backbone (e.g. google-t5/t5-small, facebook/bart-base,
                Helsinki-NLP/opus-mt-en-de, or the presets tiny:t5 / small:bart); see TaskModule.
            num_beams: Beams of beam search at validation, test and predict; 1 decodes greedily.
            max_new_tokens: Longest generated output, in tokens.
            label_smoothing: Cross-entropy label smoothing of the training loss (0 = off; 0.1 is usual for
                translation).
            generate_during_validation: Generate and score BLEU / ROUGE at each validation; off leaves only
                ``val/loss`` (cheaper; then monitor val/loss in ModelCheckpoint).
            max_eval_generate_batches: Generate for only the first N validation batches (the loss still covers all);
                every batch when unset. Test and predict always generate for all.
            best_metric: Validation score whose best value so far is logged as ``val/<name>_best``.
            num_samples: Generated validation examples (source, reference, prediction) logged per validation.
        """
        super().__init__(model_name_or_path=model_name_or_path, **kwargs)
        if num_beams < 1 or max_new_tokens < 1:
            raise ConfigError(f"model: num_beams ({num_beams}) and max_new_tokens ({max_new_tokens}) must be >= 1")
        self.scores = PerSplit({"val": GenerationScores(), "test": GenerationScores()})
        self.samples: list[dict] = []

    def require_encoder_decoder(self) -> None:
        """Fail before training, with what to use instead, when the backbone has no decoder."""
        h = self.hparams
        source = backbones.resolve(h.model_name_or_path)
        found = backbones.preset(source)
        config = AutoConfig.for_model(found[1]) if found else \
            AutoConfig.from_pretrained(source, trust_remote_code=h.trust_remote_code)
        if not config.is_encoder_decoder:
            raise ConfigError(f"model.model_name_or_path: {h.model_name_or_path!r} is an encoder-only or decoder-only "
                              f"model ({config.model_type}); sequence-to-sequence needs an encoder-decoder model "
                              "such as google-t5/t5-small, facebook/bart-base, Helsinki-NLP/opus-mt-en-de or a preset "
                              "like small:t5 / small:bart (random weights, with model.tokenizer_name_or_path)")

    def build_model(self) -> PreTrainedModel:
        self.require_encoder_decoder()
        return self.load_backbone(AutoModelForSeq2SeqLM)

    # ----------------------------------------------------------------------------------------------------------- #

    def forward(self, batch: dict):
        return self.model(**self.model_inputs(batch), labels=batch["labels"])

    def loss(self, batch: dict) -> torch.Tensor:
        outputs = self(batch)
        if not self.hparams.label_smoothing:
            return outputs.loss
        return F.cross_entropy(outputs.logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100,
                               label_smoothing=self.hparams.label_smoothing)

    @torch.no_grad()
    def generate(self, batch: dict) -> list[str]:
        h = self.hparams
        output = self.model.generate(**self.model_inputs(batch), num_beams=h.num_beams,
                                     max_new_tokens=h.max_new_tokens, do_sample=False)
        return self.tokenizer.batch_decode(output, skip_special_tokens=True)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def evaluation_step(self, batch: dict, batch_idx: int, split: str) -> None:
        h = self.hparams
        self.log(f"{split}/loss", self.loss(batch), on_epoch=True, batch_size=len(batch["input_ids"]), sync_dist=True)
        if split == "val" and not (h.generate_during_validation and
                                   (h.max_eval_generate_batches is None or batch_idx < h.max_eval_generate_batches)):
            return
        predictions = self.generate(batch)
        self.scores[split].update(predictions, batch["target_text"])
        if split == "val" and len(self.samples) < h.num_samples:
            self.samples += [{"id": i, "source": s, "reference": r, "prediction": p} for i, s, r, p in
                             zip(batch["example_id"], batch["source_text"], batch["target_text"], predictions)]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch, batch_idx, "test")

    def log_scores(self, split: str) -> dict[str, torch.Tensor]:
        scores = self.scores[split]
        if not scores.update_called:  # generation off
            return {}
        values = {f"{split}/{name}": value for name, value in scores.compute().items()}  # synced across processes
        scores.reset()
        self.log_dict(values, prog_bar=split == "val")
        return values

    def on_validation_epoch_start(self) -> None:
        self.samples = []

    def on_validation_epoch_end(self) -> None:
        values = self.log_scores("val")
        if values and not self.trainer.sanity_checking:
            self.log_best(self.hparams.best_metric, values[f"val/{self.hparams.best_metric}"])
            self.log_samples()

    def on_test_epoch_end(self) -> None:
        self.log_scores("test")

    def log_samples(self) -> None:
        """This validation's first generations (its first batch: the longest of the first examples), appended to
        samples.jsonl and logged as a W&B table, to watch them improve (like GenerationSamples for causal LMs, but
        from the batches already generated)."""
        if self.trainer.is_global_zero:
            record_samples(self.trainer, self.samples[:self.hparams.num_samples])

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        return [{"id": i, "source": s, "prediction": p}
                for i, s, p in zip(batch["example_id"], batch["source_text"], self.generate(batch))]
