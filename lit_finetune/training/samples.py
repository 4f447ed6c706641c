"""Generated text of a validation, kept where a user watches it get better: samples.jsonl and a W&B table."""

from __future__ import annotations

import json

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger

from lit_finetune.run_folder import RunFolder


def record_samples(trainer: pl.Trainer, rows: list[dict]) -> None:
    """Generated samples of this validation, stamped with the step: appended to samples.jsonl in the run folder and
    logged to W&B as the table ``val/samples``."""
    if not rows:
        return
    rows = [{"step": trainer.global_step, **row} for row in rows]
    with RunFolder.of(trainer).samples.open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_text("val/samples", columns=list(rows[0]), data=[list(r.values()) for r in rows],
                            step=trainer.global_step)
