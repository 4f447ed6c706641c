"""A run folder and every path in it, named once: what `fit` writes, what a resume, `compare` and a sweep read."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from lit_finetune import io
from lit_finetune.errors import LitFinetuneError

# Set by the process that locked a run folder, so the processes it launches (DDP ranks) know it is theirs.
LOCKED_ENV = "LIT_FINETUNE_RUN_LOCKED"
EXPORT_MARKER = ".lit_finetune_export"  # in every export folder: what `export` may replace


@dataclass(frozen=True)
class RunFolder:
    """The files of one run (``trainer.default_root_dir``): its config, metrics, run record, checkpoints, export,
    stop file, generated samples and predictions."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @classmethod
    def of(cls, trainer) -> RunFolder:
        return cls(trainer.default_root_dir)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def record(self) -> Path:
        """run.json: how the run ended."""
        return self.root / "run.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        """The latest state, what a resume continues from."""
        return self.checkpoints / "last.ckpt"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def stop_file(self) -> Path:
        """Its appearance ends training cleanly (StopOnRequest)."""
        return self.root / "STOP"

    @property
    def samples(self) -> Path:
        return self.root / "samples.jsonl"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def wandb(self) -> Path:
        return self.root / "wandb"

    def predictions(self, format: str = "jsonl", rank: int | None = None) -> Path:
        """predictions.<format>, one file per process under DDP."""
        return self.root / (f"predictions.{format}" if rank is None else f"predictions.rank{rank}.{format}")

    def holds_run(self) -> bool:
        return self.config.is_file()

    def read_config(self) -> dict:
        return yaml.safe_load(self.config.read_text()) or {} if self.config.is_file() else {}

    def read_metrics(self) -> list[dict]:
        """metrics.csv's rows, none before the first is written."""
        if not self.metrics.is_file():
            return []
        with self.metrics.open(newline="") as f:
            return list(csv.DictReader(f))

    def read_record(self) -> dict:
        try:
            return json.loads(self.record.read_text()) if self.record.is_file() else {}
        except (OSError, json.JSONDecodeError):
            return {}

    def write_record(self, status: str, started: float, global_step: int, best: dict | None = None) -> None:
        """run.json: how the run ended (finished, stopped, interrupted, preempted, failed), how long it took and its
        best monitored value, for `lit-finetune compare`, schedulers and the next start in this folder."""
        record = {"status": status, "started": datetime.fromtimestamp(started).isoformat(timespec="seconds"),
                  "wall_s": round(time.time() - started, 1), "global_step": global_step}
        if best:
            record["best"] = best
        io.write_text(self.record, json.dumps(record, indent=2) + "\n")


class RunLock:
    """An exclusive lock on a run folder, held for the whole process: a second start in the same folder is refused
    before it writes anything. The kernel drops the lock when the process ends, however it ends."""

    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.file = None

    def acquire(self) -> None:
        if os.environ.get(LOCKED_ENV) == str(self.folder.root.resolve()):
            return  # launched by the process that holds it
        self.folder.root.mkdir(parents=True, exist_ok=True)
        self.file = open(self.folder.lock, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            self.file = None
            raise LitFinetuneError(f"trainer.default_root_dir: {self.folder.root} is in use by another lit-finetune "
                                   "process; wait for it to end or choose another folder") from None
        os.environ[LOCKED_ENV] = str(self.folder.root.resolve())

    def release(self) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None
            os.environ.pop(LOCKED_ENV, None)
