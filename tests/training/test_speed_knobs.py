"""The memory and speed knobs of every task module: gradient checkpointing (recomputes, same gradients, with LoRA
too), the attention implementation (same function, other kernel), torch.compile (same losses, same checkpoint keys),
and the settings that cannot run here, refused before training."""

import lightning.pytorch as pl
import pytest
import torch
from helpers import write_rows

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
