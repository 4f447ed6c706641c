"""One LightningDataModule per task family, plus the readers and collators they share."""

from lit_finetune.data.classification import TextClassificationDataModule

__all__ = ["TextClassificationDataModule"]
