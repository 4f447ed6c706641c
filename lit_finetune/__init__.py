"""lit_finetune: pretrain and fine-tune Transformer language models with PyTorch Lightning."""

__version__ = "0.1.0"
