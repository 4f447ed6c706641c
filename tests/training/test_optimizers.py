"""Optimizer and schedule choice through the real CLI: each optimizer (with a schedule) trains, keeps the no-decay
groups, and continues exactly on resume; the schedules have their shapes; and what cannot run is refused."""

import math

import pytest
import torch
from helpers import logged_values, metrics_rows, tiny_args

from lit_finetune.commands.fit import LitFinetuneCLI
from lit_finetune.errors import ConfigError
from lit_finetune.tasks import SequenceClassificationModule
from lit_finetune.training.optim import optimizer_class

STEPS_PER_EPOCH = 8  # 64 training rows, batches of 8


def run(data, run_dir, *extra, ckpt_path=None):
    every_epoch = ("--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                   "--trainer.callbacks.init_args.save_top_k=-1", "--trainer.callbacks.init_args.filename=e{epoch}",
                   "--trainer.callbacks.init_args.auto_insert_metric_name=false",
                   f"--trainer.callbacks.init_args.dirpath={run_dir.parent / (run_dir.name + '-epochs')}")
    args = ["fit", *tiny_args(data, run_dir, "--trainer.log_every_n_steps=1", "--trainer.max_epochs=2",
                              "--model.init_args.warmup=2", *extra, *every_epoch)]
    return LitFinetuneCLI(args=args + (["--ckpt_path", str(ckpt_path)] if ckpt_path else []))


def step_values(run_dir, key):
    return {int(r["step"]): float(r[key]) for r in metrics_rows(run_dir) if r.get(key)}


@pytest.mark.parametrize("optimizer, schedule, lr", [
    ("adamw", "warmup_stable_decay", 3e-3),
    ("adafactor", "cosine_with_min_lr", 3e-3),
    ("lion", "inverse_sqrt", 3e-4),  # and sgd: in the refusals below
    ("schedule_free", "linear", 3e-3),
    ("adamw_8bit", "linear", 3e-3),  # bitsandbytes' 8-bit states, on this CPU
    ("torch.optim.RAdam", "cosine", 3e-3),
])
def test_optimizer_trains_keeps_no_decay_groups_and_resumes_exactly(tmp_path, tiny_data, optimizer, schedule, lr):
    extra = (f"--model.init_args.optimizer={optimizer}", f"--model.init_args.lr_scheduler={schedule}",
             f"--model.init_args.learning_rate={lr}", "--model.init_args.decay_phase=4")
    full = run(tiny_data, tmp_path / "full", *extra)
    [opt] = full.trainer.optimizers
    assert {g["name"] for g in opt.param_groups} == {"decay", "no_decay"}
    assert [g["weight_decay"] for g in opt.param_groups if g["name"] == "no_decay"] == [0.0]
    losses = logged_values(tmp_path / "full", "train/loss_epoch")
    assert len(losses) == 2 and losses[1] < losses[0]  # it learns
    resumed = run(tiny_data, tmp_path / "resumed", *extra, ckpt_path=tmp_path / "full-epochs" / "e0.ckpt")
    assert resumed.trainer.global_step == 2 * STEPS_PER_EPOCH
    full_loss, resumed_loss = (step_values(tmp_path / d, "train/loss_step") for d in ("full", "resumed"))
    assert sorted(resumed_loss) == list(range(STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH))
    assert [resumed_loss[s] for s in sorted(resumed_loss)] == pytest.approx([full_loss[s] for s in sorted(resumed_loss)],
                                                                            rel=1e-5)
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if optimizer != "schedule_free":  # no schedule: its learning rate stays put
        lrs = step_values(tmp_path / "full", "lr-" + type(opt).__name__ + "/decay")
        resumed_lrs = step_values(tmp_path / "resumed", "lr-" + type(opt).__name__ + "/decay")
        assert [resumed_lrs[s] for s in sorted(resumed_lrs)] == pytest.approx([lrs[s] for s in sorted(resumed_lrs)])
        check_shape(schedule, [lrs[s] for s in sorted(lrs)], lr)
    else:  # evaluation, checkpoints and the export hold the averaged weights, not the training point
        assert all(not g["train_mode"] for g in opt.param_groups)


def check_shape(schedule: str, lrs: list[float], peak: float) -> None:
    """The logged curve (the rate each step trained with) of 16 steps with 2 of warmup."""
    start = 0.1 if schedule == "warmup_stable_decay" else 0.0  # transformers' WSD warms up from its floor
    assert lrs[:3] == pytest.approx([start * peak, (1 + start) / 2 * peak, peak])
    if schedule == "warmup_stable_decay":  # held at the peak, then 4 steps of decay to min_lr_ratio (0.1) x peak
        assert lrs[2:13] == pytest.approx([peak] * 11) and lrs[13] < peak and lrs[-1] > 0.1 * peak
    elif schedule == "cosine_with_min_lr":
        assert lrs[-1] == pytest.approx(peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 13 / 14))))
    elif schedule == "inverse_sqrt":
        assert lrs[8] == pytest.approx(peak * math.sqrt(2 / 8))


def test_optimizers_that_cannot_run_are_refused(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match="model.optimizer: 'adam' is neither one of adamw, adafactor"):
        SequenceClassificationModule(optimizer="adam")
    with pytest.raises(ConfigError, match="model.optimizer: bitsandbytes runs adamw_8bit .* this run is on mps"):
        optimizer_class("adamw_8bit", "mps")
    with pytest.raises(ConfigError, match=r"model.optimizer_args: SGD refuses .*betas"):
        run(tiny_data, tmp_path / "args", "--model.init_args.optimizer=sgd",
            "--model.init_args.optimizer_args={betas: [0.9, 0.99]}")
    with pytest.raises(ConfigError, match="torch.nn.Linear is not a torch.optim.Optimizer"):
        run(tiny_data, tmp_path / "path", "--model.init_args.optimizer=torch.nn.Linear")
