"""SequenceClassificationModule trained through the real CLI (in-process): learning, metrics, predict, export, resume."""

import csv
import json

import pytest
import torch
from helpers import assert_pinned, first_losses, logged_values, metrics_rows, tiny_args, write_rows
from lightning.pytorch import Callback
from transformers import pipeline

from lit_finetune.commands.fit import LitFinetuneCLI
from lit_finetune.errors import ConfigError
from lit_finetune.tasks import SequenceClassificationModule
from lit_finetune.training.optim import param_groups

PINNED = [0.688947, 0.648242, 0.741069, 0.747751]  # first four step losses; see helpers.assert_pinned


def run(subcommand: str, *args: str) -> LitFinetuneCLI:
    return LitFinetuneCLI(args=[subcommand, *args])


def test_fit_learns_logs_named_metrics_and_exports(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    cli = run("fit", *tiny_args(tiny_data, run_dir, "--trainer.max_epochs=8"))
    train_loss = logged_values(run_dir, "train/loss_epoch")
    assert len(train_loss) == 8 and train_loss[-1] < 0.5 * train_loss[0]
    assert logged_values(run_dir, "val/acc")[-1] == 1.0
    assert {"val/f1", "val/mcc", "val/loss", "val/acc_best", "train/acc", "lr-AdamW/decay"} <= set(metrics_rows(run_dir)[0])
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    classifier = pipeline("text-classification", model=str(run_dir / "export"))
    assert classifier("plot was good acting")[0]["label"] == "good"
    assert classifier("the movie bad")[0]["label"] == "bad"
    assert cli.model.model.config.id2label == {0: "bad", 1: "good"}
    assert cli.model.tokenizer is cli.datamodule.tokenizer  # read once per process


def test_backbone_trains_with_dropout_on(tmp_path, tiny_data):
    """from_pretrained hands back eval mode; every submodule must be in train mode during training steps."""
    modes = []

    class RecordModes(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append({m.training for m in pl_module.modules()})

    cli = LitFinetuneCLI(args=tiny_args(tiny_data, tmp_path / "run", "--trainer.max_epochs=1",
                                        "--model.init_args.model_name_or_path=minilm",
                                        "--data.init_args.max_train_examples=16"), run=False)
    cli.trainer.callbacks.append(RecordModes())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert modes and all(m == {True} for m in modes)


def test_warmup_then_linear_decay_sized_from_the_trainer(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    run("fit", *tiny_args(tiny_data, run_dir, "--model.init_args.warmup=4", "--trainer.log_every_n_steps=1",
                          "--model.init_args.learning_rate=1e-3"))
    lrs = [float(r["lr-AdamW/decay"]) for r in metrics_rows(run_dir) if r.get("lr-AdamW/decay")]
    assert len(lrs) == 16  # 64 examples / batch 8 x 2 epochs
    assert lrs[0] == 0.0 and lrs[4] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-3 / 12)


def test_resume_continues_step_count_and_schedule(tmp_path, tiny_data):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    every_epoch = "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint"
    common = ("--trainer.log_every_n_steps=1", "--trainer.max_epochs=3", every_epoch,
              "--trainer.callbacks.init_args.save_top_k=-1", "--trainer.callbacks.init_args.filename=e{epoch}",
              "--trainer.callbacks.init_args.auto_insert_metric_name=false",
              "--trainer.callbacks.init_args.dirpath=" + str(tmp_path / "every_epoch"))
    run("fit", *tiny_args(tiny_data, full, *common))
    cli = run("fit", *tiny_args(tiny_data, resumed, *common),
              "--ckpt_path", str(tmp_path / "every_epoch" / "e1.ckpt"))
    assert cli.trainer.global_step == 24
    full_lrs = [float(r["lr-AdamW/decay"]) for r in metrics_rows(full) if r.get("lr-AdamW/decay")]
    resumed_rows = [r for r in metrics_rows(resumed) if r.get("lr-AdamW/decay")]
    assert [int(r["step"]) for r in resumed_rows][0] == 16  # continues at step 16, not 0
    assert [float(r["lr-AdamW/decay"]) for r in resumed_rows] == pytest.approx(full_lrs[16:])


def test_predict_writes_ids_labels_and_probabilities(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    run("fit", *tiny_args(tiny_data, run_dir))
    predict_dir = tmp_path / "predict"
    out = predict_dir / "predictions.csv"
    run("predict", *tiny_args(tiny_data, predict_dir, "--trainer.callbacks+=lit_finetune.callbacks.PredictionWriter",
                              f"--trainer.callbacks.output_file={out}"),
        "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"))
    rows = list(csv.DictReader(out.open()))
    assert [r["id"] for r in rows] == [f"test-{i}" for i in range(16)]
    assert set(rows[0]) == {"id", "label", "probabilities.bad", "probabilities.good"}
    for r in rows:
        probs = {k.split(".")[1]: float(v) for k, v in r.items() if k.startswith("probabilities.")}
        assert sum(probs.values()) == pytest.approx(1, abs=1e-4) and r["label"] == max(probs, key=probs.get)
    jsonl = [json.loads(line) for line in (predict_dir / "predictions.jsonl").open()]
    assert [r["label"] for r in jsonl] == [r["label"] for r in rows]


def test_test_subcommand_reports_test_metrics(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    run("fit", *tiny_args(tiny_data, run_dir, "--trainer.max_epochs=8"))
    cli = run("test", *tiny_args(tiny_data, tmp_path / "test"), "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"))
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert {"test/acc", "test/f1", "test/mcc", "test/loss"} <= set(metrics) and metrics["test/acc"] == 1.0


def test_regression_logs_correlations(tmp_path):
    rows = [{"id": str(i), "text": "good " * (i % 5 + 1), "label": float(i % 5)} for i in range(48)]
    data = {"train": write_rows(tmp_path / "train.csv", rows), "validation": write_rows(tmp_path / "val.csv", rows[:16])}
    run_dir = tmp_path / "run"
    checkpoint = '[{"class_path": "ModelCheckpoint", "init_args": {"monitor": "val/spearman", "mode": "max"}}]'
    run("fit", *tiny_args(data, run_dir, "--data.init_args.num_labels=1", "--trainer.max_epochs=3",
                          f"--trainer.callbacks={checkpoint}"))
    assert {"val/pearson", "val/spearman", "val/mse", "val/spearman_best"} <= set(metrics_rows(run_dir)[0])
    [best] = (run_dir / "checkpoints").glob("*.ckpt")
    export = SequenceClassificationModule.load_checkpoint(best)
    assert export.model.config.problem_type == "regression" and export.num_labels == 1


def test_label_smoothing_raises_the_loss_of_confident_predictions():
    module = SequenceClassificationModule(label_smoothing=0.2, labels={0: "a", 1: "b"})
    logits, labels = torch.tensor([[8.0, -8.0]]), torch.tensor([0])
    plain = SequenceClassificationModule(labels={0: "a", 1: "b"})
    assert module.loss(logits, labels) > plain.loss(logits, labels) + 0.1


def test_no_weight_decay_on_biases_and_layernorm():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("precision, fused", [("32-true", True), ("bf16-mixed", False)])
def test_fused_adamw_unless_lightning_clips_mixed_precision_gradients(precision, fused, tmp_path, tiny_data):
    """Lightning refuses gradient clipping under AMP with an optimizer that unscales by itself (fused AdamW)."""
    cli = run("fit", *tiny_args(tiny_data, tmp_path / "run", f"--trainer.precision={precision}",
                                "--trainer.gradient_clip_val=1.0", "--trainer.max_epochs=1"))
    assert cli.trainer.state.finished
    assert bool(cli.trainer.optimizers[0].defaults["fused"]) is fused


def test_checkpoint_with_other_labels_cannot_resume(tmp_path, tiny_data):
    """The label set is decided by the data once, saved in the hyperparameters, and checked against the data of a
    resume or of a config that names it."""
    run("fit", *tiny_args(tiny_data, tmp_path / "run"))
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["hyper_parameters"]["labels"] == {0: "bad", 1: "good"} and "labels" not in checkpoint
    with pytest.raises(ConfigError, match=r"model.labels: set to \{0: 'good', 1: 'bad'\}, but the data has "):
        run("fit", *tiny_args(tiny_data, tmp_path / "named"), "--model.init_args.labels={0: good, 1: bad}")
    rows = [{"id": str(i), "text": f"w{i}", "label": "xyz"[i % 3]} for i in range(30)]
    other = {"train": write_rows(tmp_path / "other.csv", rows)}
    last = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"--ckpt_path: .* was trained with other settings \(.*data.train_file: "):
        run("fit", *tiny_args(other, tmp_path / "run2"), "--ckpt_path", last)
    with pytest.raises(ConfigError, match=r"--ckpt_path: the checkpoint was trained on labels"):
        run("fit", *tiny_args(other, tmp_path / "run3"), "--ckpt_path", last, "--resume_changes=allow")


@pytest.mark.parametrize("extra", [(), ("--model.init_args.class_weights=[1, 1]", "--model.init_args.loss=focal",
                                         "--model.init_args.focal_gamma=0")], ids=["cross_entropy", "focal_gamma0"])
def test_pinned_losses(tmp_path, tiny_data, extra):
    """The weighted focal path with unit weights and gamma 0 is the cross-entropy, to the pinned digits."""
    assert_pinned(first_losses(tmp_path / "run", *tiny_args(tiny_data, tmp_path / "unused", *extra)), PINNED)


def test_clipping_by_norm_takes_the_gradient_norm_once_and_clips_as_lightning_does(tmp_path, tiny_data, monkeypatch):
    """The non-finite check's norm is reused for clipping: the same losses as Lightning's own clipping (which takes
    the norm again), one norm per step instead of two; and the clipping does act (the unclipped run differs)."""
    import lightning.pytorch as pl
    from torch.nn.utils import clip_grad

    from lit_finetune.tasks.base import TaskModule

    norms = []
    real = clip_grad._get_total_norm

    def counted(*args, **kwargs):
        norms.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(clip_grad, "_get_total_norm", counted)  # what clip_grad_norm_ calls
    monkeypatch.setattr(torch.nn.utils, "get_total_norm", counted)  # what the non-finite check calls
    args = tiny_args(tiny_data, tmp_path / "unused")
    clipped = (*args, "--trainer.gradient_clip_val=0.05")  # below the tiny model's gradient norms: clips every step
    reused = first_losses(tmp_path / "reused", *clipped)
    reused_norms = len(norms)
    monkeypatch.setattr(TaskModule, "configure_gradient_clipping", pl.LightningModule.configure_gradient_clipping)
    stock = first_losses(tmp_path / "stock", *clipped)
    stock_norms = len(norms) - reused_norms
    unclipped = first_losses(tmp_path / "unclipped", *args, "--trainer.gradient_clip_val=null")
    assert len(reused) == len(stock) == 4
    assert reused == pytest.approx(stock, abs=1e-7)
    assert reused[1:] != pytest.approx(unclipped[1:], abs=1e-4)
    assert stock_norms == 2 * reused_norms > 0, (reused_norms, stock_norms)
