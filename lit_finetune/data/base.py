"""What every data module shares: the backbone's tokenizer, the tokenized-data cache, batch sizes and loaders; and
what every task's data module shares: a hub dataset or one local file per split."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import datasets
import lightning.pytorch as pl
import pyarrow as pa
import pyarrow.compute as pc
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, RandomSampler
from transformers.trainer_pt_utils import LengthGroupedSampler

from lit_finetune import backbones, cache
from lit_finetune.bounds import NonNegativeInt, PositiveInt, plain_hparams
from lit_finetune.data import readers
from lit_finetune.errors import ConfigError, DataError

STAGE_SPLITS = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",)}


class EpochSeeded:
    """Mixed into a torch or transformers sampler that draws from ``self.generator``: each epoch's order comes from
    (seed, epoch) alone, so a resumed epoch replays the interrupted one's order. Lightning calls ``set_epoch``."""

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator.manual_seed(self.seed + 1_000_003 * self.epoch)
        return super().__iter__()


class EpochShuffle(EpochSeeded, RandomSampler):
    """A random order per epoch (a RandomSampler, so DDP swaps in its DistributedSampler)."""

    def __init__(self, data_source, seed: int):
        super().__init__(data_source, generator=torch.Generator())
        self.seed = seed


class EpochLengthGrouped(EpochSeeded, LengthGroupedSampler):
    """transformers' length-grouped order per epoch."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed


class LongestFirst(torch.utils.data.Sampler):
    """Evaluation order: within each run of `chunk` examples, the longest first (ties in dataset order), so each
    batch pads to little and the first shows at once whether memory suffices, while the data's order holds from
    chunk to chunk (a run that evaluates its first N batches still sees the data's first examples). Writers put
    predictions back in dataset order."""

    def __init__(self, lengths: list[int], chunk: int):
        self.order = [i for start in range(0, len(lengths), chunk)
                      for i in sorted(range(start, min(start + chunk, len(lengths))), key=lambda i: -lengths[i])]

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def token_lengths(dataset) -> list[int] | None:
    """Each example's token count (its ``length`` column, or its ``input_ids``' length, counted by Arrow), or None
    for data that is not a table of flat token lists (packed rows, multiple-choice lists of choices)."""
    if not isinstance(dataset, datasets.Dataset) or "input_ids" not in dataset.column_names:
        return None
    if "length" in dataset.column_names:
        return readers.column(dataset, "length").to_pylist()
    ids = dataset.with_format("arrow")["input_ids"]
    if not pa.types.is_list(ids.type) or pa.types.is_list(ids.type.value_type):
        return None
    return pc.list_value_length(ids).to_pylist()


def in_dataset_order(predictions: list, batch_indices: list) -> list:
    """`predict`'s rows in the order of the predicted data (LongestFirst batches it longest first): rows
    sorted by the dataset index Lightning recorded for each, where every batch gave one row per example."""
    rows = [row for batch in predictions for row in batch]
    batches = batch_indices[0] if batch_indices else []
    indices = [i for batch in batches for i in batch]
    if len(batches) != len(predictions) or len(indices) != len(rows):
        return rows  # the rows are not one per example (or no indices were recorded)
    return [row for _, row in sorted(zip(indices, rows), key=lambda pair: pair[0])]


class _SkipFirst:
    """An index sampler whose next iteration leaves out its first `n` batches (drawn, never loaded)."""

    def __init__(self, sampler, n: int):
        self.sampler, self.n = sampler, n

    def __iter__(self):
        n, self.n = self.n, 0
        return itertools.islice(iter(self.sampler), n, None)

    def __len__(self) -> int:
        return len(self.sampler)


class ResumableLoader(DataLoader):
    """Training batches that a resumed run continues mid-epoch, like the run it resumes: Lightning saves this
    loader's state (epoch, batches done) in each checkpoint, and on resume the batches done are skipped without
    being loaded. Its length stays the epoch's, as Lightning counts batches from the checkpoint's position."""

    def __init__(self, *args, progress=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.progress = progress  # () -> (epoch, batches done in it)
        self.skip = 0
        self._skipping = 0

    def state_dict(self) -> dict:
        epoch, done = self.progress() if self.progress else (0, 0)
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        epoch, done = state.get("epoch", 0), state.get("batches_done", 0)
        if done >= len(self):  # saved at the end of an epoch: the next one starts from its first batch
            epoch, done = epoch + 1, 0
        # Lightning draws the first batches before it tells samplers the epoch of a resumed run.
        for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
        self.skip = done

    @property
    def _index_sampler(self):
        sampler = super()._index_sampler
        return _SkipFirst(sampler, self._skipping) if self._skipping else sampler

    def __iter__(self):
        self._skipping, self.skip = self.skip, 0
        try:
            return super().__iter__()
        finally:
            self._skipping = 0


# Settings that change how tokenized data is batched, loaded or found, not what it holds (the tokenizer is keyed by
# its fingerprint, not its name).
NOT_IN_CACHE_KEY = ("batch_size", "eval_batch_size", "num_workers", "cache_dir", "cache_shared", "model_name_or_path",
                    "tokenizer_name_or_path", "trust_remote_code", "packing")


class TokenizedDataModule(pl.LightningDataModule):
    """Base of the data modules: tokenize once into a cache, load it, batch it.

    ``prepare_data`` tokenizes once (the subclass's ``build_splits``) into the cache, ``setup`` loads it
    (``load_splits``) and the subclass's ``collator()`` batches it."""

    cache_family = "data"  # the cache's folder for this kind of data; each data module names its own

    def __init__(
        self,
        model_name_or_path: str = "minilm",
        batch_size: PositiveInt = 32,
        eval_batch_size: PositiveInt | None = None,
        num_workers: NonNegativeInt = 0,
        num_proc: PositiveInt | None = None,
        cache_dir: str | None = None,
        cache_shared: bool = True,
        trust_remote_code: bool = False,
        tokenizer_name_or_path: str | None = None,
    ):
        """
        Args:
            model_name_or_path: Backbone whose tokenizer is used (linked from the model's own setting).
            batch_size: Training examples per batch (per device).
            eval_batch_size: Examples per batch for validation/test/predict; defaults to 2 x batch_size.
            num_workers: DataLoader worker processes.
            num_proc: Processes that tokenize the data before training (`datasets`' ``map``); one when unset. In
                the cache key, since a corpus's blocks are packed per batch of documents within each process's part.
            cache_dir: Where tokenized data is cached; default ``$LIT_FINETUNE_CACHE`` or ~/.cache/lit_finetune.
            cache_shared: Whether every node of a multi-node job sees the same cache_dir (a network file system):
                then only the job's first process tokenizes. False for node-local disks: the first process of each
                node tokenizes into its own. One node: the same either way.
            trust_remote_code: Allow the tokenizer's own code from the hub to run.
            tokenizer_name_or_path: Tokenizer when it is not the backbone's own (linked from the model's setting).
        """
        super().__init__()
        self.save_hyperparameters(logger=False)  # every subclass's arguments; W&B gets them from RunConfig
        plain_hparams(self)
        self.prepare_data_per_node = not cache_shared  # Lightning's switch: local rank 0 of each node, or rank 0
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.cache_root = Path(cache_dir).expanduser() if cache_dir else cache.default_cache_dir()
        self.tokenizer = backbones.load_tokenizer(model_name_or_path, trust_remote_code, tokenizer_name_or_path)
        self.tokenizer_fingerprint = cache.tokenizer_fingerprint(self.tokenizer)
        self.splits: datasets.DatasetDict | None = None

    # ----------------------------------------------------------------------------------------------------------- #
    # Tokenizing once (local rank 0)

    def prepare_data(self) -> None:
        """Read, check and tokenize every split once into the cache folder that ``setup`` loads; nothing to do when
        the cache holds them already."""
        target = self.cache_path()
        if cache.is_cached(target):
            return
        # The maps' intermediate results stay out of the Hugging Face cache: the result is cached below, and the
        # first processes of two nodes tokenizing at once (node-local caches, a shared home) must not share files.
        caching = datasets.is_caching_enabled()
        datasets.disable_caching()
        try:
            splits, meta = self.build_splits(target.name)
        finally:
            if caching:
                datasets.enable_caching()
        splits = datasets.DatasetDict(splits)
        meta = {**meta, "sizes": {split: len(ds) for split, ds in splits.items()},
                "tokenized_by_rank": self.trainer.global_rank if self.trainer else 0,
                "tokenized_on_node": self.trainer.node_rank if self.trainer else 0, "pid": os.getpid()}
        cache.save(splits, meta, target)
        print(f"{self.summary(meta)}; cached in {target}", flush=True)

    def build_splits(self, fingerprint: str) -> tuple[dict, dict]:
        """The tokenized splits (split -> Dataset) and what the cache keeps beside them (read back by ``setup``);
        `fingerprint` names the cache entry, for the fingerprints of ``datasets``' own maps."""
        raise NotImplementedError

    def summary(self, meta: dict) -> str:
        """The line printed once the splits are cached."""
        return f"Tokenized {meta['sizes']} examples"

    def source_files(self) -> dict[str, str]:
        """The local files the data comes from (split, or split and number -> path), whose contents key the cache;
        a pattern's matches are listed, so a file added to it is tokenized too."""
        found = {}
        for split, files in getattr(self, "files", {}).items():
            if split == "train" and self.hparams.get("streaming"):
                continue  # a streamed split is never cached: hashing its corpus on every process would be waste
            paths = readers.expand_files(files, f"data.{split}_file")
            found.update({split if len(paths) == 1 else f"{split}.{i}": str(p) for i, p in enumerate(paths)})
        return found

    def cache_key(self) -> dict:
        """Everything the tokenized data depends on: every setting but batch sizes, workers and cache location, the
        input files' contents and the tokenizer's fingerprint. Derived, not listed, so a new knob is never missed."""
        settings = {k: v for k, v in self.hparams.items() if k not in NOT_IN_CACHE_KEY}
        return dict(settings=settings, sources=cache.file_signatures(self.source_files()),
                    tokenizer=self.tokenizer_fingerprint)

    def cache_path(self) -> Path:
        return cache.cache_path(self.cache_root, self.cache_family, self.cache_key())

    # ----------------------------------------------------------------------------------------------------------- #
    # Loading (every rank) and batching

    def load_splits(self, stage: str | None, test_needs_labels: bool = True) -> dict:
        """Load what ``prepare_data`` cached, failing early when the stage needs a split (or test labels) the data
        lacks; returns the cache's metadata."""
        self.splits, meta = cache.load(self.cache_path())
        for split in STAGE_SPLITS.get(stage, ()):
            if split not in self.splits:
                raise ConfigError(f"data: stage {stage!r} needs a {split} split; give data.{split}_file or a hub "
                                  "dataset that has one")
        if stage == "test" and test_needs_labels and "labels" not in self.splits["test"].column_names:
            raise DataError("data: the test split has no labels (targets), so test metrics cannot be computed; use "
                            "`predict` for unlabeled data")
        return meta

    def collator(self):
        """The callable that pads a list of examples into a batch of the module's batch contract."""
        raise NotImplementedError

    def loader(self, split: str, train: bool = False) -> DataLoader:
        """Batches of one split; training batches of similar length when the module has ``group_by_length`` on
        (its examples then carry a ``length``)."""
        ds, sampler = self.splits[split], None
        if train and self.hparams.get("group_by_length"):
            seed = self.hparams.get("seed", int(os.environ.get("PL_GLOBAL_SEED", 0)))
            sampler = EpochLengthGrouped(self.hparams.batch_size, readers.column(ds, "length").to_pylist(), seed)
        return self.dataloader(ds, train, self.collator(), sampler=sampler)

    def dataloader(self, dataset, train: bool, collate_fn, sampler=None, drop_last: bool = False) -> DataLoader:
        """Training batches of ``batch_size`` (shuffled by epoch unless a sampler is given) that resume mid-epoch,
        evaluation ones of ``eval_batch_size``, longest examples first within runs of 50 batches."""
        if not train:
            lengths = token_lengths(dataset) if sampler is None else None
            return DataLoader(dataset, batch_size=self.eval_batch_size, drop_last=drop_last, collate_fn=collate_fn,
                              sampler=sampler or (LongestFirst(lengths, 50 * self.eval_batch_size) if lengths
                                                  else None),
                              num_workers=self.hparams.num_workers, persistent_workers=self.hparams.num_workers > 0)
        sampler = sampler or EpochShuffle(dataset, int(os.environ.get("PL_GLOBAL_SEED", 0)))
        return ResumableLoader(dataset, batch_size=self.hparams.batch_size, sampler=sampler, drop_last=drop_last,
                               collate_fn=collate_fn, num_workers=self.hparams.num_workers,
                               persistent_workers=self.hparams.num_workers > 0, progress=self.training_progress)

    def training_progress(self) -> tuple[int, int]:
        """(epoch, training batches done in it), what a checkpoint of the train loader records."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def predict_split(self) -> str:
        """What `predict` runs on: the predict data, else test, else validation."""
        for split in ("predict", "test", "validation"):
            if split in self.splits:
                return split
        raise ConfigError("data: nothing to predict on; give data.predict_file or data.test_file")

    def predict_dataloader(self) -> DataLoader:
        return self.loader(self.predict_split())


class SplitsDataModule(TokenizedDataModule):
    """Base of a task's data module: a hub dataset or one local file per split.

    The splits (formats: see each module) are read by ``read_raw``; ``hold_out`` carves validation data from train
    for modules that have ``validation_fraction`` and ``seed``."""

    def __init__(
        self,
        model_name_or_path: str = "minilm",
        dataset_name: str | None = None,
        dataset_config: str | None = None,
        train_file: str | list[str] | None = None,
        validation_file: str | list[str] | None = None,
        test_file: str | list[str] | None = None,
        predict_file: str | list[str] | None = None,
        max_train_examples: PositiveInt | None = None,
        **kwargs,
    ):
        """
        Args:
            dataset_name: Hub dataset id; leave unset to read local files.
            dataset_config: Hub dataset configuration name, if the dataset has several.
            train_file: Local training file; like every split's file, a glob pattern (``data/train-*.jsonl``) or a
                list of files or patterns is read as one split.
            validation_file: Local validation file.
            test_file: Local test file (its labels give test metrics; also the default data for ``predict``).
            predict_file: Local file to predict on (labels not needed); defaults to the test data.
            max_train_examples: Keep only the first N training examples (quick runs, learning curves).
            **kwargs: Tokenizer, batch sizes, workers and cache (see TokenizedDataModule).
        """
        super().__init__(model_name_or_path=model_name_or_path, **kwargs)
        files = {"train": train_file, "validation": validation_file, "test": test_file, "predict": predict_file}
        self.files = {split: path for split, path in files.items() if path}
        if not dataset_name and not self.files:
            raise ConfigError("data: give either data.dataset_name (a hub dataset) or local files "
                              "(data.train_file, data.validation_file, data.test_file, data.predict_file)")

    # ----------------------------------------------------------------------------------------------------------- #
    # Reading (rank 0, in prepare_data)

    def read_raw(self, skip: tuple[str, ...] = ()) -> tuple[dict[str, datasets.Dataset], dict[str, str]]:
        """Raw splits from the hub (``dataset_name``, ``dataset_config``) and local files (``self.files``), the
        training rows cut to ``max_train_examples``, and each split's source name for error messages; the splits in
        `skip` (a streamed train split) are not read."""
        h = self.hparams
        raw, sources = {}, {}
        if h.dataset_name:
            wanted = [split for split in ("train", "validation", "test") if split not in skip]
            # With a split skipped, the validation split is loaded alone, so that the skipped one is not downloaded.
            hub = readers.read_hub(h.dataset_name, h.dataset_config) if not skip else \
                {"validation": readers.read_hub(h.dataset_name, h.dataset_config, split="validation")}
            raw = {split: hub[split] for split in wanted if split in hub}
            sources = {split: f"{h.dataset_name} [{split}]" for split in raw}
        for split, files in self.files.items():
            if split not in skip:
                raw[split], sources[split] = readers.read_split(
                    files, f"data.{split}_file", lambda path, split=split: self.read_local(split, str(path)))
        if "train" in raw and h.max_train_examples:
            raw["train"] = raw["train"].select(range(min(h.max_train_examples, len(raw["train"]))))
        for split, ds in raw.items():
            if len(ds) == 0:
                raise DataError(f"{sources[split]}: the {split} split has no rows")
        return raw, sources

    def read_local(self, split: str, path: str) -> datasets.Dataset:
        """One split's local file; modules whose files have a format of their own read it here."""
        return readers.read_file(path, f"data.{split}_file")

    def hold_out(self, train: datasets.Dataset, class_names: list[str] | None = None
                 ) -> tuple[datasets.Dataset, datasets.Dataset]:
        """Carve a seeded validation split of ``validation_fraction`` from train, stratified by ``labels`` when
        `class_names` are given."""
        fraction = self.hparams.validation_fraction
        if not 0 < fraction < 1 or len(train) < 2:
            raise ConfigError(f"data.validation_fraction: got {fraction} with {len(train)} training examples and no "
                              "validation data; give data.validation_file, or a fraction in (0, 1) of at least 2")
        stratify = None
        if class_names is not None:
            train = train.cast_column("labels", datasets.ClassLabel(names=class_names))
            stratify = "labels"
        try:
            parts = train.train_test_split(test_size=fraction, seed=self.hparams.seed, stratify_by_column=stratify)
        except ValueError:  # a class too rare to stratify: fall back to a plain seeded split
            parts = train.train_test_split(test_size=fraction, seed=self.hparams.seed)
        rank_zero_info(f"No validation data given: held out {len(parts['test'])} of {len(train)} training examples "
                       f"(data.validation_fraction={fraction}, seed={self.hparams.seed}).")
        return parts["train"], parts["test"]
