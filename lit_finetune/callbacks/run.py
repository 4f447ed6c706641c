"""Callbacks runs can use: write predictions, export the best checkpoint at the end of fit, stop on request, show
what a language model generates, and measure training speed and memory."""

from __future__ import annotations

import csv
import json
import resource
import time
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from lit_finetune import io
from lit_finetune.data.base import in_dataset_order
from lit_finetune.run_folder import RunFolder
from lit_finetune.tasks.base import export_checkpoint
from lit_finetune.training import flops
from lit_finetune.training.samples import record_samples
from lit_finetune.training.sharding import is_sharding


def flatten_row(row: dict, prefix: str = "") -> dict:
    """{"probabilities": {"pos": 0.9}} -> {"probabilities.pos": 0.9}, for CSV columns."""
    flat = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update(flatten_row(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class PredictionWriter(BasePredictionWriter):
    """Write the predictions of `predict` to a .jsonl, .csv or CoNLL file.

    The rows are those ``predict_step`` returns, in the order of the data; under DDP each process writes a file of
    its own."""

    def __init__(self, output_file: str | None = None, format: Literal["jsonl", "csv", "conll"] | None = None):
        """
        Args:
            output_file: Where to write. Default: predictions.<format> in the run folder.
            format: jsonl, csv (nested values become dotted columns) or conll (rows with ``tokens`` and ``tags``: a
                word and its tag per line, a blank line after each sentence). Default: from the file's suffix,
                else jsonl.
        """
        super().__init__(write_interval="epoch")
        self.output_file = output_file
        self.format = format

    def path(self, trainer: pl.Trainer) -> Path:
        rank = trainer.global_rank if trainer.world_size > 1 else None
        if not self.output_file:
            return RunFolder.of(trainer).predictions(self.format or "jsonl", rank)
        path = Path(self.output_file)
        return path if rank is None else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        rows = in_dataset_order(predictions, batch_indices)
        path = self.path(trainer)
        kind = self.format or {".csv": "csv", ".conll": "conll"}.get(path.suffix, "jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        with io.atomic_file(path) as f:  # renamed into place: a crash never leaves half a file
            if kind == "csv":
                flat = [flatten_row(r) for r in rows]
                writer = csv.DictWriter(f, fieldnames=list(flat[0]) if flat else ["id"])
                writer.writeheader()
                writer.writerows(flat)
            elif kind == "conll":
                f.writelines("".join(f"{word}\t{tag}\n" for word, tag in zip(r["tokens"], r["tags"])) + "\n"
                             for r in rows)
            else:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        print(f"Wrote {len(rows)} predictions to {path}")


class ExportBestModel(pl.Callback):
    """Export the best checkpoint as a Hugging Face folder at the end of fit.

    At the end of fit, export the best checkpoint (or the final weights) as a Hugging Face folder; with a W&B
    logger whose ``log_model`` is on, the folder also becomes a W&B model artifact (next to the checkpoints)."""

    def __init__(self, output_dir: str | None = None):
        """
        Args:
            output_dir: Export folder. Default: export/ in the run folder.
        """
        self.output_dir = output_dir
        self.exported_to: Path | None = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        output_dir = Path(self.output_dir) if self.output_dir else RunFolder.of(trainer).export
        best = trainer.checkpoint_callback.best_model_path if isinstance(trainer.checkpoint_callback,
                                                                         ModelCheckpoint) else ""
        if trainer.is_global_zero:
            if best and not holds_the_weights_in_memory(trainer, best):
                export_checkpoint(best, str(output_dir))
            else:  # no second copy of the model when the one in memory is the best
                pl_module.export(output_dir)
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger) and logger._log_model:  # Lightning keeps the flag private
                    log_export_artifact(logger, output_dir, trainer.checkpoint_callback)
        trainer.strategy.barrier("export")
        self.exported_to = output_dir


def holds_the_weights_in_memory(trainer: pl.Trainer, checkpoint_path: str) -> bool:
    """Whether this single process's model is the one `checkpoint_path` holds: written by this run at its last
    step (a sharded or replicated model is exported from the checkpoint, whose weights are whole)."""
    saved_at_step = getattr(trainer.checkpoint_callback, "saved_at_step", {})
    return trainer.world_size == 1 and saved_at_step.get(checkpoint_path) == trainer.global_step


def log_export_artifact(logger: WandbLogger, folder: Path, checkpoint: ModelCheckpoint | None) -> None:
    """The exported Hugging Face folder as a W&B ``model`` artifact, aliased ``best`` when it is the best checkpoint."""
    import wandb

    run = logger.experiment
    metadata = {}
    if isinstance(checkpoint, ModelCheckpoint) and checkpoint.best_model_score is not None:
        metadata = {"monitor": checkpoint.monitor, "score": float(checkpoint.best_model_score),
                    "checkpoint": Path(checkpoint.best_model_path).name}
    artifact = wandb.Artifact(f"hf-model-{run.id}", type="model", metadata=metadata,
                              description="lit_finetune export: loads with transformers' from_pretrained")
    artifact.add_dir(str(folder))
    run.log_artifact(artifact, aliases=["latest", "best"] if metadata else ["latest"])


class StopOnRequest(pl.Callback):
    """End fit cleanly once a STOP file appears in the run folder.

    Ends fit cleanly (checkpoints, export and run record as usual) once a STOP file appears in the run folder:
    how a sweep stops a trial early, and a way to end any run by hand (``touch <run folder>/STOP``)."""

    def __init__(self, stop_file: str | None = None):
        """
        Args:
            stop_file: File whose appearance ends training. Default: STOP in the run folder.
        """
        self.stop_file = stop_file
        self.stopped = False

    def check(self, trainer: pl.Trainer) -> None:
        requested = (Path(self.stop_file) if self.stop_file else RunFolder.of(trainer).stop_file).exists()
        if trainer.world_size > 1:  # every rank must stop at the same step
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested and not trainer.sanity_checking:
            trainer.should_stop = self.stopped = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.check(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        self.check(trainer)


class GenerationSamples(pl.Callback):
    """Log what the language model writes for a few fixed prompts after each validation.

    After each validation, continue a few fixed prompts with the model being trained (causal LMs), and log them
    to W&B as a table (``val/samples``) and to samples.jsonl in the run folder, to watch the text get better."""

    def __init__(self, prompts: list[str] | None = None, max_new_tokens: int = 30, do_sample: bool = False):
        """
        Args:
            prompts: Texts to continue; the same ones at every validation.
            max_new_tokens: Length of each continuation.
            do_sample: Sample (temperature 1) instead of greedy decoding.
        """
        self.prompts = prompts or ["The history of the city", "In the early years , the team", "The film was"]
        self.max_new_tokens = max_new_tokens
        self.do_sample = do_sample

    @torch.no_grad()
    def continuations(self, pl_module) -> list[str]:
        model, tokenizer = pl_module.model, pl_module.tokenizer
        was_training = model.training
        model.eval()
        rows = []
        for prompt in self.prompts:  # one at a time: no padding side to get wrong
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(pl_module.device)
            if tokenizer.bos_token_id is not None:
                ids = torch.cat([ids.new_tensor([[tokenizer.bos_token_id]]), ids], dim=1)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_new_tokens,
                                 do_sample=self.do_sample, pad_token_id=tokenizer.pad_token_id
                                 if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
            rows.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        model.train(was_training)
        return rows

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        # Sharded weights are gathered block by block in every process's forward pass, so all of them generate
        # (the same greedy tokens); otherwise the first process alone.
        if trainer.sanity_checking or not (trainer.is_global_zero or is_sharding(trainer)):
            return
        cuda = pl_module.device.type == "cuda"
        # Sampling draws from a generator seeded by the step: the same tokens in every process, and training's own
        # random stream left as it was.
        with torch.random.fork_rng(devices=[pl_module.device] if cuda else []):
            torch.manual_seed(trainer.global_step)
            rows = [{"prompt": p, "continuation": c} for p, c in zip(self.prompts, self.continuations(pl_module))]
        if trainer.is_global_zero:
            record_samples(trainer, rows)


class ResponseSamples(GenerationSamples):
    """Log the model's answers to the first validation prompts after each validation (SFT).

    After each validation, answer the first few validation prompts (greedy) with the model being trained, and log
    the answers like GenerationSamples: a W&B table (``val/samples``) and samples.jsonl in the run folder."""

    def __init__(self, num_prompts: int = 4, max_new_tokens: int = 64):
        """
        Args:
            num_prompts: How many validation prompts to answer, the same ones each time.
            max_new_tokens: Longest answer.
        """
        super().__init__(max_new_tokens=max_new_tokens)
        self.num_prompts = num_prompts
        self.prompts, self.batch = [], None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":  # the data module is set up by now
            self.batch = trainer.datamodule.prompt_batch("validation", self.num_prompts)
            self.prompts = self.batch["prompt"]

    def continuations(self, pl_module) -> list[str]:
        return pl_module.generate_responses(self.batch, self.max_new_tokens)


class Throughput(pl.Callback):
    """Log training speed, model FLOPs utilisation (MFU) and peak memory, per window of batches and per epoch.

    Keys (``_step`` per window of `window` training batches, without it per epoch): ``perf/samples_per_s``,
    ``perf/tokens_per_s`` (non-padding tokens), ``perf/all_tokens_per_s`` (padding included), ``perf/pad_fraction``,
    ``perf/mfu`` (the training FLOPs of the non-padding tokens, counted from the model's config, over the device's
    peak: Lightning's table of GPU peaks in the run's precision, or a matmul measured on CPU), and per epoch
    ``perf/peak_rss_mb`` (this process) and, on a GPU, ``perf/peak_gpu_mb``. Time runs from a window's first batch
    to its last, data loading included, validation left out. The device is synchronised once per window, never per
    batch; token counts stay on the device until then. Each process reports its own device."""

    def __init__(self, window: int = 50):
        """
        Args:
            window: Training batches per logged window.
        """
        self.window = window
        self.matmul_params, self.shape = 0, (0, 0)  # the model's, for its FLOPs per token
        self.peak: float | None = None
        self.started: float | None = None
        self.window_totals = self.epoch_totals = None
        self.batches = 0

    def on_train_start(self, trainer, pl_module) -> None:
        model = pl_module.model
        self.matmul_params, self.shape = flops.matmul_parameters(model), flops.model_shape(model.config)
        self.peak, source = flops.peak_flops(pl_module.device, trainer.precision)
        if trainer.is_global_zero:
            peak = f"{self.peak / 1e12:.2f} TFLOP/s ({source})" if self.peak else f"unknown ({source}): no MFU"
            print(f"Throughput: {self.matmul_params:,} matmul parameters, peak {peak}", flush=True)

    @staticmethod
    def empty() -> dict:
        return {"seconds": 0.0, "samples": 0, "slots": 0, "tokens": 0, "flops": 0}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.window_totals, self.epoch_totals, self.started, self.batches = self.empty(), self.empty(), None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.started is None:  # the epoch's first batch, or the first after a validation
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        mask = batch.get("attention_mask", batch["input_ids"])
        real = mask.sum() if "attention_mask" in batch else mask.numel()  # stays on the device until the window ends
        totals = self.window_totals
        totals["samples"] += len(mask)
        totals["slots"] += mask.numel()
        totals["tokens"] = totals["tokens"] + real
        per_token = flops.training_flops_per_token(self.matmul_params, *self.shape, mask.shape[-1])
        totals["flops"] = totals["flops"] + real * per_token
        self.batches += 1
        if self.batches % self.window == 0:
            self.close_window(trainer, pl_module, log=True)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.FITTING and self.window_totals is not None:
            self.close_window(trainer, pl_module, log=False)
            self.started = None  # validation time is not training time

    def close_window(self, trainer, pl_module, log: bool) -> None:
        """End the window: one device sync, its rates logged (when `log`) and added to the epoch's."""
        if self.started is None:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        totals = self.window_totals
        totals["seconds"] = now - self.started
        totals["tokens"], totals["flops"] = int(totals["tokens"]), float(totals["flops"])
        for key, value in totals.items():
            self.epoch_totals[key] += value
        if log and totals["seconds"] > 0:
            metrics = {f"{key}_step": value for key, value in self.rates(totals).items()}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        self.window_totals, self.started = self.empty(), now

    def rates(self, totals: dict) -> dict:
        seconds = totals["seconds"]
        rates = {"perf/samples_per_s": totals["samples"] / seconds, "perf/tokens_per_s": totals["tokens"] / seconds,
                 "perf/all_tokens_per_s": totals["slots"] / seconds,
                 "perf/pad_fraction": 1 - totals["tokens"] / max(totals["slots"], 1)}
        if self.peak:
            rates["perf/mfu"] = totals["flops"] / seconds / self.peak
        return rates

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.close_window(trainer, pl_module, log=False)
        if not self.epoch_totals or not self.epoch_totals["seconds"]:
            return
        metrics = {**self.rates(self.epoch_totals),
                   "perf/peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if pl_module.device.type == "cuda":
            metrics["perf/peak_gpu_mb"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**20
        pl_module.log_dict(metrics)
