"""Training data read as a stream (``data.streaming: true``), for corpora larger than memory or than a tokenized
cache: `datasets` reads the files (or the hub dataset) lazily, the data module tokenizes (and packs) batches of
documents on the fly, each process reads its own part of the stream, and the stream repeats until
``trainer.max_steps``. Validation data is small, so it is still tokenized once and cached.

Every process gets its own part with `datasets`' ``split_dataset_by_node``: whole files when their number divides
evenly between the processes, else every n-th example. Loader workers divide a process's files the same way. No
example is read twice in a pass over the stream, and none is left out. A restarted run continues mid-stream:
torchdata's ``StatefulDataLoader`` saves each worker's position, and each process's position goes into the
checkpoint.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import datasets
from datasets.distributed import split_dataset_by_node
from torchdata.stateful_dataloader import StatefulDataLoader

from lit_finetune.data import readers
from lit_finetune.distributed import gather_objects
from lit_finetune.errors import ConfigError, DataError

KEPT_STATES = 8  # positions kept behind the newest batch drawn: Lightning draws ahead of the step it trains


def check_trainer(trainer) -> None:
    """A stream has no length to count epochs or schedules by, so the run's length and validation are in steps."""
    if trainer is None:
        return
    if trainer.max_steps is None or trainer.max_steps < 0:
        raise ConfigError("data.streaming: a stream has no length, so the run needs one in steps; set "
                          "trainer.max_steps (the stream repeats until then)")
    interval = trainer.val_check_interval
    if trainer.limit_val_batches != 0 and not (isinstance(interval, int) and not isinstance(interval, bool)):
        raise ConfigError(f"data.streaming: trainer.val_check_interval is {interval!r}, a share of an epoch, but a "
                          "stream repeats until trainer.max_steps and has no epoch end; set it to a number of steps "
                          "(e.g. 500)")


def load_splits(data_module, stage: str | None) -> dict:
    """A streaming data module's ``setup``: the cached splits the stage needs and, when it fits on a stream, its
    training stream (``data_module.train_stream()``) as the train split, checked before training; the cache's
    metadata."""
    streamed = data_module.hparams.streaming and stage == "fit"
    if streamed:
        check_trainer(data_module.trainer)
    meta = data_module.load_splits("validate" if streamed else stage)
    if streamed:
        data_module.splits["train"] = data_module.train_stream()
    return meta


def training_source(files, dataset_name: str | None, dataset_config: str | None,
                    **read) -> tuple[datasets.IterableDataset, str, dict]:
    """The training stream of local files (`files`, read with `read`'s settings) or of a hub dataset, the name
    errors give it, and its first row, which callers check before training starts."""
    if files:
        source, name = readers.stream_split(files, "data.train_file", **read), str(files)
    else:
        source = readers.read_hub(dataset_name, dataset_config, "train", streaming=True)
        name = f"{dataset_name} [train]"
    first = next(iter(source.take(1)), None)
    if first is None:
        raise DataError(f"{name}: the train split has no rows")
    return source, name, first


def loader(data_module, stream: datasets.IterableDataset, collate_fn) -> StreamLoader:
    """Training batches of `stream` with the data module's batch size and workers, resumable."""
    h = data_module.hparams
    return StreamLoader(stream, batch_size=h.batch_size, collate_fn=collate_fn, num_workers=h.num_workers,
                        progress=data_module.training_progress, trainer=data_module.trainer)


def process_part(stream: datasets.IterableDataset, trainer,
                 prepare: Callable[[datasets.IterableDataset], datasets.IterableDataset]) -> datasets.IterableDataset:
    """This process's part of `stream`, made into examples by `prepare` (tokenizing, packing): one pass."""
    rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    if world_size > 1:
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
    return prepare(stream)


class StreamLoader(StatefulDataLoader):
    """Batches of a stream that a restarted run continues where it stopped.

    Lightning draws a batch ahead of the one it trains and asks for the loader's state when it checkpoints, so the
    position saved is the one after the batches trained (``progress()``), looked up among the last few drawn. Every
    process's position is saved, since each reads its own part of the stream.
    """

    def __init__(self, *args, progress: Callable[[], tuple[int, int]], trainer=None, **kwargs):
        with warnings.catch_warnings():  # torchdata calls a torch function that has been deprecated
            warnings.filterwarnings("ignore", message=".*set_vital.*")
            super().__init__(*args, **kwargs)
        self.progress, self.trainer = progress, trainer
        self.start = 0  # batches trained when the iteration starts (a restored run's)
        self.states: dict[int, dict] = {}

    def __iter__(self):
        return self._recorded(super().__iter__())

    def _recorded(self, batches):
        drawn = self.start
        self.states = {drawn: super().state_dict()}
        for batch in batches:
            drawn += 1
            self.states[drawn] = super().state_dict()
            self.states.pop(drawn - KEPT_STATES, None)
            yield batch

    def state_dict(self) -> dict:
        _, trained = self.progress()
        position = self.states.get(trained)
        if position is None:  # nothing drawn yet: where the loader would start
            position = super().state_dict() if not self.states else self.states[max(self.states)]
        world_size = self.trainer.world_size if self.trainer is not None else 1
        return {"batches_done": trained, "positions": gather_objects(position, world_size)}

    def load_state_dict(self, state: dict) -> None:
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        positions = state["positions"]
        if len(positions) != world_size:
            raise ConfigError(f"--ckpt_path: the checkpoint's stream positions are those of {len(positions)} "
                              f"processes, and this run has {world_size}; each process reads its own part of the "
                              f"stream, so resume with {len(positions)} processes (or start the stream afresh)")
        self.start = state["batches_done"]
        super().load_state_dict(positions[rank])
