"""The `lit-finetune` command as users run it: shipped configs, help, errors, and a whole fit/predict/export cycle."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import wandb
from helpers import REPO, logged_values, metrics_rows, one_line_error, run_cli, tiny_args, wandb_records
from jsonargparse import Namespace
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from transformers import pipeline

from lit_finetune import commands
from lit_finetune.callbacks import ExportBestModel, PredictionWriter, RunCheckpoint
from lit_finetune.commands import fit as cli
from lit_finetune.commands.fit import LitFinetuneCLI
from lit_finetune.errors import ConfigError
from lit_finetune.training.loggers import RunCSVLogger

# Strategy fragments (configs/strategies) hold no model class of their own; tests/test_strategy_configs.py composes them.
SHIPPED = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.parent.name != "strategies")


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_shipped_config_builds_its_classes(config, tmp_path):
    """Parses against the code's signatures and instantiates (models and data load lazily, so this is offline)."""
    parsed = LitFinetuneCLI(args=["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    callbacks = {type(c) for c in parsed.trainer.callbacks}
    assert {RunCheckpoint, LearningRateMonitor, ExportBestModel} <= callbacks
    if config.parent.name == "classification":
        assert {EarlyStopping, PredictionWriter} <= callbacks
    assert [type(lg) for lg in parsed.trainer.loggers] == [RunCSVLogger, WandbLogger]
    assert Path(parsed.trainer.log_dir) == tmp_path  # everything of a run lands in one folder
    assert parsed.datamodule.hparams.model_name_or_path == parsed.model.hparams.model_name_or_path


def test_top_level_help_lists_every_command_and_each_command_has_its_own(tmp_path, capsys):
    result = run_cli("--help")
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(commands.COMMANDS) and len(listed) == 10
    for name, command in commands.COMMANDS.items():
        assert f"  {name:<15}  {command.summary}" in result.stdout  # one whole line each
    unknown = run_cli("fits", check=False)
    assert unknown.returncode == 2 and "unknown command 'fits'" in unknown.stderr and "Traceback" not in unknown.stderr
    commands.main(["quickstart-data", f"--output_dir={tmp_path}", "--seed=1"])  # a function command, in-process
    assert "train:" in capsys.readouterr().out and (tmp_path / "train.csv").is_file()


def cli_output(capsys, args: list[str]) -> str:
    """What the `lit-finetune` entry point prints for `args` (help and --print_config exit 0), run in this process:
    the subprocess tests below and in the other files pay the import of Lightning for the rest."""
    with pytest.raises(SystemExit) as exit_info:
        commands.main(args)
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def test_help_documents_each_knob(capsys):
    out = cli_output(capsys, ["fit", "--data.help", "lit_finetune.data.TextClassificationDataModule"])
    assert "Sample training batches of similar length" in out
    out = cli_output(capsys, ["fit", "--model.help", "lit_finetune.tasks.SequenceClassificationModule"])
    for text in ("Peak learning rate of AdamW", "Cross-entropy label smoothing", "Linear warmup, as a fraction",
                 "Also learn from a fine-tuned classifier"):
        assert text in out


def test_print_config_shows_every_knob(capsys):
    out = cli_output(capsys, ["fit", "--config", "configs/classification/quickstart.yaml", "--print_config"])
    for key in ("learning_rate:", "weight_decay:", "label_smoothing:", "group_by_length:", "max_length:",
                "validation_fraction:", "gradient_clip_val:", "precision:", "monitor: val/acc", "distillation:",
                "labels:"):
        assert key in out


def test_unknown_config_key_is_named(capsys):
    line = one_line_error(capsys, ["fit", "--config", "configs/classification/quickstart.yaml",
                                   "--model.init_args.learnin_rate=0.1"])
    assert "learnin_rate" in line


def test_fit_predict_export_pipeline_end_to_end(tmp_path, tiny_data):
    """The full user path: fit in a subprocess (W&B offline), predict from the best checkpoint and export (the same
    entry point, in this process), pipeline."""
    run_dir = tmp_path / "run"
    fit = run_cli("fit", *tiny_args(tiny_data, run_dir, "--trainer.max_epochs=8"), env={"WANDB_MODE": ""})
    assert "Validation: val/acc=1.0000" in fit.stdout
    assert f"Exported model (Hugging Face folder): {run_dir}/export" in fit.stdout
    assert "W&B run (offline)" in fit.stdout and list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    [best] = (run_dir / "checkpoints").glob("best-*.ckpt")

    commands.main(["predict", *tiny_args(tiny_data, tmp_path / "predict"), "--ckpt_path", str(best)])  # in-process
    rows = [json.loads(line) for line in (tmp_path / "predict" / "predictions.jsonl").open()]
    assert [r["id"] for r in rows] == [f"test-{i}" for i in range(16)]
    assert {r["label"] for r in rows} == {"bad", "good"}

    commands.main(["export", "--ckpt_path", str(best), "--output_dir", str(tmp_path / "exported")])  # in-process
    classifier = pipeline("text-classification", model=str(tmp_path / "exported"))
    texts = [line for line in (tiny_data["test"]).read_text().splitlines()[1:]]
    expected = [r["label"] for r in rows]
    predicted = [p["label"] for p in classifier([t.split(",")[1] for t in texts])]
    assert predicted == expected


def test_bad_input_exits_with_one_clear_line(tmp_path, tiny_data, capsys):
    """In this process (the `fits` subprocess above shows the exit status and stderr a shell sees)."""
    missing = {**tiny_data, "validation": tmp_path / "nope.csv"}
    line = one_line_error(capsys, ["fit", *tiny_args(missing, tmp_path / "run")])
    assert line.startswith(f"lit-finetune: error: data.validation_file: file {tmp_path / 'nope.csv'} does not exist")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_progress_bar_off_and_a_csv_only_record(tmp_path, tiny_data):
    """The configs name a TQDMProgressBar and W&B: both can be switched off from the command line."""
    run_dir = tmp_path / "run"
    cli = LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, run_dir, "--trainer.enable_progress_bar=false",
                                                 "--trainer.logger=lit_finetune.training.loggers.RunCSVLogger")])
    assert cli.trainer.progress_bar_callback is None
    assert [type(lg) for lg in cli.trainer.loggers] == [RunCSVLogger]
    assert len(logged_values(run_dir, "val/acc")) == 2 and not (run_dir / "wandb").exists()


def test_existing_run_folder_is_never_overwritten(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, run_dir)])
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and "wandb" not in p.parts}
    with pytest.raises(ConfigError, match=r"trainer.default_root_dir: .*run already holds a run \(config.yaml\)"):
        LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, run_dir)])
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before


def test_resuming_into_the_run_folder_keeps_its_metrics(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, run_dir, "--trainer.max_epochs=1")])
    LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, run_dir, "--trainer.max_epochs=2"),
                         "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    assert sorted({r["epoch"] for r in metrics_rows(run_dir) if r["val/acc"]}) == ["0", "1"]


def test_secrets_never_reach_run_files(tmp_path, tiny_data, monkeypatch):
    secret = "local-0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, run_dir, "--trainer.logger.init_args.notes=token check")])
    wandb.finish()  # flush the offline run file
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and any(p.suffix == ".wandb" for p in files)
    assert all(secret.encode() not in p.read_bytes() for p in files)


def test_secrets_in_config_values_reach_no_file_of_the_run(tmp_path, tiny_data):
    """A secret under a W&B logger's config and in the command line, and credentials in the environment: no file of
    the run folder holds any of them, W&B's run file, debug log and recorded command line included."""
    given, env_key, env_token = ("local-given0123456789abcdef", "local-envkey0123456789abcdef0123456789abcd",
                                 "hf_envtoken0123456789abcdef")
    run_dir = tmp_path / "run"
    run_cli("fit", *tiny_args(tiny_data, run_dir, "--trainer.max_epochs=1",
                              f'--trainer.logger.init_args.config={{"api_key": "{given}", "note": "kept"}}'),
            env={"WANDB_MODE": "offline", "WANDB_API_KEY": env_key, "HF_TOKEN": env_token})
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and any(p.name == "debug.log" for p in files)
    assert any(b"kept" in p.read_bytes() for p in files if p.suffix == ".wandb")  # the config did reach W&B
    for secret in (given, env_key, env_token):
        assert not [p for p in files if secret.encode() in p.read_bytes()], secret


def test_redact_blanks_secret_looking_keys():
    config = Namespace(trainer=Namespace(logger=[Namespace(init_args=Namespace(api_key="k", project="p"))]),
                       data=Namespace(hub_token="t", max_length=8, max_tokens=512, tokenizer_name="x"))
    redacted = cli.redact(config)
    assert redacted.trainer.logger[0].init_args.api_key == "<redacted>" and redacted.data.hub_token == "<redacted>"
    assert redacted.trainer.logger[0].init_args.project == "p" and redacted.data.max_length == 8
    assert redacted.data.max_tokens == 512 and redacted.data.tokenizer_name == "x"
    assert config.data.hub_token == "t"  # the live config is untouched


def test_wandb_goes_offline_without_credentials_and_respects_wandb_mode(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    commands.default_wandb_mode()
    assert os.environ["WANDB_MODE"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    commands.default_wandb_mode()
    assert os.environ["WANDB_MODE"] == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password x\n")
    (tmp_path / ".netrc").chmod(0o600)
    commands.default_wandb_mode()
    assert "WANDB_MODE" not in os.environ


HEAP_PROBE = """
import os, sys, torch
from lit_finetune.commands import pin_mmap_threshold
def rss_mib():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["VmRSS"].split()[0]) / 1024
if sys.argv[1] == "pinned":
    os.environ["LIT_FINETUNE_MMAP_THRESHOLD"] = str(4 * 2**20)
    assert pin_mmap_threshold()
n = 6 * 2**20 // 4  # 6 MiB blocks, above the pinned threshold
first = torch.ones(n)
del first  # unpinned, glibc now serves blocks of this size from its heap
blocks = [torch.ones(n) for _ in range(40)]
before = rss_mib()
del blocks[:-1]  # the last block stays, at the top of the heap
print(before - rss_mib())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_pinned_mmap_threshold_gives_freed_activation_sized_blocks_back():
    """What `lit-finetune` sets at start with LIT_FINETUNE_MMAP_THRESHOLD (4 MiB here): freed blocks above it leave
    the process (unpinned, glibc keeps them in its heap below a block still in use)."""
    freed = {mode: float(subprocess.run([sys.executable, "-c", HEAP_PROBE, mode], capture_output=True, text=True,
                                        check=True).stdout) for mode in ("unpinned", "pinned")}
    assert freed["pinned"] > 200 and freed["unpinned"] < 50, freed  # 39 blocks of 6 MiB = 234 MiB


def test_mmap_threshold_setting_is_checked_and_can_be_off(monkeypatch, capsys):
    monkeypatch.setenv("LIT_FINETUNE_MMAP_THRESHOLD", "4MB")
    assert one_line_error(capsys, ["--help"]) == \
        "lit-finetune: error: LIT_FINETUNE_MMAP_THRESHOLD: expected a number of bytes or off, got '4MB'"
    monkeypatch.setenv("LIT_FINETUNE_MMAP_THRESHOLD", "off")
    assert commands.pin_mmap_threshold() is False
    monkeypatch.delenv("LIT_FINETUNE_MMAP_THRESHOLD")
    assert commands.pin_mmap_threshold() is False  # off unless asked


def test_wandb_run_gets_sweep_style_keys_and_best_values(tmp_path, tiny_data):
    """Config keys match the sweep files' (model.learning_rate); the summary keeps each monitored metric's best."""
    early_stop_on_noisy_loss = ('--trainer.callbacks+={"class_path": "EarlyStopping", "init_args": '
                                '{"monitor": "train/loss_step", "mode": "min", "patience": 100}}')
    run_dir = tmp_path / "run"
    LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, run_dir, "--trainer.log_every_n_steps=1",
                                           early_stop_on_noisy_loss)])
    run = wandb.run
    assert run.config["model.learning_rate"] == 3e-3 and run.config["data.batch_size"] == 8
    losses = logged_values(run_dir, "train/loss_step")
    assert dict(run.summary["train/loss_step"]) == {"min": pytest.approx(min(losses))} and min(losses) != losses[-1]
    assert dict(run.summary["val/acc"]) == {"max": pytest.approx(max(logged_values(run_dir, "val/acc")))}
    wandb.finish()
    # What W&B stores (and the runs table shows): each knob once, by its dotted key.
    keys = {item.key or ".".join(item.nested_key) for r in wandb_records(run_dir)
            for item in (r.config.update if r.WhichOneof("record_type") == "config" else
                         r.run.config.update if r.WhichOneof("record_type") == "run" else [])}
    keys = {k for k in keys if not k.startswith("_wandb")}
    assert {"model.learning_rate", "data.batch_size", "model.model_name_or_path"} <= keys
    bare = {k for k in keys if "." not in k} & {k.rpartition(".")[2] for k in keys if "." in k}
    assert not bare and "_instantiator" not in keys, sorted(bare)


def test_log_model_logs_checkpoints_and_the_export_as_wandb_artifacts(tmp_path, tiny_data):
    wandb_logger = tmp_path / "wandb_logger.yaml"
    wandb_logger.write_text("trainer:\n  logger:\n    class_path: WandbLogger\n"
                            "    init_args: {project: lit-finetune, log_model: true}\n")
    run_dir = tmp_path / "run"
    LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, run_dir), "--config", str(wandb_logger)])
    run_id = wandb.run.id
    wandb.finish()
    artifacts = [r.artifact for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "artifact"]
    by_name = {a.name: a for a in artifacts}
    assert set(by_name) == {f"model-{run_id}", f"hf-model-{run_id}"} and {a.type for a in artifacts} == {"model"}
    exported = {entry.path for entry in by_name[f"hf-model-{run_id}"].manifest.contents}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= exported
    assert set(by_name[f"hf-model-{run_id}"].aliases) == {"latest", "best"}
    assert {e.path for e in by_name[f"model-{run_id}"].manifest.contents} == {"model.ckpt"}


def test_resuming_in_the_run_folder_continues_the_wandb_run(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, run_dir, "--trainer.max_epochs=1")])
    first_id = wandb.run.id
    wandb.finish()
    # The id travels in the checkpoint, so a resume from any folder continues the same W&B run.
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["wandb_run_id"] == first_id
    LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, run_dir, "--trainer.max_epochs=2"),
                         "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    assert wandb.run.id == first_id
    wandb.finish()
    # Each start writes offline-run-<time>-<id>[-N]/run-<id>.wandb; the id is the same in both.
    assert {p.stem[len("run-"):] for p in (run_dir / "wandb").glob("offline-run-*/run-*.wandb")} == {first_id}


