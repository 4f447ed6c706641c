"""lit_finetune: pretrain and fine-tune Transformer language models with PyTorch Lightning."""

from lit_finetune.deferred_imports import defer_unused_torchmetrics_imports

# Before anything imports Lightning (and with it torchmetrics): see lit_finetune/deferred_imports.py.
defer_unused_torchmetrics_imports()

__version__ = "0.1.0"
