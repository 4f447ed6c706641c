"""One LightningModule per task family; each holds a Hugging Face model so export is `save_pretrained`."""

from lit_finetune.tasks.base import TaskModule
from lit_finetune.tasks.classification import SequenceClassificationModule
from lit_finetune.tasks.multiple_choice import MultipleChoiceModule
from lit_finetune.tasks.pretraining import (
    CausalLMModule,
    ElectraPretrainingModule,
    MaskedLMModule,
    SimCSEModule,
)
from lit_finetune.tasks.question_answering import QuestionAnsweringModule
from lit_finetune.tasks.seq2seq import Seq2SeqModule
from lit_finetune.tasks.sft import CausalSFTModule
from lit_finetune.tasks.token_classification import TokenClassificationModule

__all__ = ["CausalLMModule", "CausalSFTModule", "ElectraPretrainingModule", "MaskedLMModule",
           "MultipleChoiceModule", "QuestionAnsweringModule",
           "SequenceClassificationModule", "Seq2SeqModule", "SimCSEModule", "TaskModule", "TokenClassificationModule"]
