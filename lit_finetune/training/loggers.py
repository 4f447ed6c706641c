"""The plain local record of a run's metrics, kept next to its checkpoints for offline reading."""

from __future__ import annotations

import csv
import io

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from lit_finetune.io import write_text


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing metrics.csv; a resumed run must append to it instead, after dropping
    the rows a killed run logged past the checkpoint it resumes from (they are logged again), so each step is there
    once. Rewrites (a new column) go through a temporary file, never leaving half a file."""

    def __init__(self, log_dir: str, resume_step: int | None = None):
        self.resume_step = resume_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            self.metrics_keys = list(reader.fieldnames or [])
            rows = list(reader)
        if self.resume_step is not None:
            kept = [r for r in rows if not r.get("step") or int(float(r["step"])) < self.resume_step]
            if len(kept) != len(rows):
                self._write_all(kept)

    def _write_all(self, rows: list[dict]) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.metrics_file_path, text.getvalue())

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            rows = list(csv.DictReader(file))
        self.metrics_keys = fieldnames
        self._write_all(rows)


class RunCSVLogger(CSVLogger):
    """The run's own metrics.csv, kept across resumes.

    CSVLogger that writes metrics.csv straight into the run folder and never discards earlier rows. Alone in
    ``--trainer.logger=lit_finetune.training.loggers.RunCSVLogger`` it keeps a run off W&B; the CLI sets save_dir,
    and resume_step when a run resumes."""

    def __init__(self, save_dir: str = ".", name: str = "", version: str = "", resume_step: int | None = None,
                 **kwargs):
        """
        Args:
            save_dir: The run folder.
            resume_step: The global step of the checkpoint a resumed run continues from: rows logged at or after it
                by the earlier process are dropped, since the resumed run logs them again.
        """
        super().__init__(save_dir, name=name, version=version, **kwargs)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir, resume_step=self.resume_step)
        return self._experiment
