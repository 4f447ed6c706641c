"""gather_objects, the one helper that exchanges Python objects across processes: two real gloo processes."""

import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port

from lit_finetune.distributed import gather_objects


def gather_in_process(rank: int, world_size: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        results[rank] = gather_objects({"rank": rank, "rows": [f"row-{rank}"] * (rank + 1)}, world_size)
    finally:
        dist.destroy_process_group()


def test_every_process_gets_every_object_in_rank_order():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(gather_in_process, args=(2, free_port(), results), nprocs=2, join=True)
        expected = [{"rank": 0, "rows": ["row-0"]}, {"rank": 1, "rows": ["row-1", "row-1"]}]
        assert results[0] == results[1] == expected


def test_a_single_process_gathers_its_own_object_without_a_process_group():
    assert gather_objects([1, 2], world_size=1) == [[1, 2]]
