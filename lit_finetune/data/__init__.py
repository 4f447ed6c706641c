"""One LightningDataModule per task family, plus the readers and collators they share."""

from lit_finetune.data.classification import TextClassificationDataModule
from lit_finetune.data.corpus import CorpusDataModule

__all__ = ["CorpusDataModule", "TextClassificationDataModule"]
