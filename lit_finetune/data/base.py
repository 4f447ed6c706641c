"""What every data module shares: the backbone's tokenizer, the tokenized-data cache, batch sizes and loaders."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from lit_finetune import backbones
from lit_finetune.data import cache


class TokenizedDataModule(pl.LightningDataModule):
    """Base of the data modules: each tokenizes once in ``prepare_data`` into ``cache_path()`` and loads it in
    ``setup``."""

    def __init__(
        self,
        model_name_or_path: str = "minilm",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
        trust_remote_code: bool = False,
        tokenizer_name_or_path: str | None = None,
    ):
        """
        Args:
            model_name_or_path: Backbone whose tokenizer is used (linked from the model's own setting).
            batch_size: Training examples per batch (per device).
            eval_batch_size: Examples per batch for validation/test/predict; defaults to 2 x batch_size.
            num_workers: DataLoader worker processes.
            cache_dir: Where tokenized data is cached; default ``$LIT_FINETUNE_CACHE`` or ~/.cache/lit_finetune.
            trust_remote_code: Allow the tokenizer's own code from the hub to run.
            tokenizer_name_or_path: Tokenizer when it is not the backbone's own (linked from the model's setting).
        """
        super().__init__()
        self.save_hyperparameters()  # with every subclass's own arguments
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.cache_root = Path(cache_dir).expanduser() if cache_dir else cache.default_cache_dir()
        self.tokenizer = backbones.load_tokenizer(model_name_or_path, trust_remote_code, tokenizer_name_or_path)
        self.tokenizer_fingerprint = cache.tokenizer_fingerprint(self.tokenizer)

    def dataloader(self, dataset, train: bool, collate_fn, sampler=None, drop_last: bool = False) -> DataLoader:
        """Training batches of ``batch_size`` (shuffled unless a sampler is given), evaluation ones of
        ``eval_batch_size``."""
        return DataLoader(dataset, batch_size=self.hparams.batch_size if train else self.eval_batch_size,
                          shuffle=train and sampler is None, sampler=sampler, drop_last=drop_last,
                          collate_fn=collate_fn, num_workers=self.hparams.num_workers,
                          persistent_workers=self.hparams.num_workers > 0)
