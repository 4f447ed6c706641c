"""The memory and speed knobs of every task module: gradient checkpointing (recomputes, same gradients, with LoRA
too), the attention implementation (same function, other kernel), torch.compile (same losses, same checkpoint keys),
and the settings that cannot run here, refused before training."""

import lightning.pytorch as pl
import pytest
import torch
from helpers import metrics_rows, tiny_args, write_rows

from lit_finetune.commands.fit import LitFinetuneCLI
from lit_finetune.data.instructions import InstructionDataModule
from lit_finetune.errors import ConfigError
from lit_finetune.tasks.sft import CausalSFTModule

ROWS = [{"prompt": f"what colour is thing {i} ?", "response": f"it is colour {i % 3} ."} for i in range(16)]


@pytest.fixture
def batch(tmp_path) -> dict:
    dm = InstructionDataModule("tiny:llama", train_file=str(write_rows(tmp_path / "train.jsonl", ROWS)),
                               validation_file=str(write_rows(tmp_path / "val.jsonl", ROWS[:4])), batch_size=8,
                               cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    return next(iter(dm.loader("train")))


def loss_and_grads(module, batch: dict) -> tuple[torch.Tensor, dict, int]:
    """The loss, the gradients, and how many activation tensors the forward pass kept for the backward one."""
    module.model.zero_grad()
    weights = {p.data_ptr() for p in module.model.parameters()}
    kept = []

    def keep(tensor):
        if tensor.data_ptr() not in weights:
            kept.append(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        out = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           labels=batch["labels"])
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads, len(kept)


def built(**settings) -> CausalSFTModule:
    torch.manual_seed(0)
    module = CausalSFTModule("tiny:llama", **settings)
    module.configure_model()
    return module


@pytest.mark.parametrize("lora", [None, {"r": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}])
def test_gradient_checkpointing_recomputes_blocks_and_keeps_the_gradients(batch, lora):
    plain, checkpointed = built(lora=lora), built(lora=lora, gradient_checkpointing=True)
    expected_loss, expected, kept_plain = loss_and_grads(plain, batch)
    loss, grads, kept = loss_and_grads(checkpointed, batch)
    assert 0 < kept < kept_plain / 3  # the blocks' activations were recomputed in the backward pass, not kept
    assert torch.allclose(loss, expected_loss) and grads.keys() == expected.keys() and len(grads)
    assert all(torch.allclose(grads[n], expected[n], atol=1e-6) for n in grads)
    if lora:
        assert all("lora_" in n for n in grads)  # the base stayed frozen under checkpointing


def test_attention_implementations_compute_the_same_function(batch):
    sdpa, eager = built(attn_implementation="sdpa"), built(attn_implementation="eager")
    assert (sdpa.model.config._attn_implementation, eager.model.config._attn_implementation) == ("sdpa", "eager")
    assert torch.allclose(loss_and_grads(sdpa, batch)[0], loss_and_grads(eager, batch)[0], atol=1e-5)
    with pytest.raises(ConfigError, match="flash_attention_2 needs the flash-attn package"):
        CausalSFTModule("tiny:llama", attn_implementation="flash_attention_2")


def test_compiled_model_trains_to_the_same_losses_with_the_same_checkpoint_keys(tmp_path):
    files = {"train_file": str(write_rows(tmp_path / "train.jsonl", ROWS)),
             "validation_file": str(write_rows(tmp_path / "val.jsonl", ROWS[:4]))}
    losses, keys = {}, {}
    for compiled in (False, True):
        pl.seed_everything(0)
        dm = InstructionDataModule("tiny:llama", **files, batch_size=8, pad_to_multiple_of=32,
                                   cache_dir=str(tmp_path / "cache"))
        module = CausalSFTModule("tiny:llama", compile=compiled, compile_backend="aot_eager", learning_rate=1e-2)
        trainer = pl.Trainer(default_root_dir=tmp_path / f"run-{compiled}", accelerator="cpu", max_steps=3,
                             logger=False, enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0, limit_val_batches=0, callbacks=[LossRecorder()])
        trainer.fit(module, datamodule=dm)
        assert (getattr(module.model, "_compiled_call_impl", None) is not None) == compiled
        losses[compiled], keys[compiled] = trainer.callbacks[0].losses, list(module.state_dict())
    assert len(losses[True]) == 3 and losses[True] == pytest.approx(losses[False], abs=1e-5)
    assert keys[True] == keys[False]  # a compiled run's checkpoint loads anywhere


class LossRecorder(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_compile_without_a_cpu_compiler_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++ or clang++ to be found
    monkeypatch.delenv("CXX", raising=False)
    dm = InstructionDataModule("tiny:llama", train_file=str(write_rows(tmp_path / "train.jsonl", ROWS)),
                               validation_file=str(write_rows(tmp_path / "val.jsonl", ROWS[:4])),
                               cache_dir=str(tmp_path / "cache"))
    module = CausalSFTModule("tiny:llama", compile=True)
    trainer = pl.Trainer(default_root_dir=tmp_path / "run", accelerator="cpu", max_steps=1, logger=False,
                         enable_progress_bar=False)
    with pytest.raises(ConfigError, match="model.compile: torch.compile's inductor backend .* no compiler"):
        trainer.fit(module, datamodule=dm)
    assert module.model is None and not (tmp_path / "run" / "checkpoints").exists()


def test_accumulated_batches_size_the_schedule_in_optimizer_steps(tmp_path, tiny_data):
    """8 batches an epoch, 2 epochs, 2 batches per optimizer step: 8 steps, and the linear schedule reaches zero on
    the last of them (sized on 16 batches, it would stop halfway down)."""
    cli = LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, tmp_path / "run", "--trainer.accumulate_grad_batches=2",
                                                  "--model.init_args.lr_scheduler=linear",
                                                  "--trainer.logger=lit_finetune.training.loggers.RunCSVLogger",
                                                  "--data.init_args.test_file=null")])
    assert cli.trainer.global_step == 8 and cli.trainer.estimated_stepping_batches == 8
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_throughput_reports_pad_fraction_and_mfu_per_window_and_epoch(tmp_path):
    """Padded and packed batches of the same examples: the packed ones carry less padding, and the logged rates
    agree with each other (non-pad tokens = all tokens x (1 - pad fraction)); MFU is a fraction of the peak."""
    from lightning.pytorch.loggers import CSVLogger

    from lit_finetune.callbacks import Throughput

    rows = [{"prompt": "what colour is " * (1 + i % 9), "response": "it is " * (1 + i % 4)} for i in range(32)]
    files = {"train_file": str(write_rows(tmp_path / "train.jsonl", rows)),
             "validation_file": str(write_rows(tmp_path / "val.jsonl", rows[:4]))}
    pad = {}
    for packing in ("none", "padding_free"):
        run_dir = tmp_path / packing
        dm = InstructionDataModule("tiny:llama", **files, batch_size=4, max_length=48, packing=packing,
                                   cache_dir=str(tmp_path / "cache"))
        trainer = pl.Trainer(default_root_dir=run_dir, accelerator="cpu", max_epochs=1, enable_progress_bar=False,
                             logger=CSVLogger(run_dir, name="", version=""), callbacks=[Throughput(window=1)],
                             enable_checkpointing=False, num_sanity_val_steps=0, log_every_n_steps=1)
        trainer.fit(CausalSFTModule("tiny:llama"), datamodule=dm)
        windows = [r for r in metrics_rows(run_dir) if r.get("perf/mfu_step")]
        [epoch] = [r for r in metrics_rows(run_dir) if r.get("perf/mfu")]
        assert len(windows) >= 2 and all(0 < float(r["perf/mfu_step"]) < 1 for r in windows)
        tokens, everything = float(epoch["perf/tokens_per_s"]), float(epoch["perf/all_tokens_per_s"])
        pad[packing] = float(epoch["perf/pad_fraction"])
        assert tokens == pytest.approx(everything * (1 - pad[packing]), rel=1e-6) and 0 < float(epoch["perf/mfu"]) < 1
        assert float(epoch["perf/peak_rss_mb"]) > 100
    assert pad["padding_free"] < pad["none"] / 2


def test_training_flops_count_matmul_weights_once_and_attention_by_length():
    from transformers import AutoModelForCausalLM

    from lit_finetune.backbones import load_model
    from lit_finetune.training import flops

    model = load_model("tiny:gpt2", AutoModelForCausalLM)
    wpe = model.transformer.wpe.weight.numel()  # the position table is a lookup; the tied wte is the output matmul
    assert flops.matmul_parameters(model) == sum(p.numel() for p in model.parameters()) - wpe
    layers, hidden = flops.model_shape(model.config)
    assert (layers, hidden) == (model.config.n_layer, model.config.n_embd)
    assert flops.training_flops_per_token(1000, 2, 64, 128) == 6 * 1000 + 12 * 2 * 64 * 128
    assert flops.measured_cpu_peak() > 1e9  # any CPU of this decade does a GFLOP/s of fp32 matmul
