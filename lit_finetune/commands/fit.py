"""`lit-finetune fit | validate | test | predict`: LightningCLI over every task and data module, with one folder per
run that a killed or preempted run resumes in with the same command.

Every run writes into one folder (``trainer.default_root_dir``, by default ``runs/<config>-<time>``): config.yaml,
metrics.csv, checkpoints/, export/, predictions and the W&B run.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from jsonargparse import Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from lit_finetune import bounds
from lit_finetune.callbacks import ExportBestModel, StopOnRequest
from lit_finetune.callbacks.checkpoint import best_record
from lit_finetune.errors import ConfigError
from lit_finetune.run_folder import LOCKED_ENV, RunFolder, RunLock
from lit_finetune.tasks import TaskModule
from lit_finetune.training.checkpointing import AtomicCheckpointIO, read_checkpoint
from lit_finetune.training.loggers import RunCSVLogger

# Key names that hold credentials (api_key, hub_token, client_secret, ...), not knobs like max_tokens.
SECRET_KEY = re.compile(r"(^|_)(api_?key|token|secret|password|passwd)$", re.IGNORECASE)


def redact(value, key: str = ""):
    """Copy of a config with secret-looking keys blanked, so keys and tokens never reach logs or checkpoints."""
    if isinstance(value, str) and value and SECRET_KEY.search(key):
        return "<redacted>"
    if isinstance(value, Namespace):
        return Namespace(**{k: redact(v, k) for k, v in vars(value).items()})
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    return value


def secret_values(value, key: str = "") -> set[str]:
    """The strings that `redact` would blank: the values of secret-looking keys anywhere in a config."""
    if isinstance(value, str) and value and SECRET_KEY.search(key):
        return {value}
    items = vars(value).items() if isinstance(value, Namespace) else value.items() if isinstance(value, dict) else \
        ((key, v) for v in value) if isinstance(value, list) else ()
    return set().union(*(secret_values(v, str(k)) for k, v in items)) if items else set()


@contextmanager
def argv_without(secrets: set[str]):
    """sys.argv with these strings blanked while W&B records the command line (its metadata and run file); the
    real one is kept for the rest of the process (DDP relaunches it)."""
    saved = list(sys.argv)
    for secret in secrets:
        sys.argv[:] = [arg.replace(secret, "<redacted>") for arg in sys.argv]
    try:
        yield
    finally:
        sys.argv[:] = saved


def flat_config(config: Namespace) -> dict:
    """Dotted keys as the CLI and sweep files write them (``model.learning_rate``, without ``init_args``), so W&B's
    table and parallel-coordinates plots line up with the sweep parameters."""
    plain = (int, float, str, bool, type(None))
    return {key.replace(".init_args.", "."): bounds.plain(value) if isinstance(value, plain) else str(value)
            for key, value in config.items(branches=False)}


def config_class(node: Namespace) -> type | None:
    """The class a ``class_path`` entry of the config names (None when it names none that imports)."""
    module, _, name = str(node.get("class_path", "")).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def names_subclass(node, base: type) -> bool:
    cls = config_class(node) if isinstance(node, Namespace) else None
    return isinstance(cls, type) and issubclass(cls, base)


def write_run_record(trainer, started: float, status: str | None = None) -> None:
    """run.json: how the run ended, how long it took and its best monitored value, for `lit-finetune compare`."""
    stopped = any(isinstance(cb, StopOnRequest) and cb.stopped for cb in trainer.callbacks)
    status = status or ("interrupted" if trainer.interrupted else "stopped" if stopped else "finished")
    RunFolder.of(trainer).write_record(status, started, trainer.global_step, best_record(trainer.checkpoint_callback))


# Settings a resume may change: how long and where the run goes on, and what watches it. Any other difference from
# the checkpoint's config would mix two runs in one (the optimizer and schedule come back from the checkpoint).
RESUMABLE_CHANGES = ("ckpt_path", "config", "resume_changes", "trainer.max_epochs", "trainer.max_steps",
                     "trainer.max_time", "trainer.min_epochs", "trainer.min_steps", "trainer.callbacks",
                     "trainer.logger", "trainer.devices", "trainer.num_nodes", "trainer.accelerator",
                     "trainer.strategy", "trainer.precision", "trainer.plugins", "trainer.enable_progress_bar",
                     "trainer.enable_model_summary", "trainer.log_every_n_steps", "trainer.num_sanity_val_steps",
                     "trainer.profiler", "trainer.default_root_dir", "data.num_workers", "data.eval_batch_size",
                     "data.cache_dir")
CONFIG_KEY = "lit_finetune_config"  # checkpoint entry: the run's resolved config, flat and redacted
WANDB_ID_KEY = "wandb_run_id"  # checkpoint entry: the W&B run a resume continues
RESUME_ENV = "LIT_FINETUNE_RESUME_FROM"  # the checkpoint the launching process chose, for the ranks it launches


def changed_settings(saved: dict, current: dict) -> dict[str, tuple]:
    """Keys whose values differ between the checkpoint's flat config and this command's."""
    return {key: (saved.get(key), current.get(key)) for key in sorted(set(saved) | set(current))
            if saved.get(key) != current.get(key)}


def is_resumable_change(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RESUMABLE_CHANGES)


class RunConfig(SaveConfigCallback):
    """Saves the resolved config (secrets redacted) in the run folder and in each checkpoint, and attaches it to the
    W&B run with flat dotted keys."""

    def __init__(self, parser, config, *args, requested: dict | None = None, **kwargs):
        """`requested`: the command's own flat config (before the CLI fills in run-folder policy), which a resume
        compares with its own."""
        super().__init__(parser, redact(config), *args, **kwargs)
        self.requested = requested

    def save_config(self, trainer, pl_module, stage: str) -> None:
        monitored = {cb.monitor: cb.mode for cb in trainer.callbacks
                     if isinstance(cb, (ModelCheckpoint, EarlyStopping)) and cb.monitor}
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                run.config.update(flat_config(self.config), allow_val_change=True)
                for metric, mode in monitored.items():  # the run summary shows the best value, not the last
                    run.define_metric(metric, summary=mode)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.requested or flat_config(self.config)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger._experiment is not None:
                checkpoint[WANDB_ID_KEY] = logger.version


# Trainer numbers that Lightning takes without a bound, checked before anything is built: (key, lowest, what).
TRAINER_BOUNDS = (("max_epochs", -1, "epochs (-1: no limit)"), ("min_epochs", 0, "epochs"),
                  ("max_steps", -1, "steps (-1: no limit)"), ("min_steps", 0, "steps"),
                  ("accumulate_grad_batches", 1, "batches"), ("log_every_n_steps", 1, "steps"),
                  ("num_sanity_val_steps", -1, "batches (-1: all)"), ("check_val_every_n_epoch", 1, "epochs"),
                  ("gradient_clip_val", 0, "a norm"), ("num_nodes", 1, "nodes"))


def check_trainer_numbers(trainer: Namespace) -> None:
    """Raises: ConfigError naming the first trainer key whose number cannot work."""
    for key, lowest, what in TRAINER_BOUNDS:
        value = trainer.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < lowest:
            raise ConfigError(f"trainer.{key}: expected {what} >= {lowest}, got {value}")
    for key, lowest in (("val_check_interval", 0), ("limit_train_batches", 0), ("limit_val_batches", -1)):
        value = trainer.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= lowest:
            raise ConfigError(f"trainer.{key}: expected a fraction of an epoch (0, 1] or a number of batches, got "
                              f"{value}")
    strategy = trainer.get("strategy") or ""
    name = str(strategy.get("class_path", "") if isinstance(strategy, Namespace) else strategy)
    accelerator = str(trainer.get("accelerator") or "auto")
    # Lightning's FSDP refuses CPUs
    fsdp_v1 = name.lower().startswith("fsdp") or name.endswith((".FSDPStrategy", ".FSDPBlocksStrategy"))
    if fsdp_v1 and (accelerator == "cpu" or accelerator in ("auto", "gpu", "cuda") and not cuda_available()):
        raise ConfigError(f"trainer.strategy: {name} needs GPUs{'' if accelerator == 'cpu' else ' and finds none'}; "
                          "on CPU use trainer.strategy=ddp, or FSDP2 sharding with --config "
                          "configs/strategies/fsdp2.yaml")


def check_shard_count(path: Path, trainer: Namespace | None) -> None:
    """A sharded checkpoint folder resumes on the number of processes that wrote it: resharding on load is not
    tested here (a trial on fewer processes trained, then lost its validation metrics).

    Raises: ConfigError naming both counts and the way out (its export, or a full checkpoint file).
    """
    if not path.is_dir() or trainer is None:
        return
    written = len(list(path.glob("*.distcp")))
    devices = str(trainer.get("devices"))
    processes = int(devices) * int(trainer.get("num_nodes") or 1) if devices.isdigit() else None
    if written and processes is not None and processes != written:
        raise ConfigError(f"--ckpt_path: {path} holds the shards of {written} processes, and this run has "
                          f"{processes} (trainer.devices x trainer.num_nodes); resume it with {written}, or "
                          "export it (lit-finetune export) and start a new run from the export")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def checkpoint_to_resume(folder: RunFolder) -> Path | None:
    """The checkpoint a `fit` in an existing run folder continues from: last.ckpt of a run that did not finish.

    Raises: ConfigError when the folder holds a run that ended (or that has no checkpoint to continue from).
    """
    if not folder.holds_run():
        return None
    last = resumable_checkpoint(folder)
    if last:
        return last
    status = folder.read_record().get("status")
    ended = f"a run that {status}" if status else "a run with no checkpoint to resume from"
    raise ConfigError(f"trainer.default_root_dir: {folder.root} already holds a run ({folder.config.name}), {ended}; "
                      "choose another folder, or pass --ckpt_path to continue from one of its checkpoints")


def resumable_checkpoint(folder: RunFolder) -> Path | None:
    """last.ckpt of an unfinished run in `folder`, else None (a fresh start), without refusing anything: what a
    process started beside the job's first takes, while the first may already be writing the folder."""
    status = folder.read_record().get("status") if folder.holds_run() else None
    unfinished = status in (None, "interrupted", "preempted", "failed")
    # last.ckpt: a file, or a folder of shards
    return folder.last_checkpoint if unfinished and folder.last_checkpoint.exists() else None


# Rank variables of the launchers that start a job's processes themselves: torchrun, SLURM's srun, and Lightning's
# own multi-node convention (NODE_RANK on each node's launch).
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")


def first_process_of_job() -> bool:
    """Whether this process is the first of its job (rank 0 of node 0), by the launchers' variables."""
    return all(int(os.environ.get(name) or 0) == 0 for name in RANK_VARIABLES)


class LitFinetuneCLI(LightningCLI):
    """LightningCLI over every task and data module, with one resumable folder per run.

    The task and data classes are chosen by `class_path`; a killed or preempted run resumes in its folder with the
    same command."""

    def __init__(self, args=None, run: bool = True):
        self.lock: RunLock | None = None
        self.started = time.time()
        self.secrets: set[str] = set()
        self.requested: dict | None = None  # the command's flat config, before Lightning merges a checkpoint's
        strict = {"exit_on_error": False}  # parse errors reach `main`, which prints them in one line
        try:
            super().__init__(TaskModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                             save_config_callback=RunConfig, auto_configure_optimizers=False,
                             seed_everything_default=42, args=args, run=run,
                             parser_kwargs={"description": "Pretrain and fine-tune Transformer language models.",
                                            **strict, **dict.fromkeys(("fit", "validate", "test", "predict"), strict)})
        finally:  # however the command ended; the processes it launched are done too
            os.environ.pop(RESUME_ENV, None)
            if self.lock is not None:
                self.lock.release()

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.model_name_or_path")
        parser.link_arguments("model.init_args.trust_remote_code", "data.init_args.trust_remote_code")
        parser.link_arguments("model.init_args.tokenizer_name_or_path", "data.init_args.tokenizer_name_or_path")
        parser.add_argument("--resume_changes", choices=["refuse", "allow"], default="refuse",
                            help="On resume, settings that differ from the checkpoint's (other than run length, "
                                 "devices, callbacks and loggers) are refused; `allow` resumes anyway.")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        self.secrets = secret_values(config)  # before any is blanked below
        self.save_config_kwargs["requested"] = self.requested
        trainer = config.trainer
        check_trainer_numbers(trainer)
        if not trainer.default_root_dir:
            sources = config.get("config") or []
            stem = Path(str(sources[-1])).stem if sources else self.subcommand or "run"
            trainer.default_root_dir = f"runs/{stem}-{datetime.now():%Y%m%d-%H%M%S}"
        folder = RunFolder(str(trainer.default_root_dir))
        run_dir = folder.root
        launched = os.environ.get(LOCKED_ENV) == str(run_dir.resolve())  # a rank of a run started here
        # A process that torchrun or srun started beside the job's first (on this node or another): the first one
        # holds the folder and chooses; this one starts or resumes as the folder says, and never refuses it.
        beside = not launched and not first_process_of_job()
        if self.subcommand is not None and not launched and not beside:
            self.lock = RunLock(folder)
            self.lock.acquire()  # before anything below writes into the folder
        checkpoint = None
        if self.subcommand == "fit":
            if not config.get("ckpt_path"):
                # Checked before any logger or callback touches the folder, so the earlier run stays intact. The
                # ranks DDP launches take the launching process's choice: by then the folder has changed.
                last = os.environ.get(RESUME_ENV) if launched else \
                    resumable_checkpoint(folder) if beside else checkpoint_to_resume(folder)
                if last:
                    if not launched:
                        print(f"Resuming the unfinished run in {run_dir} from {last}", file=sys.stderr, flush=True)
                    config = self.resume_from(str(last))
                    trainer = config.trainer
            os.environ[RESUME_ENV] = str(config.get("ckpt_path") or "")
            if config.get("ckpt_path"):
                checkpoint = read_checkpoint(config.ckpt_path, mmap=True, weights=False)
                check_shard_count(Path(config.ckpt_path), trainer)
                self.check_resume_settings(config, checkpoint)
        resuming = checkpoint is not None
        if trainer.enable_progress_bar is False and trainer.callbacks:
            # The configs name a TQDMProgressBar for its refresh rate; turning bars off drops it instead of failing.
            trainer.callbacks = [c for c in trainer.callbacks if not names_subclass(c, ProgressBar)]
        loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
        loggers = [logger for logger in loggers if isinstance(logger, Namespace)]
        if trainer.logger is not False and not any(names_subclass(lg, CSVLogger) for lg in loggers):
            # Always keep a plain local record first: it also makes the run folder Lightning's log_dir.
            csv_logger = Namespace(class_path=f"{RunCSVLogger.__module__}.{RunCSVLogger.__qualname__}",
                                   init_args=Namespace(save_dir=str(run_dir)))
            loggers.insert(0, csv_logger)
            trainer.logger = loggers
        for logger in loggers:
            if logger.init_args.get("save_dir") in (None, "."):
                logger.init_args.save_dir = str(run_dir)
            if names_subclass(logger, RunCSVLogger) and resuming:
                logger.init_args.resume_step = int(checkpoint.get("global_step", 0))
            if names_subclass(logger, WandbLogger):
                logger.init_args.name = logger.init_args.get("name") or run_dir.name
                if logger.init_args.get("config"):  # W&B would record it as given
                    logger.init_args.config = redact(logger.init_args.config)
                if os.environ.get("WANDB_RUN_GROUP"):  # W&B's own variable, set e.g. by `lit-finetune sweep`
                    logger.init_args.group = os.environ["WANDB_RUN_GROUP"]
                previous_id = checkpoint.get(WANDB_ID_KEY) if resuming else None
                if previous_id and not logger.init_args.get("id"):
                    # A resume continues the checkpoint's W&B run, from whichever folder.
                    logger.init_args.id = previous_id
                    logger.init_args.resume = "allow"
        if resuming or self.subcommand != "fit":
            self.save_config_kwargs["overwrite"] = True  # resuming, or evaluating into the run's own folder

    def resume_from(self, ckpt_path: str) -> Namespace:
        """The subcommand's config resuming from `ckpt_path`, merged as Lightning merges a --ckpt_path given on the
        command line (the model's settings from the checkpoint)."""
        self.config[self.subcommand].ckpt_path = ckpt_path
        self._parse_ckpt_path()
        self.save_config_kwargs["requested"] = self.requested
        return self.config[self.subcommand]

    def _parse_ckpt_path(self) -> None:
        # Lightning replaces the model's settings with the checkpoint's here, silently: keep what the command asked
        # for, to compare with the checkpoint.
        if self.config.get("subcommand"):
            config = self.config[self.config.subcommand]
            if self.config.subcommand == "fit" and config.get("ckpt_path") == "last":
                # Lightning's name for the newest checkpoint: a fit resumes its folder's unfinished run anyway (and
                # starts afresh when there is none), so a requeued job's command can always say it.
                config.ckpt_path = None
            self.requested = flat_config(redact(config))
            if config.get("ckpt_path"):
                # One line for a missing, corrupted or crafted file.
                read_checkpoint(config.ckpt_path, mmap=True, weights=False)
        super()._parse_ckpt_path()
        if self.config.get("subcommand"):
            # What the data decides (the label set) is left to this run's data, so that the task module can tell a
            # checkpoint trained on other labels from a matching one, instead of building the checkpoint's.
            model = self.config[self.config.subcommand].get("model")
            task = config_class(model) if isinstance(model, Namespace) else None
            for name in getattr(task, "from_data", ()):
                if self.requested.get(f"model.{name}") is None and model.get(f"init_args.{name}") is not None:
                    model[f"init_args.{name}"] = None

    def check_resume_settings(self, config: Namespace, checkpoint: dict) -> None:
        """Refuse a resume whose settings differ from the checkpoint's in more than run length, devices, callbacks
        and loggers (those are printed), unless --resume_changes=allow.

        Raises: ConfigError listing the differing keys, before anything in the run folder changes.
        """
        saved = checkpoint.get(CONFIG_KEY)
        if not saved:
            return  # a checkpoint from before configs were kept in them
        changes = {k: v for k, v in changed_settings(saved, self.requested or flat_config(redact(config))).items()
                   if k not in ("ckpt_path", "config", "resume_changes")}  # how a resume is asked for
        refused = {k: v for k, v in changes.items() if not is_resumable_change(k)}
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in (refused or changes).items())
        if refused and config.get("resume_changes") != "allow":
            raise ConfigError(f"--ckpt_path: {config.ckpt_path} was trained with other settings ({shown}); resuming "
                              "would mix two runs. Start a new run in another trainer.default_root_dir (e.g. from "
                              "its export/), or pass --resume_changes=allow to resume anyway")
        if changes:
            print(f"Resuming with changed settings: {shown}", file=sys.stderr, flush=True)

    def start_wandb_runs(self) -> None:
        """Start the W&B runs now, while the command line W&B records has its secrets blanked (Lightning would
        start them inside fit, where DDP still needs the real command line to launch its ranks)."""
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger):
                with argv_without(self.secrets):
                    _ = logger.experiment

    def before_fit(self) -> None:
        self.started = time.time()
        strategy = self.trainer.strategy
        if type(getattr(strategy, "checkpoint_io", None)) is TorchCheckpointIO:  # single-file checkpoints
            strategy.checkpoint_io = AtomicCheckpointIO()
        self.start_wandb_runs()

    def before_validate(self) -> None:
        self.start_wandb_runs()

    def before_test(self) -> None:
        self.start_wandb_runs()

    def before_predict(self) -> None:
        self.start_wandb_runs()

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except Exception:
            if subcommand == "fit" and self.trainer.is_global_zero and RunFolder.of(self.trainer).holds_run():
                write_run_record(self.trainer, self.started, status="failed")  # a run that started, then failed
            raise

    def after_fit(self) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        write_run_record(trainer, self.started)
        lines = ["", f"Run folder: {trainer.default_root_dir}"]
        val = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("val/")}
        if val:
            lines.append("Validation: " + "  ".join(f"{k}={v:.4f}" for k, v in val.items()))
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_path:
            lines.append(f"Best checkpoint: {trainer.checkpoint_callback.best_model_path}")
        for callback in trainer.callbacks:
            if isinstance(callback, ExportBestModel) and callback.exported_to:
                lines.append(f"Exported model (Hugging Face folder): {callback.exported_to}")
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                lines.append(f"Metrics per epoch (CSV): {RunFolder(logger.log_dir).metrics}")
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                mode = getattr(getattr(run, "settings", None), "mode", "disabled")
                if mode == "offline":
                    lines.append(f"W&B run (offline): {Path(run.dir).parent}  -> upload with `wandb sync "
                                 f"{Path(run.dir).parent}`")
                elif mode != "disabled":
                    lines.append(f"W&B run: {run.url}")
        print("\n".join(lines), flush=True)
