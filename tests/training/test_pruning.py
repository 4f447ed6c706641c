"""ScheduledPruning: which weights it prunes, the cubic schedule it follows and logs, per-layer and global sparsity,
checkpoints and exports with plain zeroed weights, resuming, the shipped config fragment, and bad arguments."""

import lightning.pytorch as pl
import pytest
import torch
from helpers import REPO, logged_values, tiny_args
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from lit_finetune import backbones
from lit_finetune.callbacks import ExportBestModel
from lit_finetune.callbacks.pruning import ScheduledPruning, prunable_weights
from lit_finetune.commands.fit import LitFinetuneCLI
from lit_finetune.data import TextClassificationDataModule
from lit_finetune.errors import ConfigError
from lit_finetune.tasks import SequenceClassificationModule

PRUNING_CONFIG = REPO / "configs" / "strategies" / "pruning.yaml"
STEPS = 16  # 64 training rows, batches of 8, 2 epochs


def fit(run_dir, data, *callbacks: Callback, ckpt_path=None, **kwargs) -> SequenceClassificationModule:
    """Train tiny:bert with `callbacks` (the pruning), a checkpoint each epoch (best = latest) and the export of the
    best one."""
    dm = TextClassificationDataModule("tiny:bert", train_file=str(data["train"]),
                                      validation_file=str(data["validation"]), batch_size=8, id_column="id")
    module = SequenceClassificationModule("tiny:bert", learning_rate=3e-3, warmup=0)
    settings = dict(default_root_dir=run_dir, accelerator="cpu", logger=CSVLogger(run_dir, name="", version=""),
                    max_epochs=2, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                    log_every_n_steps=50)  # pruning/sparsity must be logged at every pruning regardless
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_top_k=-1, filename="{epoch}")
    trainer = pl.Trainer(callbacks=[*callbacks, checkpoint, ExportBestModel()], **{**settings, **kwargs})
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module


def sparsity(tensor: torch.Tensor) -> float:
    return (tensor == 0).float().mean().item()


def block_weights(state: dict) -> dict[str, torch.Tensor]:
    """The weights ScheduledPruning prunes by default, by name, from a BERT state dict of any prefix."""
    return {k: v for k, v in state.items() if k.endswith(".weight") and v.dim() == 2
            and (".encoder.layer." in k or ".pooler." in k)}


def test_prunes_only_the_block_linears_unless_the_head_is_asked_for():
    model = backbones.load_model("tiny:bert", AutoModelForSequenceClassification, num_labels=2)
    names = {module: name for name, module in model.named_modules()}
    pruned = [names[module] for module, _ in prunable_weights(model)]
    assert len(pruned) == 2 * 6 + 1  # per layer: query, key, value, attention output, intermediate, output; pooler
    assert all(".encoder.layer." in n or n.endswith("pooler.dense") for n in pruned)
    assert [names[m] for m, _ in prunable_weights(model, include_head=True)] == pruned + ["classifier"]
    gpt2 = backbones.load_model("tiny:gpt2", AutoModelForCausalLM)
    assert len(prunable_weights(gpt2)) == 2 * 4  # Conv1D projections: c_attn, c_proj, c_fc, mlp c_proj
    assert len(prunable_weights(gpt2, include_head=True)) == 2 * 4  # its LM head is the embeddings, tied: kept


def test_per_layer_schedule_checkpoints_and_export(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    zeros_at_start = {}

    class CountZeros(Callback):
        def on_fit_start(self, trainer, pl_module):
            zeros_at_start.update({k: int((v == 0).sum()) for k, v in pl_module.model.state_dict().items()})

    module = fit(run_dir, tiny_data, ScheduledPruning(amount=0.5, start=0.0, end=0.75, every_n_steps=2), CountZeros())

    # The cubic schedule, every 2 steps up to step 12 (75% of 16), logged as the measured share of zeros.
    logged = logged_values(run_dir, "pruning/sparsity")
    expected = [0.5 * (1 - (1 - step / 12) ** 3) for step in range(2, 13, 2)]
    assert logged == pytest.approx(expected, abs=2e-3) and logged[-1] == pytest.approx(0.5, abs=1e-3)
    assert all(a < b for a, b in zip(logged, logged[1:]))

    # In memory: masks made permanent; each block weight at the target, everything else as dense as it started.
    state = module.model.state_dict()
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    assert not any(module._forward_pre_hooks for module in module.model.modules())
    pruned = block_weights(state)
    assert len(pruned) == 13 and all(sparsity(w) == pytest.approx(0.5, abs=2e-3) for w in pruned.values())
    for key in set(state) - set(pruned):
        assert int((state[key] == 0).sum()) <= zeros_at_start[key], key

    # Checkpoints: plain weights holding the zeros, and the sparsity reached when each was saved.
    first, last = (torch.load(run_dir / "checkpoints" / f"epoch={e}.ckpt", weights_only=False) for e in (0, 1))
    assert not any(k.endswith(("_orig", "_mask")) for k in last["state_dict"])
    assert all(sparsity(w) == pytest.approx(0.5, abs=2e-3) for w in block_weights(last["state_dict"]).values())
    assert first["callbacks"]["ScheduledPruning"]["sparsity"] == pytest.approx(0.5 * (1 - (1 - 8 / 12) ** 3))
    assert last["callbacks"]["ScheduledPruning"]["sparsity"] == 0.5

    # The export of the best (= last) checkpoint: a plain Hugging Face folder with the zeros.
    with safe_open(str(run_dir / "export" / "model.safetensors"), "pt") as f:
        assert not any(k.endswith(("_orig", "_mask")) for k in f.keys())
    exported = AutoModelForSequenceClassification.from_pretrained(run_dir / "export")
    exported_weights = block_weights(exported.state_dict())
    assert len(exported_weights) == 13
    for name, weight in exported_weights.items():
        assert torch.equal(weight, state[name]), name


def test_global_pruning_at_epoch_ends_ranks_all_layers_together(tmp_path, tiny_data):
    run_dir = tmp_path / "run"
    fit(run_dir, tiny_data, ScheduledPruning(amount=0.5, end=1.0, every_n_steps=None, use_global_unstructured=True))
    assert logged_values(run_dir, "pruning/sparsity") == pytest.approx([0.5 * (1 - 0.5 ** 3), 0.5], abs=1e-6)
    weights = block_weights(torch.load(run_dir / "checkpoints" / "epoch=1.ckpt", weights_only=False)["state_dict"])
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros == round(0.5 * sum(w.numel() for w in weights.values()))  # global counts are exact
    assert len({round(sparsity(w), 3) for w in weights.values()}) > 1  # and fall unevenly on the layers


def test_resume_keeps_the_zeros_and_finishes_the_schedule(tmp_path, tiny_data):
    first = tmp_path / "first"
    fit(first, tiny_data, ScheduledPruning(amount=0.5, end=1.0, every_n_steps=4))
    epoch0 = torch.load(first / "checkpoints" / "epoch=0.ckpt", weights_only=False)["state_dict"]
    resumed = fit(tmp_path / "resumed", tiny_data, ScheduledPruning(amount=0.5, end=1.0, every_n_steps=4),
                  ckpt_path=first / "checkpoints" / "epoch=0.ckpt")
    final = resumed.state_dict()
    for name, weight in block_weights(epoch0).items():
        assert not final[name][weight == 0].any(), name  # the masks came back: pruned weights stayed zero
        assert sparsity(final[name]) == pytest.approx(0.5, abs=2e-3)
    assert logged_values(tmp_path / "resumed", "pruning/sparsity") == pytest.approx([0.5 * (1 - 0.25 ** 3), 0.5],
                                                                                     abs=2e-3)


def test_config_fragment_composes_with_a_task_config(tmp_path, tiny_data):
    """The shipped recipe monitors val/acc: once at the target, only checkpoints at the target compete for best."""
    run_dir = tmp_path / "run"
    cli = LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, run_dir, "--config", str(PRUNING_CONFIG),
                                                 "--trainer.callbacks.init_args.every_n_steps=3")])
    [pruning] = [c for c in cli.trainer.callbacks if isinstance(c, ScheduledPruning)]
    assert (pruning.amount, pruning.end_step, pruning.every_n_steps) == (0.5, 13, 3)  # 80% of 16 steps
    logged = logged_values(run_dir, "pruning/sparsity")
    assert len(logged) == 5 and logged[-1] == pytest.approx(0.5, abs=2e-3)  # steps 3, 6, 9, 12 and 13
    best = torch.load(cli.trainer.checkpoint_callback.best_model_path, weights_only=False)
    assert best["callbacks"]["ScheduledPruning"]["sparsity"] == 0.5
    exported = AutoModelForSequenceClassification.from_pretrained(run_dir / "export").state_dict()
    assert all(sparsity(w) == pytest.approx(0.5, abs=2e-3) for w in block_weights(exported).values())


@pytest.mark.parametrize("kwargs, key", [
    (dict(amount=1.0), "amount"), (dict(amount=-0.1), "amount"), (dict(start=0.8, end=0.5), "start"),
    (dict(start=200, end=100), "start"), (dict(end=2.5), "end"), (dict(start=-1), "start"),
    (dict(every_n_steps=0), "every_n_steps"),
])
def test_bad_arguments_name_the_argument(kwargs, key):
    with pytest.raises(ConfigError, match=rf"ScheduledPruning\.{key}: expected"):
        ScheduledPruning(**kwargs)


def test_a_schedule_longer_than_the_run_is_refused(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match=r"ScheduledPruning\.start/end: .* step 0 to step 100, .* run's 16 steps"):
        fit(tmp_path / "run", tiny_data, ScheduledPruning(end=100))
