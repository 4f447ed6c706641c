"""The `lit-finetune` command: LightningCLI's fit/validate/test/predict, plus `export`.

Every run writes into one folder (``trainer.default_root_dir``, by default ``runs/<config>-<time>``): config.yaml,
metrics.csv, checkpoints/, export/, predictions and the W&B run.
"""

from __future__ import annotations

import json
import netrc
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path

from jsonargparse import CLI, Namespace
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from lit_finetune.data.tokenizer_training import train_tokenizer
from lit_finetune.deploy import deploy
from lit_finetune.errors import ConfigError, LitFinetuneError
from lit_finetune.tasks import TaskModule
from lit_finetune.training.callbacks import ExportBestModel, StopOnRequest
from lit_finetune.training.export import export_checkpoint

# Key names that hold credentials (api_key, hub_token, client_secret, ...), not knobs like max_tokens.
SECRET_KEY = re.compile(r"(^|_)(api_?key|token|secret|password|passwd)$", re.IGNORECASE)
# Function commands; `compare` and `sweep` take positional paths and have their own parsers (see main).
EXTRA_COMMANDS = {"export": export_checkpoint, "tokenizer": train_tokenizer, "deploy": deploy}


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def default_wandb_mode() -> None:
    """Go offline when no W&B credentials exist, so a run never waits on a login prompt; WANDB_MODE always wins."""
    if not os.environ.get("WANDB_MODE") and not wandb_has_credentials():
        os.environ["WANDB_MODE"] = "offline"


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


def flat_config(config: Namespace) -> dict:
    """Dotted keys as the CLI and sweep files write them (``model.learning_rate``, without ``init_args``), so W&B's
    table and parallel-coordinates plots line up with the sweep parameters."""
    plain = (int, float, str, bool, type(None))
    return {key.replace(".init_args.", "."): value if isinstance(value, plain) else str(value)
            for key, value in config.items(branches=False)}


def previous_wandb_run_id(run_dir: str) -> str | None:
    """The W&B run id of the run that last wrote this folder: wandb/latest-run/run-<id>.wandb (the folder's own name
    may carry a -N suffix when two starts fall in the same second)."""
    files = sorted((Path(run_dir) / "wandb" / "latest-run").glob("run-*.wandb"))
    return files[0].stem[len("run-"):] if files else None


def write_run_record(trainer, started: float) -> None:
    """run.json: how the run ended, how long it took and its best monitored value, for `lit-finetune compare`."""
    checkpoint = trainer.checkpoint_callback
    stopped = any(isinstance(cb, StopOnRequest) and cb.stopped for cb in trainer.callbacks)
    record = {"status": "interrupted" if trainer.interrupted else "stopped" if stopped else "finished",
              "started": datetime.fromtimestamp(started).isoformat(timespec="seconds"),
              "wall_s": round(time.time() - started, 1), "global_step": trainer.global_step}
    if checkpoint is not None and checkpoint.monitor and checkpoint.best_model_score is not None:
        record["best"] = {"metric": checkpoint.monitor, "mode": checkpoint.mode,
                          "value": float(checkpoint.best_model_score), "checkpoint": checkpoint.best_model_path}
    (Path(trainer.default_root_dir) / "run.json").write_text(json.dumps(record, indent=2) + "\n")


class RunConfig(SaveConfigCallback):
    """Saves the resolved config (secrets redacted) in the run folder and attaches it to the W&B run with flat
    dotted keys."""

    def __init__(self, parser, config, *args, **kwargs):
        super().__init__(parser, redact(config), *args, **kwargs)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        monitored = {cb.monitor: cb.mode for cb in trainer.callbacks
                     if isinstance(cb, (ModelCheckpoint, EarlyStopping)) and cb.monitor}
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(flat_config(self.config), allow_val_change=True)
                for metric, mode in monitored.items():  # the run summary shows the best value, not the last
                    logger.experiment.define_metric(metric, summary=mode)


class LitFinetuneCLI(LightningCLI):
    """LightningCLI with the task and data classes chosen by `class_path`, and one folder per run."""

    def __init__(self, args=None, run: bool = True):
        super().__init__(TaskModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                         save_config_callback=RunConfig, auto_configure_optimizers=False,
                         seed_everything_default=42, args=args, run=run,
                         parser_kwargs={"description": "Pretrain and fine-tune Transformer language models."})

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.model_name_or_path")
        parser.link_arguments("model.init_args.trust_remote_code", "data.init_args.trust_remote_code")
        parser.link_arguments("model.init_args.tokenizer_name_or_path", "data.init_args.tokenizer_name_or_path")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        if not trainer.default_root_dir:
            sources = config.get("config") or []
            stem = Path(str(sources[-1])).stem if sources else self.subcommand or "run"
            trainer.default_root_dir = f"runs/{stem}-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir = str(trainer.default_root_dir)
        resuming = bool(config.get("ckpt_path"))
        if self.subcommand == "fit" and not resuming and (Path(run_dir) / "config.yaml").is_file():
            # Checked before any logger or callback touches the folder, so the earlier run stays intact.
            raise ConfigError(f"trainer.default_root_dir: {run_dir} already holds a run (config.yaml); choose "
                              "another folder, or pass --ckpt_path to resume that run")
        if trainer.enable_progress_bar is False and trainer.callbacks:
            # The configs name a TQDMProgressBar for its refresh rate; turning bars off drops it instead of failing.
            trainer.callbacks = [c for c in trainer.callbacks
                                 if not (isinstance(c, Namespace) and c.class_path.endswith("ProgressBar"))]
        loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
        loggers = [logger for logger in loggers if isinstance(logger, Namespace)]
        if trainer.logger is not False and not any(lg.class_path.endswith("CSVLogger") for lg in loggers):
            # Always keep a plain local record first: it also makes the run folder Lightning's log_dir.
            csv_logger = Namespace(class_path="lit_finetune.training.loggers.RunCSVLogger",
                                   init_args=Namespace(save_dir=run_dir))
            loggers.insert(0, csv_logger)
            trainer.logger = loggers
        for logger in loggers:
            if logger.init_args.get("save_dir") in (None, "."):
                logger.init_args.save_dir = run_dir
            if logger.class_path.endswith("WandbLogger"):
                logger.init_args.name = logger.init_args.get("name") or Path(run_dir).name
                if os.environ.get("WANDB_RUN_GROUP"):  # W&B's own variable, set e.g. by `lit-finetune sweep`
                    logger.init_args.group = os.environ["WANDB_RUN_GROUP"]
                previous_id = previous_wandb_run_id(run_dir) if resuming else None
                if previous_id and not logger.init_args.get("id"):
                    # Resuming in the same folder continues the same W&B run.
                    logger.init_args.id = previous_id
                    logger.init_args.resume = "allow"
        if resuming or self.subcommand != "fit":
            self.save_config_kwargs["overwrite"] = True  # resuming, or evaluating into the run's own folder

    def before_fit(self) -> None:
        self.started = time.time()

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
                lines.append(f"Metrics per epoch (CSV): {Path(logger.log_dir) / 'metrics.csv'}")
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                mode = getattr(getattr(run, "settings", None), "mode", "disabled")
                if mode == "offline":
                    lines.append(f"W&B run (offline): {Path(run.dir).parent}  -> upload with `wandb sync "
                                 f"{Path(run.dir).parent}`")
                elif mode != "disabled":
                    lines.append(f"W&B run: {run.url}")
        print("\n".join(lines), flush=True)


def main(args: list[str] | None = None) -> None:
    """Entry point of the `lit-finetune` console script."""
    argv = sys.argv[1:] if args is None else args
    default_wandb_mode()
    try:
        if argv and argv[0] == "compare":
            from lit_finetune.compare import main as compare

            compare(argv[1:])
        elif argv and argv[0] == "sweep":
            from lit_finetune.sweep import main as sweep

            sweep(argv[1:])
        elif argv and argv[0] in EXTRA_COMMANDS:
            CLI(EXTRA_COMMANDS[argv[0]], args=argv[1:], as_positional=False, prog=f"lit-finetune {argv[0]}")
        else:
            LitFinetuneCLI(args=args)
    except LitFinetuneError as err:
        print(f"lit-finetune: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
