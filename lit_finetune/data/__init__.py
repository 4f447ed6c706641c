"""One LightningDataModule per task family, plus the readers and collators they share."""

from lit_finetune.data.classification import TextClassificationDataModule
from lit_finetune.data.corpus import CorpusDataModule
from lit_finetune.data.instructions import InstructionDataModule
from lit_finetune.data.multiple_choice import MultipleChoiceDataModule
from lit_finetune.data.question_answering import QuestionAnsweringDataModule
from lit_finetune.data.sentence_embedding import SentenceEmbeddingDataModule
from lit_finetune.data.seq2seq import Seq2SeqDataModule
from lit_finetune.data.token_classification import TokenClassificationDataModule

__all__ = ["CorpusDataModule", "InstructionDataModule", "MultipleChoiceDataModule", "QuestionAnsweringDataModule",
           "SentenceEmbeddingDataModule", "Seq2SeqDataModule", "TextClassificationDataModule",
           "TokenClassificationDataModule"]
