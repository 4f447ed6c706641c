"""ELECTRA replaced-token detection: a small masked-LM generator proposes replacements, the discriminator spots them."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
import torchmetrics
from transformers import ElectraForMaskedLM, ElectraForPreTraining, PreTrainedModel

from lit_finetune.bounds import DecayFactor, OpenFraction, PositiveFloat, Probability
from lit_finetune.data import packing
from lit_finetune.errors import ConfigError
from lit_finetune.tasks.base import PerSplit, TaskModule
from lit_finetune.tasks.pretraining.masking import mask_tokens, select_tokens

SPLITS = ("train", "val")


def generator_config(discriminator_config, size: float):
    """The discriminator's config scaled to `size` of its width (the paper uses 1/4 to 1/2), same depth and
    embedding size, so the embeddings can be shared."""
    config = copy.deepcopy(discriminator_config)
    heads = max(1, round(config.num_attention_heads * size))
    config.num_attention_heads = heads
    config.hidden_size = max(heads, round(config.hidden_size * size / heads) * heads)
    config.intermediate_size = max(1, round(config.intermediate_size * size))
    return config


class ElectraPretrainingModule(TaskModule):
    """ELECTRA pretraining: loss = generator MLM loss + ``discriminator_weight`` x replaced-token detection loss.

    Features: generator sized as a fraction of the discriminator (or loaded from ``generator_name_or_path``) sharing
    its embeddings; replacements sampled from the generator; a fixed masking and sampling of the validation data;
    logs ``train/loss`` and its two parts, ``val/disc_acc``, ``val/replaced_precision``, ``val/replaced_recall``,
    ``val/generator_acc``. Export: the discriminator (``ElectraForPreTraining``), which the classification task loads
    as its backbone.
    Raises: ConfigError for a generator size outside (0, 1] or a tokenizer without a mask token.
    """

    def __init__(
        self,
        model_name_or_path: str = "tiny:electra",
        generator_name_or_path: str | None = None,
        generator_size: DecayFactor = 0.25,
        discriminator_weight: PositiveFloat = 50.0,
        mlm_probability: OpenFraction = 0.15,
        mask_replace_prob: Probability = 0.85,
        random_replace_prob: Probability = 0.0,
        sampling_temperature: PositiveFloat = 1.0,
        validation_seed: int = 1234,
        **kwargs,
    ):
        """
        Args:
            model_name_or_path: The discriminator: an ELECTRA discriminator from the hub or a folder, or
                ``tiny:electra`` (a small random one).
            generator_name_or_path: A pretrained ELECTRA generator; by default one is built from the discriminator's
                config, scaled by ``generator_size``.
            generator_size: Generator width as a fraction of the discriminator's (hidden size, heads, FFN).
            discriminator_weight: Lambda, the weight of the replaced-token detection loss (50 in the paper).
            mlm_probability: Share of tokens the generator predicts (and may replace).
            mask_replace_prob: Share of those shown to the generator as [MASK] (85% in the released ELECTRA code).
            random_replace_prob: Share of those replaced by a random token before the generator sees them.
            sampling_temperature: Temperature of the generator's softmax when sampling replacements.
            validation_seed: Seed of the validation masking and sampling, drawn anew at every validation.
        """
        super().__init__(model_name_or_path=model_name_or_path, **kwargs)
        if not 0 < generator_size <= 1:
            raise ConfigError(f"model.generator_size: got {generator_size}; expected a fraction in (0, 1]")
        if not 0 < mlm_probability < 1:
            raise ConfigError(f"model.mlm_probability: got {mlm_probability}; expected a value in (0, 1)")
        self.generator: ElectraForMaskedLM | None = None
        self.val_generator: torch.Generator | None = None
        self.val_sampling_generator: torch.Generator | None = None
        self.detection = PerSplit({split: torchmetrics.MetricCollection({
            "disc_acc": torchmetrics.classification.BinaryAccuracy(),
            "replaced_precision": torchmetrics.classification.BinaryPrecision(),
            "replaced_recall": torchmetrics.classification.BinaryRecall()}, prefix=f"{split}/") for split in SPLITS})
        self.generator_acc = PerSplit({split: torchmetrics.MeanMetric() for split in SPLITS})

    def build_model(self) -> PreTrainedModel:
        h = self.hparams
        if self.tokenizer.mask_token_id is None:
            raise ConfigError(f"model.model_name_or_path: the tokenizer of {h.model_name_or_path!r} has no mask "
                              "token, which the generator needs")
        discriminator = self.load_backbone(ElectraForPreTraining)
        if h.generator_name_or_path:
            self.generator = self.load_backbone(ElectraForMaskedLM, h.generator_name_or_path)
        else:
            self.generator = ElectraForMaskedLM(generator_config(discriminator.config, h.generator_size))
        # Shared token, position and type embeddings; the generator's output layer stays tied to them.
        self.generator.electra.embeddings = discriminator.electra.embeddings
        self.generator.tie_weights()
        self.generator.train()
        return discriminator

    def on_validation_epoch_start(self) -> None:
        seed = self.hparams.validation_seed
        self.val_generator = torch.Generator().manual_seed(seed)  # masking: drawn on the CPU, the same on any device
        # Sampling noise is one number per selected token and vocabulary entry: drawn where the logits are.
        self.val_sampling_generator = torch.Generator(self.device).manual_seed(seed)

    def replace_tokens(self, batch: dict, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Generator MLM loss, and the inputs with the generator's samples put in at the selected positions."""
        h = self.hparams
        rng = self.val_generator if split == "val" else None
        input_ids = batch["input_ids"]
        selected = select_tokens(batch["special_tokens_mask"], None, h.mlm_probability, rng)
        masked, labels = mask_tokens(input_ids, selected, self.tokenizer.mask_token_id, len(self.tokenizer),
                                     h.mask_replace_prob, h.random_replace_prob, rng)
        out = self.generator(input_ids=masked, **packing.encoder_inputs(self.generator, batch), labels=labels)
        with torch.no_grad():
            logits = out.logits[selected].float() / h.sampling_temperature
            uniform = torch.rand(logits.shape, generator=self.val_sampling_generator if split == "val" else None,
                                 device=logits.device).clamp_(1e-9, 1 - 1e-9)
            sampled = (logits - torch.log(-torch.log(uniform))).argmax(-1)  # Gumbel-max: a draw from softmax
            self.generator_acc[split].update((logits.argmax(-1) == labels[selected]).float().mean(),
                                             weight=int(selected.sum()))
        replaced = input_ids.clone()
        replaced[selected] = sampled
        return out.loss, replaced

    def shared_step(self, batch: dict, split: str) -> torch.Tensor:
        generator_loss, replaced = self.replace_tokens(batch, split)
        is_replaced = (replaced != batch["input_ids"]).long()  # sampling the original token counts as original
        out = self.model(input_ids=replaced, **packing.encoder_inputs(self.model, batch))
        # The discriminator's loss over real tokens, as ElectraForPreTraining computes it from a 2D mask.
        active = batch["attention_mask"].bool()
        discriminator_loss = F.binary_cross_entropy_with_logits(out.logits[active], is_replaced[active].float())
        loss = generator_loss + self.hparams.discriminator_weight * discriminator_loss
        self.detection[split].update((out.logits.detach() > 0)[active].long(), is_replaced[active])
        on_step = split == "train"
        self.log_dict({f"{split}/loss": loss, f"{split}/generator_loss": generator_loss,
                       f"{split}/discriminator_loss": discriminator_loss}, on_step=on_step, on_epoch=True,
                      prog_bar=on_step, batch_size=len(replaced), sync_dist=not on_step)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.shared_step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.shared_step(batch, "val")

    def log_split(self, split: str) -> None:
        detection, generator_acc = self.detection[split], self.generator_acc[split]
        self.log_dict({**detection.compute(), f"{split}/generator_acc": generator_acc.compute()},
                      prog_bar=split == "val")
        detection.reset()
        generator_acc.reset()

    def on_train_epoch_end(self) -> None:
        self.log_split("train")

    def on_validation_epoch_end(self) -> None:
        self.log_split("val")
