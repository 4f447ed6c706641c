"""Faults a run meets on a cluster, injected into the real CLI process: kill -9, SIGTERM / SIGINT / SIGUSR1 at a
chosen step, a full disk (a real file-size limit), NaNs, two starts in one folder, crafted and corrupted
checkpoints. Each must lose nothing, and the same command must resume to what an uninterrupted run gives."""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, free_port, metrics_rows, one_line_error, run_cli, shell_env, tiny_args, tiny_splits
from safetensors.torch import load_file

from lit_finetune import commands
from lit_finetune.commands.fit import LitFinetuneCLI

FAULTS_ENV = {"PYTHONPATH": str(REPO / "tests"), "WANDB_MODE": "disabled"}  # tests/faults.py, importable there
# The tests that read the uninterrupted reference run share a worker, so it is made once.
ON_THE_REFERENCE_WORKER = pytest.mark.xdist_group("faults")


def fault_config(folder: Path, signals: dict[int, str] | None = None, early_stopping: bool = True) -> Path:
    """Callbacks of a fault run: RunCheckpoint with last.ckpt every 3 steps, the export, early stopping, and real
    signals the process sends itself at chosen steps (each once: the same command run again goes on)."""
    callbacks = [
        {"class_path": "lit_finetune.callbacks.RunCheckpoint",
         "init_args": {"monitor": "val/acc", "mode": "max", "save_top_k": 1, "last_every_n_steps": 3,
                       "filename": "best-step{step}", "auto_insert_metric_name": False}},
        {"class_path": "lit_finetune.callbacks.ExportBestModel"},
    ]
    if early_stopping:
        callbacks.append({"class_path": "lightning.pytorch.callbacks.EarlyStopping",
                          "init_args": {"monitor": "val/acc", "mode": "max", "patience": 3}})
    if signals:
        callbacks.append({"class_path": "faults.SignalAt", "init_args": {"signals": signals,
                                                                         "state_dir": str(folder)}})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"faults-{len(list(folder.glob('faults-*.yaml')))}.yaml"
    path.write_text(json.dumps({"trainer": {"callbacks": callbacks}}))
    return path


def fault_args(data: dict, run_dir: Path, config: Path, *extra: str, wandb: bool = False) -> list[str]:
    """Two epochs of 8 batches with a validation every half epoch, dropout on, CSV metrics only (or W&B too)."""
    csv_only = [] if wandb else ["--trainer.logger=lit_finetune.training.loggers.RunCSVLogger"]
    return ["fit", *tiny_args(data, run_dir, "--config", str(config), "--trainer.val_check_interval=0.5", *csv_only,
                              "--trainer.enable_progress_bar=false", "--data.init_args.test_file=null", *extra)]


def ckpt_step(path: Path) -> int:
    return torch.load(path, weights_only=True, mmap=True)["global_step"]


def final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A finished run of the fault recipe, and its data: the reference, and a folder for tests that read a run."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    data = tiny_splits(folder / "data")
    run_dir = folder / "run"
    run_cli(*fault_args(data, run_dir, fault_config(folder)), env=FAULTS_ENV)
    return data, run_dir


@ON_THE_REFERENCE_WORKER
def test_interrupted_preempted_and_killed_run_resumes_exactly_with_the_same_command(tmp_path, uninterrupted):
    """Ctrl-C at step 2, SIGUSR1 at step 9, kill -9 at step 13, each followed by the same command: the run ends
    with the weights and metrics of the uninterrupted one, each step once in metrics.csv. The command says
    ``--ckpt_path last``, as a requeued cluster job's would: the first time there is none, and it starts afresh."""
    data, reference = uninterrupted
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    args = [*fault_args(data, run_dir, fault_config(tmp_path, {2: "SIGINT", 9: "SIGUSR1", 13: "SIGKILL"})),
            "--ckpt_path=last"]
    for code, status, saved_at in ((130, "interrupted", 3), (138, "preempted", 10), (-signal.SIGKILL, None, 12)):
        result = run_cli(*args, env=FAULTS_ENV, check=False)
        assert result.returncode == code, result.stderr[-2000:]
        assert ckpt_step(last) == saved_at  # signals: their own step; kill -9: the latest save (a validation's)
        if status:
            assert record(run_dir)["status"] == status and record(run_dir)["global_step"] == saved_at
            assert "Run the same command to resume" in result.stderr
        else:
            assert record(run_dir)["status"] == "preempted"  # what the last graceful stop wrote
    final = run_cli(*args, env=FAULTS_ENV)
    assert f"Resuming the unfinished run in {run_dir}" in final.stderr and record(run_dir)["status"] == "finished"
    steps = [r["step"] for r in metrics_rows(run_dir) if r.get("val/acc")]
    assert len(steps) == len(set(steps)) == 4  # each validation once
    rows, reference_rows = metrics_rows(run_dir), metrics_rows(reference)
    epoch_aggregates = [r["train/loss_epoch"] for r in reference_rows if r.get("train/loss_epoch")]
    assert len(epoch_aggregates) == 2 and [r["train/acc"] for r in reference_rows if r.get("train/acc")]
    assert rows == reference_rows  # every row: steps, validations and the resumed epochs' training aggregates
    ours, theirs = final_weights(run_dir), final_weights(reference)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def two_node_job(data, run_dir: Path, folder: Path, cache_dirs: tuple[Path, Path], *extra: str) -> list[str]:
    """One command launched twice, as on two nodes (NODE_RANK 0 and 1, one process each, rendezvous on loopback
    with gloo), each node with its own cache folder or both with one; the output of both launches."""
    ddp = ("--trainer.strategy=ddp", "--trainer.num_nodes=2", "--trainer.devices=1", "--data.init_args.eval_batch_size=4")
    port, launches = free_port(), []
    for node, cache in enumerate(cache_dirs):
        env = shell_env({**FAULTS_ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node)})
        args = fault_args(data, run_dir, fault_config(folder / f"node{node}", early_stopping=False), *ddp,
                          f"--data.init_args.cache_dir={cache}",
                          *extra)
        launches.append(subprocess.Popen([sys.executable, "-m", "lit_finetune", *args], cwd=REPO, env=env, text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = [launch.communicate(timeout=300)[0] for launch in launches]
    assert [launch.returncode for launch in launches] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    return outputs


@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory, offline_module):
    """A finished two-node job (2 x 1 process) with one cache folder for both nodes: its data, folder, cache and
    the output of each launch. Two processes in all, as in a one-node DDP run on two devices, which must train
    the same (the reference of the signalled DDP run below)."""
    folder = tmp_path_factory.mktemp("two-node")
    data, shared = tiny_splits(folder / "data"), folder / "shared-cache"
    outputs = two_node_job(data, folder / "run", folder, (shared, shared))
    return data, folder / "run", shared, outputs


@pytest.mark.xdist_group("two_processes")
def test_two_node_job_tokenizes_once_per_cache_and_writes_the_run_once(tmp_path, two_node_run):
    """Both nodes write into one run folder (a shared file system): only the job's first process locks it, logs
    and exports; each process validates on its half of the rows and the logged values are those of all of them.
    With one cache folder (cache_shared, the default) only that process tokenizes; with node-local caches
    (cache_shared: false) each node's first process tokenizes its own."""
    data, run_dir, shared, outputs = two_node_run
    assert sum(out.count("examples; cached in") for out in outputs) == 1
    [cached] = shared.glob("classification/*/meta.json")
    assert json.loads(cached.read_text())["tokenized_by_rank"] == 0
    assert record(run_dir)["status"] == "finished" and record(run_dir)["global_step"] == 8
    assert (run_dir / "export" / "config.json").is_file() and "Exported model" in outputs[0]
    assert "Exported model" not in outputs[1]
    # Each process saw half of the 32 validation rows; the logged values must be those of all 32.
    last_val = [r for r in metrics_rows(run_dir) if r.get("val/acc")][-1]
    ddp_val = {k: float(last_val[k]) for k in ("val/loss", "val/acc")}
    single = LitFinetuneCLI(args=["validate", *tiny_args(data, tmp_path / "single"), "--data.init_args.test_file=null",
                                  "--trainer.logger=false", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    single_val = {k: float(v) for k, v in single.trainer.callback_metrics.items() if k in ddp_val}
    assert single_val == pytest.approx(ddp_val, abs=1e-5) and len(single_val) == 2

    local = (tmp_path / "node0-cache", tmp_path / "node1-cache")
    outputs = two_node_job(data, tmp_path / "run-local", tmp_path, local, "--data.init_args.cache_shared=false")
    assert [out.count("examples; cached in") for out in outputs] == [1, 1]
    nodes = [json.loads(next(cache.glob("classification/*/meta.json")).read_text())["tokenized_on_node"]
             for cache in local]
    assert nodes == [0, 1] and record(tmp_path / "run-local")["status"] == "finished"


@pytest.mark.xdist_group("two_processes")
def test_ddp_run_signalled_on_one_rank_saves_on_both_and_resumes_exactly(tmp_path, two_node_run):
    """Under DDP (2 processes on one node, gloo) a SIGTERM that reaches rank 1 only: both ranks save at the same
    step and stop, the launcher exits 143, and the same command resumes to the weights and metrics of the
    uninterrupted two-node run (each rank takes back its own share of the epoch's training aggregates)."""
    data, reference, _, _ = two_node_run
    ddp = ("--trainer.strategy=ddp", "--trainer.devices=2", "--data.init_args.eval_batch_size=4")
    run_dir, signals = tmp_path / "run", tmp_path / "signals"
    config = fault_config(signals, {3: "SIGTERM"}, early_stopping=False)
    settings = json.loads(config.read_text())
    settings["trainer"]["callbacks"][-1]["init_args"]["rank"] = 1
    config.write_text(json.dumps(settings))
    args = fault_args(data, run_dir, config, *ddp)
    stopped = run_cli(*args, env=FAULTS_ENV, check=False)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    assert ckpt_step(run_dir / "checkpoints" / "last.ckpt") == 4
    assert record(run_dir)["status"] == "preempted" and record(run_dir)["global_step"] == 4
    assert (signals / "sent-3").read_text() == "SIGTERM"  # the signal was rank 1's, not the launcher's
    final = run_cli(*args, env=FAULTS_ENV)
    assert "Resuming the unfinished run" in final.stderr and record(run_dir)["status"] == "finished"
    rows, reference_rows = metrics_rows(run_dir), metrics_rows(reference)
    assert len([r for r in rows if r.get("train/loss_epoch")]) == 2 and rows == reference_rows
    ours, theirs = final_weights(run_dir), final_weights(reference)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_non_finite_loss_stops_at_its_step_and_a_short_run_still_validates_checkpoints_and_exports(
        tmp_path, tiny_data, capsys):
    """lr 1e6: the loss is NaN from step 1. It stops there, or, with max_bad_steps, every later step is skipped. That
    run is also shorter than an epoch (max_steps=5): it still validates after step 5, and with its weights
    unchanged since step 1 the best checkpoint stays at the first validation while last.ckpt moves on."""
    run_dir = tmp_path / "run"
    exploding = ("--model.init_args.learning_rate=1e6", "--trainer.gradient_clip_val=null", "--trainer.max_steps=5")
    line = one_line_error(capsys, fault_args(tiny_data, run_dir, fault_config(tmp_path), *exploding))
    assert "training step 1: the loss is nan" in line and "model.max_bad_steps" in line
    assert not (run_dir / "export").exists() and not list(run_dir.rglob("*.ckpt"))
    assert record(run_dir)["status"] == "failed"

    skipping = tmp_path / "skipping"
    commands.main(fault_args(tiny_data, skipping, fault_config(tmp_path), *exploding, "--trainer.log_every_n_steps=1",
                             "--model.init_args.max_bad_steps=100"))
    skipped = [float(r["train/skipped_steps"]) for r in metrics_rows(skipping) if r.get("train/skipped_steps")]
    assert skipped == [1.0, 2.0, 3.0, 4.0]  # every step after the first
    vals = [int(r["step"]) for r in metrics_rows(skipping) if r.get("val/acc")]
    assert vals == [3, 4]  # the half-epoch validation, then one after the last step
    [best] = (skipping / "checkpoints").glob("best-*.ckpt")
    assert ckpt_step(best) == 4 and ckpt_step(skipping / "checkpoints" / "last.ckpt") == 5
    assert record(skipping)["status"] == "finished"
    exported = load_file(skipping / "export" / "model.safetensors")
    assert exported and all(torch.isfinite(t).all() for t in exported.values())


@ON_THE_REFERENCE_WORKER
def test_full_disk_keeps_earlier_checkpoints_and_leaves_no_partial_file(tmp_path, uninterrupted, capsys):
    data, finished = uninterrupted
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    checkpoints = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()}
    size = max(len(b) for b in checkpoints.values())
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()

    def small_files():  # a real limit: writes past it fail with EFBIG, as writes to a full disk do with ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    args = fault_args(data, run_dir, fault_config(tmp_path, early_stopping=False), "--trainer.max_epochs=3")
    resume = [*args, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")]
    result = subprocess.run([sys.executable, "-m", "lit_finetune", *resume], cwd=REPO, capture_output=True, text=True,
                            env=shell_env({**FAULTS_ENV, "TMPDIR": str(tmpdir)}), preexec_fn=small_files,
                            timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("lit-finetune: error:")]
    assert "could not write" in line and "File too large" in line and "the earlier files are kept" in line
    assert {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()} == checkpoints
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name]
    assert not [p for p in tmpdir.rglob("*") if p.is_file()]
    assert record(run_dir)["status"] == "failed"
    capsys.readouterr()
    commands.main(args)  # space again: the same command goes on
    assert "Resuming the unfinished run" in capsys.readouterr().err
    assert ckpt_step(run_dir / "checkpoints" / "last.ckpt") == 24


@ON_THE_REFERENCE_WORKER
def test_resume_refuses_changed_settings_before_touching_the_run_folder(tmp_path, uninterrupted, capsys):
    data, finished = uninterrupted
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    config = fault_config(tmp_path, early_stopping=False)
    for change in ("--model.init_args.learning_rate=3.5e-4", "--model.init_args.model_name_or_path=tiny:roberta"):
        line = one_line_error(capsys, [*fault_args(data, run_dir, config, "--trainer.max_epochs=3", change),
                                       "--ckpt_path", str(last)])
        key = change[2:].split("=")[0].replace(".init_args", "")
        assert "was trained with other settings (" in line and f"{key}: " in line and "--resume_changes=allow" in line
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before

    commands.main([*fault_args(data, run_dir, config, "--trainer.max_epochs=3"), "--ckpt_path", str(last)])
    [changes] = [line for line in capsys.readouterr().err.splitlines()
                 if line.startswith("Resuming with changed settings: ")]
    assert "trainer.max_epochs: 2 -> 3" in changes and "model." not in changes  # the copy's folder is there too
    assert ckpt_step(last) == 24


def test_a_second_start_in_a_running_folder_is_refused_before_it_writes(tmp_path, tiny_data, capsys):
    run_dir = tmp_path / "run"
    args = fault_args(tiny_data, run_dir, fault_config(tmp_path, early_stopping=False), "--trainer.max_epochs=200",
                      wandb=True)
    first = subprocess.Popen([sys.executable, "-m", "lit_finetune", *args], cwd=REPO, text=True,
                             env=shell_env({**FAULTS_ENV, "WANDB_MODE": "offline"}), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120  # until it trains (W&B started, a last.ckpt written)
        while not (run_dir / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
            time.sleep(0.2)
        wandb_before = sorted(p.name for p in (run_dir / "wandb").iterdir())
        line = one_line_error(capsys, args)
        assert line == f"lit-finetune: error: trainer.default_root_dir: {run_dir} is in use by another " \
                       "lit-finetune process; wait for it to end or choose another folder"
        assert sorted(p.name for p in (run_dir / "wandb").iterdir()) == wandb_before
    finally:
        first.send_signal(signal.SIGTERM)  # and a preempted run says so
        assert first.wait(timeout=120) == 143, first.stderr.read()[-2000:]
    assert record(run_dir)["status"] == "preempted"


class Payload:
    """Unpickling this runs code: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@ON_THE_REFERENCE_WORKER
def test_checkpoints_load_without_running_code_and_corrupted_ones_are_named(uninterrupted, tmp_path, capsys):
    last = uninterrupted[1] / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.ckpt"
    torch.save({**checkpoint, "extra": Payload(marker)}, crafted)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    nan = tmp_path / "nan.ckpt"
    torch.save({**checkpoint, "state_dict": {k: v.clone().fill_(float("nan")) if v.is_floating_point() else v
                                             for k, v in checkpoint["state_dict"].items()}}, nan)
    out = str(tmp_path / "out")
    for path, message in ((crafted, f"--ckpt_path: refusing {crafted}: it holds objects that are not tensors"),
                          (truncated, f"--ckpt_path: {truncated} is not a readable checkpoint (truncated or corrupted?)"),
                          (nan, "export: the model holds NaN or inf")):
        assert message in one_line_error(capsys, ["export", "--ckpt_path", str(path), "--output_dir", out])
    data, run_dir = uninterrupted
    teacher = [*fault_args(data, tmp_path / "student", fault_config(tmp_path)), f"--model.init_args.distillation.teacher={crafted}"]
    assert "holds objects that are not tensors" in one_line_error(capsys, teacher)  # a distillation teacher too
    assert not marker.exists() and not (tmp_path / "out").exists()


@ON_THE_REFERENCE_WORKER
def test_export_replaces_only_an_earlier_export_and_follows_the_umask(uninterrupted, tmp_path, capsys):
    last = str(uninterrupted[1] / "checkpoints" / "last.ckpt")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    assert "is not an earlier lit_finetune export" in one_line_error(
        capsys, ["export", "--ckpt_path", last, "--output_dir", str(mine)])
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

    out = tmp_path / "out"
    previous = os.umask(0o022)
    try:
        for _ in range(2):  # the second replaces the first
            commands.main(["export", "--ckpt_path", last, "--output_dir", str(out)])
    finally:
        os.umask(previous)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (out / "config.json").stat().st_mode & 0o777 == 0o644 and out.stat().st_mode & 0o777 == 0o755


def test_metrics_csv_of_a_resume_keeps_the_rows_up_to_its_checkpoint(tmp_path):
    """The logger's half of exact resume, on a file: rows logged past the checkpoint's step are dropped."""
    from lit_finetune.training.loggers import RunCSVLogger

    path = tmp_path / "metrics.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "step", "train/loss_step"])
        writer.writeheader()
        writer.writerows([{"epoch": 0, "step": s, "train/loss_step": 1.0 / (s + 1)} for s in range(10)])
    logger = RunCSVLogger(save_dir=str(tmp_path), resume_step=6)
    logger.log_metrics({"train/loss_step": 0.5, "val/acc": 1.0}, step=6)
    logger.save()
    assert [int(r["step"]) for r in csv.DictReader(path.open())] == [0, 1, 2, 3, 4, 5, 6]
    assert csv.DictReader(path.open()).fieldnames[-1] == "val/acc"
