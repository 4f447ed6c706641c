"""What keeps a run's peak memory down: checkpoints streamed to disk (never serialized in memory first), gradients
freed as soon as the optimizer has used them, and the end-of-fit export written from the model in memory when it is
the best checkpoint's (no second copy of the model)."""

import tracemalloc

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from safetensors.torch import load_file

from lit_finetune.callbacks import ExportBestModel, RunCheckpoint
from lit_finetune.callbacks.run import holds_the_weights_in_memory
from lit_finetune.data import TextClassificationDataModule
from lit_finetune.tasks import SequenceClassificationModule
from lit_finetune.training.checkpointing import AtomicCheckpointIO, read_checkpoint


def test_checkpoints_stream_to_disk_without_a_copy_in_memory(tmp_path):
    state = {"state_dict": {f"w{i}": torch.randn(256, 1024) for i in range(16)}}  # 16 MiB of tensors
    tracemalloc.start()  # the Python bytes an in-memory serialization would need; tensors' own memory is not traced
    try:
        AtomicCheckpointIO().save_checkpoint(state, tmp_path / "a.ckpt")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"saving a 16 MiB checkpoint allocated {peak / 2**20:.1f} MiB of Python memory"
    loaded = read_checkpoint(tmp_path / "a.ckpt")["state_dict"]
    assert all(torch.equal(loaded[k], v) for k, v in state["state_dict"].items())
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]  # no temporary file left beside it


def test_gradients_are_freed_after_each_step_and_the_best_last_checkpoint_exports_from_memory(tmp_path, tiny_data):
    """Two batches per optimizer step: the first keeps its gradients (accumulating), the second's are gone once
    the optimizer has stepped, before the next batch's forward."""
    grads_after_batch = []

    class Grads(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            grads_after_batch.append(any(p.grad is not None for p in pl_module.parameters()))

    run_dir = tmp_path / "run"
    dm = TextClassificationDataModule("tiny:bert", train_file=str(tiny_data["train"]),
                                      validation_file=str(tiny_data["validation"]), batch_size=8, id_column="id")
    module = SequenceClassificationModule("tiny:bert", learning_rate=3e-3, warmup=0)
    checkpoint = RunCheckpoint(dirpath=run_dir / "checkpoints", monitor="val/acc", mode="max", save_last=True)
    export = ExportBestModel()
    trainer = pl.Trainer(default_root_dir=run_dir, accelerator="cpu", max_epochs=1, accumulate_grad_batches=2,
                         logger=CSVLogger(run_dir, name="", version=""), enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Grads(), checkpoint, export])
    trainer.fit(module, datamodule=dm)

    assert len(grads_after_batch) == 2 * trainer.global_step > 0
    assert grads_after_batch == [True, False] * trainer.global_step

    # One epoch, one validation: the best checkpoint is the final state, so the export is the model in memory...
    assert holds_the_weights_in_memory(trainer, checkpoint.best_model_path)
    exported = load_file(export.exported_to / "model.safetensors")
    saved = read_checkpoint(checkpoint.best_model_path)["state_dict"]
    # ...with exactly the weights the checkpoint holds.
    assert exported and all(torch.equal(v, saved[f"model.{k}"]) for k, v in exported.items())
