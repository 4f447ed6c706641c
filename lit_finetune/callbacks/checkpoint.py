"""``last.ckpt`` always the latest state: every validation, every N steps or minutes, and on SIGTERM / SIGINT /
SIGUSR1, after which the run exits with the signal's code and the same command resumes it."""

from __future__ import annotations

import signal
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from lit_finetune.errors import LitFinetuneError
from lit_finetune.run_folder import RunFolder
from lit_finetune.training.checkpointing import NonFiniteError, non_finite_tensors

# What a signal means for the run record: Ctrl-C is the user's, TERM and USR1 are how schedulers preempt.
SIGNAL_STATUS = {signal.SIGINT: "interrupted", signal.SIGTERM: "preempted", signal.SIGUSR1: "preempted"}


def best_record(checkpoint: ModelCheckpoint | None) -> dict | None:
    """The run record's ``best`` entry: the monitored metric, its best value and that checkpoint."""
    if not isinstance(checkpoint, ModelCheckpoint) or not checkpoint.monitor or checkpoint.best_model_score is None:
        return None
    return {"metric": checkpoint.monitor, "mode": checkpoint.mode, "value": float(checkpoint.best_model_score),
            "checkpoint": checkpoint.best_model_path}



class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` is always the latest state, and which saves before a signal ends the run.

    Features: ``last.ckpt`` rewritten at every validation (Lightning rewrites it only when the monitored metric
    improves), every ``last_every_n_steps`` steps and every ``last_every_minutes`` minutes; on SIGTERM, SIGINT or
    SIGUSR1, ``last.ckpt`` at the current step (mid-epoch), run.json with status ``interrupted`` (SIGINT) or
    ``preempted``, and exit with code 128 + the signal number; a second Ctrl-C stops at once. A checkpoint of a
    model with NaN or inf weights is never written (so never selected as best).
    Raises: NonFiniteError before writing a non-finite model.
    """

    def __init__(self, *args, last_every_n_steps: int | None = None, last_every_minutes: float | None = 10.0,
                 save_last: bool = True, enable_version_counter: bool = False, **kwargs):
        """
        Args:
            last_every_n_steps: Also rewrite last.ckpt every this many optimizer steps (None: at validations only).
            last_every_minutes: Also rewrite last.ckpt when this many minutes passed since it was last written (None:
                never on time alone).
            save_last: Keep last.ckpt (the latest state, what a resume continues from).
            enable_version_counter: Write last-v1.ckpt, ... beside an existing last.ckpt of another folder's run
                (off: last.ckpt is replaced in place, also when a moved run folder resumes).
            *args, **kwargs: ModelCheckpoint's (monitor, mode, save_top_k, filename, ...).
        """
        if last_every_n_steps is not None and last_every_n_steps < 1:
            raise LitFinetuneError(f"RunCheckpoint.last_every_n_steps: expected >= 1, got {last_every_n_steps}")
        if last_every_minutes is not None and not last_every_minutes > 0:
            raise LitFinetuneError(f"RunCheckpoint.last_every_minutes: expected > 0, got {last_every_minutes}")
        super().__init__(*args, save_last=save_last, enable_version_counter=enable_version_counter, **kwargs)
        self.last_every_n_steps = last_every_n_steps
        self.last_every_minutes = last_every_minutes
        self.latest_step = -1  # global step of the state last.ckpt holds
        self.latest_time = time.monotonic()
        self.signal: int | None = None
        self.exit_pending = False  # saved after a signal; exit at the next step's start
        self.previous_handlers: dict[int, Any] = {}
        self.fit_started = time.time()
        self.saved_at_step: dict[str, int] = {}  # file written in this process -> the global step it holds

    # ----------------------------------------------------------------------------------------------------------- #
    # last.ckpt, always the latest state

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self.latest_step, self.latest_time = trainer.global_step, time.monotonic()

    def save_latest(self, trainer: pl.Trainer) -> None:
        if self.save_last and self.latest_step != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # This process's parameters (its shard under FSDP): no gathering to check them.
        bad = non_finite_tensors((n, p.detach()) for n, p in trainer.lightning_module.named_parameters())
        if bad:
            raise NonFiniteError(f"step {trainer.global_step}: the model holds NaN or inf ({len(bad)} tensors, e.g. "
                                 f"{bad[0]}); not writing {filepath}, the earlier checkpoints are kept")
        # Metrics logged so far reach disk first, so a resume's metrics.csv has every step up to this state.
        for logger in trainer.loggers:
            logger.save()
        super()._save_checkpoint(trainer, filepath)
        self.saved_at_step[filepath] = trainer.global_step

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.not_fitting(trainer) or self._should_save_on_train_epoch_end(trainer):
            return  # an end-of-epoch validation: saved at the epoch's end, after Lightning's top-k
        self.save_latest(trainer)
        self.exit_pending = self.signalled(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not self.not_fitting(trainer):
            self.save_latest(trainer)
            self.exit_pending = self.signalled(trainer)

    @staticmethod
    def not_fitting(trainer: pl.Trainer) -> bool:
        return bool(trainer.fast_dev_run) or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        signalled = self.signalled(trainer)
        if not signalled and not self.periodic_save_due(trainer):
            return
        if self.validates_after_this_batch(trainer):
            return  # on_validation_end saves this state, with the validation in it
        self.save_latest(trainer)
        self.exit_pending = signalled

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int) -> None:
        # A signalled run exits here, after the state it saved: Lightning has logged that step's metrics by now.
        if self.exit_pending:
            self.exit(trainer)

    def signalled(self, trainer: pl.Trainer) -> bool:
        signalled = self.signal is not None
        if trainer.world_size > 1:  # every rank saves (and stops) at the same step
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        return signalled

    def periodic_save_due(self, trainer: pl.Trainer) -> bool:
        if trainer.fit_loop._should_accumulate():
            return False
        due = bool(self.last_every_n_steps) and trainer.global_step % self.last_every_n_steps == 0
        if self.last_every_minutes:
            due = due or time.monotonic() - self.latest_time >= 60 * self.last_every_minutes
            if trainer.world_size > 1:
                due = trainer.strategy.broadcast(due)
        return due

    @staticmethod
    def validates_after_this_batch(trainer: pl.Trainer) -> bool:
        loop = trainer.fit_loop.epoch_loop
        return trainer.enable_validation and loop._should_check_val_fx(trainer.fit_loop._data_fetcher)

    # ----------------------------------------------------------------------------------------------------------- #
    # Signals: save, record, exit

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self.latest_time = time.monotonic()
        self.signal, self.exit_pending = None, False
        for signum in SIGNAL_STATUS:
            try:  # after Lightning's own handlers, which it restores at teardown
                self.previous_handlers[signum] = signal.signal(signum, self.on_signal)
            except ValueError:  # not the main thread: leave signals to whoever owns it
                break

    def on_signal(self, signum: int, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signal = signum
        rank_zero_info(f"\nReceived {signal.Signals(signum).name}: saving the run at the end of this step ...")

    def exit(self, trainer: pl.Trainer) -> None:
        signum = self.signal or signal.SIGTERM
        status = SIGNAL_STATUS.get(signum, "interrupted")
        if trainer.is_global_zero:
            RunFolder.of(trainer).write_record(status, self.fit_started, trainer.global_step, best_record(self))
        rank_zero_info(f"Saved {self.last_model_path} at step {trainer.global_step}; run status {status}. Run the "
                       "same command to resume.")
        self.restore_handlers()
        raise SystemExit(128 + signum)

    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.fit_started = time.time()

    def restore_handlers(self) -> None:
        for signum, handler in self.previous_handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.previous_handlers = {}

    def teardown(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        self.restore_handlers()
        super().teardown(trainer, pl_module, stage)
