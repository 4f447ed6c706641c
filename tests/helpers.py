"""Helpers the tests share: small data files and ways to run the real CLI."""

from __future__ import annotations

import csv
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "classification" / "quickstart.yaml"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write rows as csv/tsv/jsonl by the file's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if path.suffix == ".tsv" else ",")
        writer.writeheader()
        writer.writerows(rows)
    return path


def sentiment_rows(n: int, seed: int, prefix: str) -> list[dict]:
    """A tiny task a 2-layer model learns in a few steps: the label word is in the text."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ("bad", "good")[i % 2]
        filler = " ".join(rng.choice(["the", "movie", "plot", "was", "really", "quite", "acting"]) for _ in range(rng.randint(1, 8)))
        rows.append({"id": f"{prefix}-{i}", "text": f"{filler} {label} {filler}", "label": label})
    return rows


def tiny_splits(folder: Path, suffix: str = ".csv") -> dict[str, Path]:
    """train / validation / test files with string labels (64 / 32 / 16 rows)."""
    return {split: write_rows(folder / f"{split}{suffix}", sentiment_rows(n, seed, split))
            for split, n, seed in (("train", 64, 0), ("validation", 32, 1), ("test", 16, 2))}


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]]) -> Path:
    """A CoNLL-2003-style file (word POS chunk NER, -DOCSTART- first) of (words, tags) sentences."""
    lines = ["-DOCSTART- -X- -X- O", ""]
    for words, tags in sentences:
        lines += [f"{w} NN B-NP {t}" for w, t in zip(words, tags)] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def entity_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """A tiny NER task a 2-layer model learns in a few steps: each entity is always the same words."""
    rng = random.Random(seed)
    fillers = ["the", "a", "visited", "met", "in", "and", "today", "with", "saw", "from"]
    entities = [(["john"], "PER"), (["mary", "smith"], "PER"), (["paris"], "LOC"), (["new", "york"], "LOC"),
                (["acme"], "ORG")]
    sentences = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(2, 5)):
            if rng.random() < 0.5:
                words.append(rng.choice(fillers))
                tags.append("O")
            else:
                entity, kind = rng.choice(entities)
                words += entity
                tags += [f"{'B' if i == 0 else 'I'}-{kind}" for i in range(len(entity))]
        sentences.append((words, tags))
    return sentences


def tiny_args(data: dict[str, Path], run_dir: Path, *extra: str, config: Path = QUICKSTART) -> list[str]:
    """A shipped recipe switched to a tiny random model and the tiny data: what the CLI tests run."""
    args = ["--config", str(config),
            "--model.init_args.model_name_or_path=tiny:bert", "--model.init_args.learning_rate=3e-3",
            "--model.init_args.warmup=0", f"--trainer.default_root_dir={run_dir}",
            "--data.init_args.text_column=text", "--data.init_args.text_pair_column=null",
            "--data.init_args.batch_size=8", "--trainer.max_epochs=2", "--trainer.accelerator=cpu",
            "--trainer.enable_model_summary=false"]
    for split in ("train", "validation", "test", "predict"):
        args.append(f"--data.init_args.{split}_file={data.get(split) or 'null'}")
    return args + list(extra)


def pretrained_tiny_bert(folder: Path, **sizes) -> Path:
    """The tiny BERT preset saved as a pretrained folder (weights and tokenizer), for what needs weights to read, such
    as 4-bit loading, which quantizes them as it reads them."""
    import torch
    from transformers import AutoModel

    from lit_finetune.backbones import load_model, load_tokenizer

    torch.manual_seed(0)
    load_model("tiny:bert", AutoModel, **sizes).save_pretrained(folder)
    load_tokenizer("tiny:bert").save_pretrained(folder)
    return folder


def free_port() -> int:
    """A TCP port nothing listens on now, for a test's process group to rendezvous on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shell_env(extra: dict | None = None) -> dict:
    """The environment of a user's shell: offline, and without the W&B service that in-process tests started
    (wandb exports WANDB_SERVICE, and child processes would share that service instead of running their own)."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**env, **OFFLINE_ENV, **(extra or {})}


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run `lit-finetune` in a subprocess, as a user would."""
    result = subprocess.run([sys.executable, "-m", "lit_finetune", *args], cwd=cwd, env=shell_env(env),
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"lit-finetune {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def one_line_error(capsys, args: list[str]) -> str:
    """Run the `lit-finetune` entry point in this process, expecting it to stop with exit code 2 and exactly one
    ``lit-finetune: error:`` line and no traceback; that line."""
    from lit_finetune import commands

    with pytest.raises(SystemExit) as exit_info:
        commands.main(args)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lit-finetune: error: ")]
    assert exit_info.value.code == 2 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
    return errors[0]


def metrics_rows(run_dir: Path) -> list[dict]:
    """The rows of a run's metrics.csv."""
    return list(csv.DictReader((run_dir / "metrics.csv").open()))


def logged_values(run_dir: Path, key: str) -> list[float]:
    """Every value logged for `key`, in order."""
    return [float(r[key]) for r in metrics_rows(run_dir) if r.get(key)]


def wandb_records(run_dir: Path, timeout_s: float = 60.0) -> list:
    """The records of a run's offline W&B file, as `wandb sync` will upload them (a LevelDB-style log of protobufs:
    32 KiB blocks of chunks, each with a 7-byte header: crc32, length, type). `wandb.finish()` can return before
    W&B's service has written the whole file on a busy machine, so this waits for the run's closing record."""
    import time

    path = next((run_dir / "wandb").glob("*run-*/run-*.wandb"))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            records = parse_wandb_file(path.read_bytes())
        except Exception:  # a record still being written
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def parse_wandb_file(data: bytes) -> list:
    """The protobuf records of a .wandb file's bytes."""
    import struct

    from wandb.proto import wandb_internal_pb2

    records, pos, pending = [], 7, b""  # the file opens with a 7-byte ":W&B" header
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if room >= 7 else (0, 0, 0)
        if kind == 0:  # block padding
            pos += room
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


# A pinned-loss run: seeded, fp32 on CPU, four optimizer steps, nothing but the steps (no validation, checkpoint,
# export or other callback), each step's loss in metrics.csv.
PINNED_RUN = ("--seed_everything=42", "--trainer.max_steps=4", "--trainer.max_epochs=-1", "--trainer.log_every_n_steps=1",
              "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0", "--trainer.enable_checkpointing=false",
              "--trainer.callbacks=[]", "--trainer.logger=lit_finetune.training.loggers.RunCSVLogger",
              "--trainer.precision=32-true", "--trainer.accelerator=cpu", "--trainer.devices=1",
              "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false")


def step_losses(run_dir: Path) -> list[float]:
    """Each training step's loss as logged: ``train/loss_step`` (tasks that also log an epoch mean) or ``train/loss``."""
    return logged_values(run_dir, "train/loss_step") or logged_values(run_dir, "train/loss")


def first_losses(run_dir: Path, *args: str) -> list[float]:
    """The first four step losses of `lit-finetune fit` with `args`, run in this process as a pinned-loss run."""
    from lit_finetune.commands.fit import LitFinetuneCLI

    LitFinetuneCLI(args=["fit", *args, f"--trainer.default_root_dir={run_dir}", *PINNED_RUN])
    return step_losses(run_dir)


def assert_pinned(losses: list[float], pinned: list[float]) -> None:
    """The loss math is unchanged: the first four step losses within 1e-4 of the pinned ones. Change the pinned
    values only on purpose, in the commit that changes the loss (and say why there)."""
    assert len(losses) == 4, losses
    assert losses == pytest.approx(pinned, abs=1e-4), f"first four step losses {losses}, pinned {pinned}"
