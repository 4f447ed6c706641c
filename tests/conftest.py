"""Shared fixtures: offline settings and small data files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import wandb
from helpers import OFFLINE_ENV, tiny_splits


def set_offline(monkeypatch, tmp_path_factory) -> None:
    """No hub, no W&B service; a tokenized-data cache shared by the session's worker (tests needing their own pass
    one); packaged models converted once (SmolLM2 from GGUF, ~20 s), shared by parallel test workers."""
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
    monkeypatch.setenv("LIT_FINETUNE_CACHE", str(tmp_path_factory.getbasetemp() / "token-cache"))
    monkeypatch.setenv("LIT_FINETUNE_MODEL_CACHE", str(tmp_path_factory.getbasetemp().parent / "lit_finetune-models"))


@pytest.fixture(scope="module")
def offline_module(tmp_path_factory):
    """The offline settings for a module-scoped fixture, which runs before any test's own."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        set_offline(monkeypatch, tmp_path_factory)
        yield
    wandb.finish()


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    """Every test runs offline (see set_offline)."""
    set_offline(monkeypatch, tmp_path_factory)
    yield
    wandb.finish()  # in-process runs: each test gets its own W&B run, as each CLI process would


@pytest.fixture
def tiny_data(tmp_path) -> dict[str, Path]:
    """train / validation / test CSVs with string labels (64 / 32 / 16 rows)."""
    return tiny_splits(tmp_path / "data")
