"""Lightning callbacks a run's config lists (``trainer.callbacks``): checkpoints, export, predictions, samples, speed,
stopping, layer freezing and pruning."""

from lit_finetune.callbacks.checkpoint import RunCheckpoint
from lit_finetune.callbacks.finetuning import FreezeLayers, GradualUnfreezing
from lit_finetune.callbacks.pruning import ScheduledPruning
from lit_finetune.callbacks.run import (
    ExportBestModel,
    GenerationSamples,
    PredictionWriter,
    ResponseSamples,
    StopOnRequest,
    Throughput,
)

__all__ = ["ExportBestModel", "FreezeLayers", "GenerationSamples", "GradualUnfreezing", "PredictionWriter",
           "ResponseSamples", "RunCheckpoint", "ScheduledPruning", "StopOnRequest", "Throughput"]
