"""Shared fixtures: offline settings and small data files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import wandb
from helpers import OFFLINE_ENV, tiny_splits


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    """No hub, no W&B service; a tokenized-data cache shared by the session's worker (tests needing their own pass
    one)."""
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
    monkeypatch.setenv("LIT_FINETUNE_CACHE", str(tmp_path_factory.getbasetemp() / "token-cache"))
    # Packaged models converted once (SmolLM2 from GGUF, ~20 s), shared by parallel test workers.
    monkeypatch.setenv("LIT_FINETUNE_MODEL_CACHE", str(tmp_path_factory.getbasetemp().parent / "lit_finetune-models"))
    yield
    wandb.finish()  # in-process runs: each test gets its own W&B run, as each CLI process would


@pytest.fixture
def tiny_data(tmp_path) -> dict[str, Path]:
    """train / validation / test CSVs with string labels (64 / 32 / 16 rows)."""
    return tiny_splits(tmp_path / "data")
