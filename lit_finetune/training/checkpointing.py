"""Checkpoint files that lose nothing: written atomically beside their destination, read without running code, and
never of a non-finite model (the check is here; RunCheckpoint decides when to save)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lit_finetune import io as lf_io
from lit_finetune.errors import LitFinetuneError


class CheckpointError(LitFinetuneError):
    """A checkpoint that cannot be read (corrupted, truncated, not a checkpoint) or that holds objects other than
    tensors and plain values."""


class NonFiniteError(LitFinetuneError):
    """Training produced NaN or inf (loss, gradients or weights)."""


SHARDED_META = "meta.pt"  # a sharded checkpoint folder's file of everything but the weights and optimizer (Lightning's)


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a checkpoint folder of shards (FSDP2 with save_distributed_checkpoint), not one file."""
    return Path(path).is_dir() and (Path(path) / SHARDED_META).is_file()


def read_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False, weights: bool = True) -> dict:
    """A checkpoint's contents, read with ``weights_only=True``: tensors, containers and plain values only, so a
    crafted file cannot run code. A sharded checkpoint folder is read as one checkpoint: its ``state_dict``
    consolidated from the shards (unless `weights` is off, for callers that read only its settings).

    Raises: CheckpointError naming the file when it is missing, unreadable or holds anything else.
    """
    path = Path(path)
    if is_sharded_checkpoint(path):
        checkpoint = read_checkpoint(path / SHARDED_META, map_location, mmap)
        if weights:
            checkpoint["state_dict"] = consolidated_weights(path)
        return checkpoint
    if not path.is_file():
        raise CheckpointError(f"--ckpt_path: checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        reason = str(err).splitlines()[-1] if str(err) else type(err).__name__
        raise CheckpointError(f"--ckpt_path: refusing {path}: it holds objects that are not tensors or plain values, "
                              f"which could run code when loaded ({reason.strip()[:200]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"--ckpt_path: {path} is not a readable checkpoint (truncated or corrupted?): "
                              f"{str(err).splitlines()[0][:200] if str(err) else type(err).__name__}") from None


def consolidated_weights(folder: Path) -> dict:
    """The full model state dict of a sharded checkpoint folder, read in this one process without a process group
    (torch.distributed.checkpoint's offline reader, as Lightning's own consolidation uses); the optimizer's shards
    are left unread."""
    from torch.distributed.checkpoint import FileSystemReader  # noqa: PLC0415  (only sharded runs need it)
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner  # noqa: PLC0415
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict  # noqa: PLC0415

    checkpoint: dict = {}
    try:
        _load_state_dict(checkpoint, storage_reader=FileSystemReader(folder),
                         planner=_EmptyStateDictLoadPlanner(keys={"state_dict"}), no_dist=True)
    except (RuntimeError, OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"--ckpt_path: {folder} is not a readable sharded checkpoint: "
                              f"{str(err).splitlines()[0][:200] if str(err) else type(err).__name__}") from None
    return checkpoint["state_dict"]


def non_finite_tensors(tensors) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or inf."""
    return [name for name, t in tensors if torch.is_floating_point(t) and not torch.isfinite(t).all()]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint files, written to a temporary file beside the destination and renamed into
    place (Lightning's own write goes through a temporary folder elsewhere and copies, which a full disk leaves
    half-written), and read without running code."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        # Streamed into the file, not serialized in memory first: a second copy of the weights and optimizer
        # state would be the run's peak memory (Lightning's own save buffers the whole checkpoint).
        with lf_io.atomic_file(path, "wb") as f:
            try:
                torch.save(checkpoint, f)
            except RuntimeError as err:  # torch reports a failed write as its own error, the OSError as its context
                if isinstance(err.__context__, OSError):
                    raise err.__context__ from err
                raise

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None) -> dict:
        return read_checkpoint(path, map_location)
