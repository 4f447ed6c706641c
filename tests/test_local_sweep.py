"""`lit-finetune sweep`: W&B's search engine driving real `lit-finetune fit` subprocesses on a tiny model."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import wandb
import yaml
from helpers import QUICKSTART, REPO, logged_values, one_line_error, shell_env, wandb_records

from lit_finetune import commands
from lit_finetune.commands import compare, sweep
from lit_finetune.errors import ConfigError


@pytest.fixture
def base_config(tmp_path, tiny_data):
    """The quickstart recipe on a tiny model and data, without early stopping (so only the sweep stops trials)."""
    config = yaml.safe_load(QUICKSTART.read_text())
    config["model"]["init_args"].update(model_name_or_path="tiny:bert", learning_rate=3e-3, warmup=0)
    config["data"]["init_args"].update(text_column="text", text_pair_column=None, batch_size=8,
                                       train_file=str(tiny_data["train"]),
                                       validation_file=str(tiny_data["validation"]), test_file=None)
    config["trainer"].update(max_epochs=4, accelerator="cpu", enable_model_summary=False)
    config["trainer"]["callbacks"] = [cb for cb in config["trainer"]["callbacks"]
                                      if not cb["class_path"].endswith(("EarlyStopping", "TQDMProgressBar"))]
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def sweep_file(tmp_path, base_config, method: str, parameters: dict, **extra) -> str:
    spec = {"method": method, "metric": {"name": "val/acc", "goal": "maximize"}, "parameters": parameters,
            "command": ["${env}", "lit-finetune", "fit", "--config", str(base_config), "${args}"], **extra}
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def read_yaml(path) -> dict:
    return yaml.safe_load(sweep.Path(path).read_text())


def state(sweep_dir) -> dict:
    return json.loads((sweep_dir / "sweep.json").read_text())


def test_bayes_sweep_end_to_end(tmp_path, base_config, capsys):
    """A Bayesian sweep: the search engine needs every trial's results back, which random search does not (it
    differs from it only in W&B's proposals, and its --count rule is tested below)."""
    method = "bayes"
    parameters = {"model.learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
                  "model.label_smoothing": {"values": [0.0, 0.1]}}
    sweep_dir = tmp_path / "sweep"
    commands.main(["sweep", sweep_file(tmp_path, base_config, method, parameters), "--count", "2",
                   "--sweep_dir", str(sweep_dir), "--poll_s", "0.5"])  # in this process; the trials are not
    stdout = capsys.readouterr().out
    trials = state(sweep_dir)["trials"]
    assert [t["name"] for t in trials] == ["trial-000", "trial-001"]
    assert all(t["state"] == "finished" and t["exitcode"] == 0 for t in trials)
    assert len({t["params"]["model.learning_rate"] for t in trials}) == 2
    for trial in trials:
        folder = sweep_dir / trial["name"]
        config = yaml.safe_load((folder / "config.yaml").read_text())
        # The proposed values reached the run, which wrote its own folder, checkpoint and W&B run in the sweep group.
        assert config["model"]["init_args"]["learning_rate"] == trial["params"]["model.learning_rate"]
        assert config["model"]["init_args"]["label_smoothing"] == trial["params"]["model.label_smoothing"]
        assert len(logged_values(folder, "val/acc")) == 4 and (folder / "checkpoints" / "last.ckpt").exists()
        assert json.loads((folder / "run.json").read_text())["status"] == "finished"
        run = next(r.run for r in wandb_records(folder) if r.WhichOneof("record_type") == "run")
        assert run.run_group == state(sweep_dir)["sweep_id"] and run.display_name == trial["name"]
    # The closing compare table: every trial, best first.
    table = stdout.split("run ", 1)[1]
    assert all(t["name"] in table for t in trials) and (sweep_dir / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_hyperband_stops_a_weak_trial_cleanly_and_a_failed_trial_is_recorded(tmp_path, base_config, capsys):
    """lr 1e-7 never learns; once the first trial is past 0.5 at a hyperband band, the second is stopped there.
    lr 1e6 parses but fails when it trains (its loss or gradients turn NaN or inf): the trial is recorded as failed and the sweep
    goes on to its end."""
    spec = sweep_file(tmp_path, base_config, "grid", {"model.learning_rate": {"values": [3e-3, 1e-7, 1e6]}},
                      early_terminate={"type": "hyperband", "min_iter": 1, "eta": 3})
    sweep_dir = tmp_path / "sweep"
    commands.main(["sweep", spec, "--sweep_dir", str(sweep_dir), "--poll_s", "0.2", "--", "--trainer.max_epochs=12"])
    stdout = capsys.readouterr().out
    strong, weak, failed = state(sweep_dir)["trials"]
    assert (strong["state"], weak["state"]) == ("finished", "stopped")
    assert len(logged_values(sweep_dir / "trial-000", "val/acc")) == 12
    weak_acc = logged_values(sweep_dir / "trial-001", "val/acc")
    assert 3 <= len(weak_acc) < 12 and max(weak_acc) == 0.5  # stopped at hyperband's band of 3 or 9 epochs
    record = json.loads((sweep_dir / "trial-001" / "run.json").read_text())
    assert record["status"] == "stopped" and (sweep_dir / "trial-001" / "export" / "config.json").is_file()
    assert failed["state"] == "failed" and failed["exitcode"] != 0 and "model.max_bad_steps" in failed["log_tail"]
    assert "trial-002: FAILED" in stdout
    assert "failed" in stdout.split("run ", 1)[1]  # the closing table lists it


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path, base_config, capsys):
    spec = sweep_file(tmp_path, base_config, "grid", {"model.learning_rate": {"values": [3e-3, 1e-3]}})
    sweep_dir = tmp_path / "sweep"
    args = ["sweep", spec, "--sweep_dir", str(sweep_dir), "--poll_s", "0.2", "--", "--trainer.max_epochs=6"]
    # Started from a process that runs a W&B service (as a notebook would): trials must not share it, or the
    # interrupted trial's run stays open there and its resume fails with "run ID is in use".
    wandb.init(mode="offline", dir=tmp_path)
    wandb.finish()
    env = shell_env({"WANDB_SERVICE": os.environ["WANDB_SERVICE"]})
    runner = subprocess.Popen([sys.executable, "-m", "lit_finetune", *args], cwd=REPO, text=True, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    second = sweep_dir / "trial-001"
    deadline = time.time() + 300
    while not ((second / "checkpoints" / "last.ckpt").exists() and len(logged_values(second, "val/acc")) >= 2):
        assert runner.poll() is None and time.time() < deadline, runner.communicate()
        time.sleep(0.2)
    runner.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal does
    _, err = runner.communicate(timeout=120)
    assert runner.returncode == 130 and "Rerun the same command to resume it" in err
    first, interrupted = state(sweep_dir)["trials"]
    assert (first["state"], interrupted["state"]) == ("finished", "interrupted")
    first_metrics = (sweep_dir / "trial-000" / "metrics.csv").read_text()
    done_before = logged_values(second, "val/acc")

    capsys.readouterr()
    commands.main(args)  # the same command, in this process: its W&B service is in the environment too
    stdout = capsys.readouterr().out
    assert "Resuming sweep" in stdout
    trials = state(sweep_dir)["trials"]
    assert [t["state"] for t in trials] == ["finished", "finished"] and trials[1]["attempts"] == 2
    assert (sweep_dir / "trial-000" / "metrics.csv").read_text() == first_metrics  # not rerun
    # Continued from its last checkpoint: one value per epoch (metrics.csv may hold a value logged after that
    # checkpoint, which the resumed run logs again, and compare keeps the later one).
    resumed = compare.Run.read(second).curve("val/acc")
    assert [epoch for epoch, _, _ in resumed] == list(range(6))
    assert [value for _, _, value in resumed[:len(done_before) - 1]] == done_before[:-1]
    assert "trial-000:" not in stdout  # a trial's progress lines: only trial-001 ran


@pytest.mark.parametrize("change, message", [
    ({"method": "grud"}, r"method: 'grud' is not one of"),
    ({"metric": {"name": "val/acc", "goal": "up"}}, r"metric.goal: 'up' is not one of"),
    ({"parameters": {"model.learnin_rate": {"values": [1e-4]}}},
     r"(?s)parameters.model.learnin_rate: value 0.0001 is not accepted.*Option 'learnin_rate' is not accepted"),
    ({"parameters": {"data.batch_size": {"values": [8, "big"]}}},
     r"(?s)parameters.data.batch_size: value 'big' is not accepted.*Not of type PositiveInt"),
    ({"parameters": {"model.learning_rate": {"distribution": "uniform", "min": 1e-3, "max": 1e-4}}},
     r"parameters.model.learning_rate: .*min"),
    ({"parameters": {"trainer.default_root_dir": {"value": "x"}}}, r"parameters.trainer.default_root_dir: set by"),
    ({"command": ["python", "train.py", "${args}"]}, r"command: expected `\$\{env\} lit-finetune fit"),
    ({"command": ["${env}", "lit-finetune", "fit", "--config", "configs/classification/sst2.yaml"]},
     r"command: must pass the parameters once, as \$\{args\}"),
    ({"command": ["lit-finetune", "fit", "--config", "nope.yaml", "${args}"]}, r"command: .* does not parse"),
])
def test_bad_sweep_files_are_rejected_before_any_trial(change, message, tmp_path, base_config):
    spec = read_yaml(sweep_file(tmp_path, base_config, "random", {"model.learning_rate": {"value": 1e-3}}))
    spec.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=message):
        sweep.main([str(path), "--count", "1", "--sweep_dir", str(tmp_path / "sweep")])
    assert not (tmp_path / "sweep" / "trial-000").exists()


def test_metric_the_trials_never_log_stops_the_sweep(tmp_path, base_config, capsys):
    spec = read_yaml(sweep_file(tmp_path, base_config, "grid", {"model.learning_rate": {"values": [3e-3, 1e-3]}}))
    spec["metric"]["name"] = "val/accuracy"
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(spec))
    line = one_line_error(capsys, ["sweep", str(path), "--sweep_dir", str(tmp_path / "sweep"), "--",
                                   "--trainer.max_epochs=1"])
    assert "never logged 'val/accuracy'; it logged" in line
    assert "val/acc," in line and not (tmp_path / "sweep" / "trial-001").exists()


def test_a_changed_sweep_file_does_not_resume_into_the_old_folder(tmp_path, base_config):
    spec = sweep_file(tmp_path, base_config, "random", {"model.learning_rate": {"value": 1e-3}})
    sweep_dir = tmp_path / "sweep"
    sweep.LocalSweep(sweep.Path(spec), sweep_dir, [])
    changed = read_yaml(spec)
    changed["parameters"]["model.learning_rate"]["value"] = 1e-4
    sweep.Path(spec).write_text(yaml.safe_dump(changed))
    with pytest.raises(ConfigError, match="started from a different sweep file"):
        sweep.LocalSweep(sweep.Path(spec), sweep_dir, [])


def test_random_and_bayes_sweeps_need_a_count(tmp_path, base_config):
    spec = sweep_file(tmp_path, base_config, "bayes", {"model.learning_rate": {"min": 1e-4, "max": 1e-2}})
    with pytest.raises(ConfigError, match=r"--count is required for a bayes search"):
        sweep.main([spec, "--sweep_dir", str(tmp_path / "sweep")])
    assert not (tmp_path / "sweep").exists()
