"""What processes exchange beyond torchmetrics' own syncing: the task modules' predictions, the data modules'
stream positions."""

from __future__ import annotations

import torch.distributed as dist


def gather_objects(obj, world_size: int) -> list:
    """Every process's `obj` (any picklable value), in rank order; ``[obj]`` in a single process. A collective:
    every process must call it."""
    if world_size <= 1 or not dist.is_available() or not dist.is_initialized():
        return [obj]
    parts: list = [None] * world_size
    dist.all_gather_object(parts, obj)
    return parts
