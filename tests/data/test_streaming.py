"""Split files as globs and lists, and training corpora read as streams: each process and loader worker reads its
own part (every document once per pass), and a restarted run continues mid-stream."""

import json
import re
import types
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import write_rows
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_finetune.data import readers, streaming
from lit_finetune.data.corpus import CorpusDataModule
from lit_finetune.data.instructions import IGNORE, InstructionDataModule
from lit_finetune.errors import ConfigError, DataError


def write_corpus(folder, files: int, per_file: int) -> list[str]:
    """Documents tagged with their file and line (f<file>d<doc>), one per line."""
    folder.mkdir(exist_ok=True)
    docs = []
    for f in range(files):
        lines = [f"f{f}d{d} talks about things number {d} ." for d in range(per_file)]
        (folder / f"part-{f}.txt").write_text("\n\n".join(lines) + "\n")  # blank lines between: skipped
        docs += [line.split()[0] for line in lines]
    (folder / "dev.txt").write_text("a validation document .\nanother one .\n")
    return docs


def test_globs_and_lists_are_one_split_and_bad_patterns_are_named(tmp_path):
    docs = write_corpus(tmp_path / "c", files=3, per_file=20)
    by_glob = CorpusDataModule("tiny:bert", train_file=str(tmp_path / "c/part-*.txt"),
                               validation_file=str(tmp_path / "c/dev.txt"), max_length=16, cache_dir=str(tmp_path))
    by_list = CorpusDataModule("tiny:bert", train_file=[str(tmp_path / "c/part-0.txt"), str(tmp_path / "c/part-[12].txt")],
                               validation_file=str(tmp_path / "c/dev.txt"), max_length=16, num_proc=2,
                               cache_dir=str(tmp_path))
    raw = by_glob.read_raw()
    assert [text.split()[0] for text in raw["train"]["text"]] == docs  # files in sorted order, documents in order
    for dm in (by_glob, by_list):
        dm.prepare_data()
        dm.setup("fit")
    assert by_glob.meta["documents"] == by_list.meta["documents"] == {"train": 60, "validation": 2}
    # Two processes pack each its part of the documents, so their blocks differ from one process's at the cuts.
    assert 0 < len(by_list.splits["train"]) <= len(by_glob.splits["train"])
    with pytest.raises(DataError, match=r"data.train_file: the pattern '.*nothing-\*.txt' matches no file"):
        CorpusDataModule("tiny:bert", train_file=str(tmp_path / "c/nothing-*.txt"), cache_dir=str(tmp_path)).read_raw()
    (tmp_path / "c/part-9.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(DataError, match=r"data.train_file: the files mix formats \(.jsonl, .txt\)"):
        CorpusDataModule("tiny:bert", train_file=str(tmp_path / "c/part-*"), cache_dir=str(tmp_path)).read_raw()


@pytest.mark.parametrize("files", [2, 3])  # whole files per process, or every other document
def test_each_process_and_worker_reads_its_own_part_of_the_stream(tmp_path, files):
    docs = write_corpus(tmp_path / "c", files=files, per_file=15)
    dm = CorpusDataModule("tiny:bert", train_file=str(tmp_path / "c/part-*.txt"), streaming=True,
                          validation_file=str(tmp_path / "c/dev.txt"), cache_dir=str(tmp_path))
    source = readers.stream_split(dm.files["train"], "data.train_file")
    seen = []
    for rank in range(2):
        part = streaming.process_part(source, types.SimpleNamespace(global_rank=rank, world_size=2), dm.documents_of)
        loader = streaming.StreamLoader(part, batch_size=4, num_workers=2, collate_fn=lambda rows: rows,
                                        progress=lambda: (0, 0))
        seen += [row["text"].split()[0] for batch in loader for row in batch]
    assert sorted(seen) == sorted(docs)  # every document once: none read twice, none left out


class Recorder(pl.LightningModule):
    """Trains a single weight on the batches and keeps every batch it trained on."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.trained: list[tuple] = []

    def training_step(self, batch, batch_idx):
        self.trained.append(tuple(map(tuple, batch["input_ids"].tolist())))
        return (self.weight - batch["input_ids"].float().mean() / 1000) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_end(self):  # spawned processes hand their batches back in a file
        (Path(self.trainer.default_root_dir) / f"rank{self.global_rank}.json").write_text(json.dumps(self.trained))


def run(dm, max_steps, root, ckpt_path=None, processes=1) -> list:
    """The batches each process trained on (a list per process)."""
    model = Recorder()
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", default_root_dir=root, logger=False,
                         enable_progress_bar=False, limit_val_batches=0, enable_model_summary=False,
                         devices=processes, strategy="ddp_spawn" if processes > 1 else "auto",
                         callbacks=[ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=1)])
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return [[tuple(map(tuple, b)) for b in json.loads((Path(root) / f"rank{r}.json").read_text())]
            for r in range(processes)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_restarted_run_continues_mid_stream(tmp_path, num_workers):
    write_corpus(tmp_path / "c", files=2, per_file=40)

    def data():
        return CorpusDataModule("tiny:bert", train_file=str(tmp_path / "c/part-*.txt"), streaming=True,
                                validation_file=str(tmp_path / "c/dev.txt"), max_length=12, batch_size=3,
                                num_workers=num_workers, cache_dir=str(tmp_path))

    [whole] = run(data(), 9, tmp_path / "whole")
    [first] = run(data(), 4, tmp_path / "resumed")
    [rest] = run(data(), 9, tmp_path / "resumed", ckpt_path=str(tmp_path / "resumed/last.ckpt"))
    assert len(whole) == 9 and first + rest == whole
    assert len(set(whole)) == 9  # nine different batches: the stream moved on at each step


@pytest.mark.xdist_group("two_processes")
def test_two_processes_train_on_their_own_parts_in_step_and_resume_mid_stream(tmp_path):
    """DDP (2 processes, gloo): each process trains on its own file, both keep stepping when the shorter part is
    spent (the stream repeats), and a restart continues each process's part where it stopped."""
    write_corpus(tmp_path / "c", files=2, per_file=12)
    (tmp_path / "c/part-1.txt").write_text("\n".join(f"f1d{d} is short ." for d in range(8)))

    def data():
        return CorpusDataModule("tiny:bert", train_file=str(tmp_path / "c/part-*.txt"), streaming=True,
                                validation_file=str(tmp_path / "c/dev.txt"), max_length=12, batch_size=2,
                                cache_dir=str(tmp_path))

    first = run(data(), 3, tmp_path / "run", processes=2)
    rest = run(data(), 12, tmp_path / "run", ckpt_path=str(tmp_path / "run/last.ckpt"), processes=2)
    trained = [a + b for a, b in zip(first, rest)]
    assert [len(t) for t in trained] == [12, 12]
    blocks = [{block for batch in t for block in batch} for t in trained]
    assert not blocks[0] & blocks[1]  # no block of one process's part in the other's
    tok = data().tokenizer
    files = [{f for b in blocks[r] for f in re.findall(r"f(\d)", tok.decode(b))} for r in range(2)]
    assert files == [{"0"}, {"1"}]
    assert len(set(trained[1])) < 12  # the shorter part ran out and started again


def test_streaming_needs_a_run_length_in_steps_and_the_same_processes_to_resume(tmp_path):
    write_corpus(tmp_path / "c", files=1, per_file=5)
    files = dict(train_file=str(tmp_path / "c/part-*.txt"), cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"data.streaming: .* set trainer.max_steps"):
        streaming.check_trainer(pl.Trainer(max_epochs=1, logger=False))
    with pytest.raises(ConfigError, match=r"trainer.val_check_interval is 1.0, .* set it to a number of steps"):
        streaming.check_trainer(pl.Trainer(max_steps=5, logger=False))
    streaming.check_trainer(pl.Trainer(max_steps=5, val_check_interval=2, logger=False))
    with pytest.raises(ConfigError, match=r"data.streaming: examples: nsp draws sentence pairs"):
        CorpusDataModule("tiny:bert", streaming=True, examples="nsp", **files)
    with pytest.raises(ConfigError, match=r"validation documents cannot be held out of a stream"):
        CorpusDataModule("tiny:bert", streaming=True, **files).prepare_data()
    loader = streaming.StreamLoader([1, 2], progress=lambda: (0, 0))
    with pytest.raises(ConfigError, match=r"stream positions are those of 2 processes, and this run has 1"):
        loader.load_state_dict({"batches_done": 3, "positions": [{}, {}]})


def test_instructions_stream_tokenized_like_the_table_and_bad_rows_are_named(tmp_path):
    rows = [{"id": str(i), "prompt": f"question {i} ?", "response": f"answer {i} ."} for i in range(12)]
    for name, part in (("a", rows[:7]), ("b", rows[7:]), ("dev", rows[:2])):
        write_rows(tmp_path / f"{name}.jsonl", part)
    settings = dict(model_name_or_path="tiny:gpt2", validation_file=str(tmp_path / "dev.jsonl"), id_column="id",
                    cache_dir=str(tmp_path))
    table = InstructionDataModule(train_file=str(tmp_path / "[ab].jsonl"), **settings)
    table.prepare_data()
    table.setup("fit")
    stream = InstructionDataModule(train_file=str(tmp_path / "[ab].jsonl"), streaming=True, **settings)
    stream.prepare_data()
    stream.setup("fit")
    streamed = list(stream.train_stream(passes=2))
    assert len(streamed) == 24 and stream.meta["sizes"] == {"validation": 2}  # train is not cached
    assert [r["input_ids"] for r in streamed[:12]] == table.splits["train"]["input_ids"]
    assert [r["labels"] for r in streamed[12:]] == table.splits["train"]["labels"]
    batch = next(iter(stream.train_dataloader()))  # the stream repeats: a batch of 32 from 12 examples
    assert batch["input_ids"].shape[0] == 32 and (batch["labels"] != IGNORE).any()
    write_rows(tmp_path / "b.jsonl", rows[7:9] + [{"id": "x", "prompt": "q", "response": " "}])
    with pytest.raises(DataError, match=r"\[ab\].jsonl \(a streamed batch\), row 10: column 'response' is empty"):
        list(stream.train_stream(passes=1))
