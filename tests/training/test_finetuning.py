"""Layer groups, freezing policies, gradual unfreezing, layer-wise learning rates and schedules, on real Trainers."""

import pytest
import torch
from helpers import REPO, logged_values, metrics_rows, tiny_args
from lightning.pytorch import Callback
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from lit_finetune import backbones
from lit_finetune.commands.fit import LitFinetuneCLI
from lit_finetune.errors import ConfigError
from lit_finetune.training.layers import head_module_names, layer_groups
from lit_finetune.training.optim import add_param_groups, build_scheduler

STRATEGIES = REPO / "configs" / "strategies"


@pytest.mark.parametrize("name, auto_class, blocks, head", [
    ("tiny:bert", AutoModelForSequenceClassification, 2, ["classifier"]),
    ("tiny:bert", AutoModelForTokenClassification, 2, ["classifier"]),
    ("tiny:gpt2", AutoModelForCausalLM, 2, []),          # LM head tied to the embeddings
    ("tiny:llama", AutoModelForCausalLM, 2, ["lm_head"]),  # untied
    ("tiny:t5", AutoModelForSeq2SeqLM, 4, []),            # encoder blocks, then decoder blocks
])
def test_layer_groups_hold_every_parameter_once_bottom_up(name, auto_class, blocks, head):
    model = backbones.load_model(name, auto_class)
    groups = layer_groups(model)
    assert [g.name for g in groups] == ["embeddings", *(f"layer.{i}" for i in range(blocks)), "head"]
    assert [g.depth for g in groups] == list(range(blocks + 1, -1, -1))
    ids = [id(p) for g in groups for p in g.params]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    assert all(groups[i].params for i in range(1, blocks + 1))
    assert head_module_names(model) == head


class Snapshot(Callback):
    """Weights at the start of training, the backbone's train/eval mode at each step, trainable counts."""

    def on_train_start(self, trainer, pl_module):
        self.start = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}
        self.groups = {g.name: [n for n, p in pl_module.model.named_parameters() if any(p is q for q in g.params)]
                       for g in layer_groups(pl_module.model)}
        self.backbone_modes, self.head_modes = set(), set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.backbone_modes |= {m.training for m in pl_module.model.bert.modules()}
        self.head_modes |= {pl_module.model.dropout.training}

    def changed(self, pl_module) -> set[str]:
        params = dict(pl_module.model.named_parameters())
        return {group for group, names in self.groups.items()
                if any(not torch.equal(self.start[n], params[n]) for n in names)}


def fit(tmp_path, tiny_data, *args: str, run: bool = True, callbacks=()) -> LitFinetuneCLI:
    cli = LitFinetuneCLI(args=[*tiny_args(tiny_data, tmp_path / "run", "--trainer.max_epochs=1",
                                                 "--trainer.log_every_n_steps=1", *args)], run=False)
    cli.trainer.callbacks.extend(callbacks)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli


@pytest.mark.parametrize("config, extra, trained, backbone_training", [
    ("full.yaml", (), {"embeddings", "layer.0", "layer.1", "head"}, {True}),
    ("feature_extraction.yaml", (), {"head"}, {False}),
    ("freeze_bottom.yaml", ("--trainer.callbacks.init_args.layers=1",), {"layer.1", "head"}, {True}),
    ("top2_layers.yaml", ("--trainer.callbacks.init_args.layers=1",), {"layer.1", "head"}, {True}),
    ("top2_layers.yaml", (), {"layer.0", "layer.1", "head"}, {True}),
])
def test_freezing_policies_train_only_their_layers(config, extra, trained, backbone_training, tmp_path, tiny_data):
    snapshot = Snapshot()
    cli = fit(tmp_path, tiny_data, "--config", str(STRATEGIES / config), *extra, callbacks=[snapshot])
    assert snapshot.changed(cli.model) == trained
    # feature extraction: the frozen backbone runs without dropout, the head's dropout stays on
    assert snapshot.backbone_modes == backbone_training and snapshot.head_modes == {True}
    trainable = sum(p.numel() for g in trained for n, p in cli.model.model.named_parameters()
                    if n in snapshot.groups[g])
    assert logged_values(tmp_path / "run", "params/trainable") == [trainable]
    assert logged_values(tmp_path / "run", "params/total") == [sum(p.numel() for p in cli.model.parameters())]


def test_too_many_layers_is_refused_before_training(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match=r"FreezeLayers.layers: 5 layers .* 2 Transformer layers"):
        fit(tmp_path, tiny_data, "--config", str(STRATEGIES / "top2_layers.yaml"),
            "--trainer.callbacks.init_args.layers=5")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_layer_wise_lr_decay_gives_each_group_its_rate(tmp_path, tiny_data):
    fit(tmp_path, tiny_data, "--config", str(STRATEGIES / "llrd.yaml"), "--model.init_args.lr_scheduler=constant_with_warmup")
    row = next(r for r in metrics_rows(tmp_path / "run") if r.get("lr-AdamW/head/decay"))
    rates = {k[len("lr-AdamW/"):]: float(v) for k, v in row.items() if k.startswith("lr-AdamW/") and v}
    expected = {"head": 2e-4, "layer.1": 2e-4 * 0.8, "layer.0": 2e-4 * 0.8 ** 2, "embeddings": 2e-4 * 0.8 ** 3}
    assert rates == pytest.approx({f"{g}/{kind}": lr for g, lr in expected.items() for kind in ("decay", "no_decay")})


class GroupCounts(Callback):
    def __init__(self):
        self.counts = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.counts[trainer.global_step] = [g["name"] for g in trainer.optimizers[0].param_groups]


def test_gradual_unfreezing_adds_groups_on_schedule_and_resumes(tmp_path, tiny_data):
    every_epoch = ("--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                   "--trainer.callbacks.init_args.save_top_k=-1", "--trainer.callbacks.init_args.filename=e{epoch}",
                   "--trainer.callbacks.init_args.auto_insert_metric_name=false",
                   f"--trainer.callbacks.init_args.dirpath={tmp_path / 'every_epoch'}")
    common = ("--config", str(STRATEGIES / "gradual_unfreezing.yaml"), "--config", str(STRATEGIES / "llrd.yaml"),
              "--trainer.callbacks.init_args.every=3", "--trainer.max_epochs=2", *every_epoch)
    counts = GroupCounts()
    snapshot = Snapshot()
    full = fit(tmp_path / "full", tiny_data, *common, callbacks=[counts, snapshot])
    assert snapshot.changed(full.model) == {"embeddings", "layer.0", "layer.1", "head"}
    order = ["head", "layer.1", "layer.0", "embeddings"]
    for step, names in counts.counts.items():  # one group (decay + no_decay) more every 3 steps, from the top
        assert names == [f"{g}/{kind}" for g in order[:1 + min(step // 3, 3)] for kind in ("decay", "no_decay")]
    resumed = LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, tmp_path / "resumed", "--trainer.log_every_n_steps=1",
                                                     *common), "--ckpt_path", str(tmp_path / "every_epoch" / "e0.ckpt")])
    assert [g["name"] for g in resumed.trainer.optimizers[0].param_groups] == counts.counts[15]
    for key in ("lr-AdamW/head/decay", "lr-AdamW/layer.0/decay", "lr-AdamW/embeddings/no_decay"):
        full_lrs = lr_by_step(tmp_path / "full" / "run", key)
        resumed_lrs = lr_by_step(tmp_path / "resumed", key)
        assert min(resumed_lrs) >= 8 and resumed_lrs == pytest.approx({s: v for s, v in full_lrs.items() if s >= 8})


def lr_by_step(run_dir, key: str) -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in metrics_rows(run_dir) if r.get(key)}


def lr_curve(name: str, total: int = 100, **kwargs) -> list[list[float]]:
    """Learning rates of two groups (peaks 1.0 and 0.5) at every step."""
    optimizer = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0},
                                 {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.5}])
    scheduler = build_scheduler(optimizer, name, kwargs.pop("warmup", 0.1), total, **kwargs)
    curve = []
    for _ in range(total):
        curve.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return curve


@pytest.mark.parametrize("name", ["linear", "cosine", "cosine_with_restarts", "constant_with_warmup", "one_cycle",
                                  "cyclic"])
def test_every_schedule_keeps_the_groups_ratio(name):
    curve = lr_curve(name, cycles=2)
    assert all(b == pytest.approx(a / 2) for a, b in curve)  # layer-wise rates keep their ratio all along
    assert max(a for a, _ in curve) == pytest.approx(1.0, rel=1e-3)


def test_schedule_shapes():
    restarts = [a for a, _ in lr_curve("cosine_with_restarts", cycles=3)]
    peaks = [i for i in range(1, 99) if restarts[i] > restarts[i - 1] + 0.3]  # the jumps back up
    assert len(peaks) == 2 and restarts[10] == pytest.approx(1.0)
    one_cycle = [a for a, _ in lr_curve("one_cycle", warmup=0.3)]
    assert one_cycle[0] == pytest.approx(1 / 25) and one_cycle.index(max(one_cycle)) == 29  # 30% of the run
    assert one_cycle[-1] < 1e-3
    cyclic = [a for a, _ in lr_curve("cyclic", cycles=2, min_lr_ratio=0.1)]
    assert cyclic[0] == pytest.approx(0.1) and cyclic[25] == pytest.approx(1.0) and cyclic[50] == pytest.approx(0.1)
    assert cyclic[75] == pytest.approx(1.0) and min(cyclic) == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["linear", "cosine_with_restarts", "one_cycle", "cyclic"])
def test_groups_added_mid_run_follow_the_schedule(name):
    """What gradual unfreezing relies on: a group added at step 40 with peak 0.5 runs at half the first group."""
    first = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [first], "lr": 1.0}])
    scheduler = build_scheduler(optimizer, name, 0.1, 100, cycles=2)
    for step in range(100):
        if step == 40:
            add_param_groups(optimizer, [scheduler], [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.5}])
        if step >= 40:
            assert optimizer.param_groups[1]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"] / 2)
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("config", ["one_cycle.yaml", "cyclic_lr.yaml", "cosine_restarts.yaml"])
def test_schedules_continue_the_same_curve_on_resume(config, tmp_path, tiny_data):
    every_epoch = ("--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                   "--trainer.callbacks.init_args.save_top_k=-1", "--trainer.callbacks.init_args.filename=e{epoch}",
                   "--trainer.callbacks.init_args.auto_insert_metric_name=false",
                   f"--trainer.callbacks.init_args.dirpath={tmp_path / 'every_epoch'}")
    common = ("--config", str(STRATEGIES / config), "--trainer.max_epochs=3", "--trainer.log_every_n_steps=1",
              *every_epoch)
    LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, tmp_path / "full", *common)])
    LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, tmp_path / "resumed", *common),
                         "--ckpt_path", str(tmp_path / "every_epoch" / "e1.ckpt")])
    full = logged_values(tmp_path / "full", "lr-AdamW/decay")
    resumed = logged_values(tmp_path / "resumed", "lr-AdamW/decay")
    assert len(full) == 24 and len(resumed) == 8 and resumed == pytest.approx(full[16:])
    assert len(set(round(v, 12) for v in full)) > 5  # the curve moves
