"""Pretraining objectives: each a task module over the corpus data module; their exports feed fine-tuning."""

from lit_finetune.tasks.pretraining.electra import ElectraPretrainingModule
from lit_finetune.tasks.pretraining.language_modeling import CausalLMModule, MaskedLMModule
from lit_finetune.tasks.pretraining.simcse import SimCSEModule

__all__ = ["CausalLMModule", "ElectraPretrainingModule", "MaskedLMModule", "SimCSEModule"]
