"""IMDB, the worked example of BERT-style fine-tuning, read from the layout users download (aclImdb/{train,test}/
{pos,neg}/*.txt): accuracy of head, tail and head_tail truncation, with a Hugging Face Trainer run beside them.

The subset is built under /tmp (never in the repo): ../shared/data/imdb/aclImdb_labeled.tar.gz extracted once, then
the first `--train_reviews` / 2 training and `--test_reviews` / 2 test reviews of each class (files in name order)
linked into class folders. lit_finetune reads those folders directly (`data.train_file: <folder>`) with
configs/classification/imdb.yaml; its runs differ only in `data.truncation`, plus one with the stock pooler head
(`model.pooling: pooler`), the Trainer's, so that row compares like with like. The Trainer reads the same files with
plain Python and truncates the head, as its tokenizer does.

    python benchmarks/imdb.py                                       # 2,000 train / 2,000 test reviews, 128 tokens
    python benchmarks/imdb.py --train_reviews 64 --test_reviews 64  # smoke run

Set HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false on a machine offline.
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
from pathlib import Path

from common import (
    child_result,
    emit_line,
    fit_run,
    minilm_path,
    new_report,
    provenance_lines,
    trainer_arguments,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().relative_to(REPO)
ARCHIVE = Path("../shared/data/imdb/aclImdb_labeled.tar.gz")  # relative to the repo root (main() changes into it)
CONFIG = "configs/classification/imdb.yaml"
RUNS = {
    "head": ["--data.init_args.truncation=head"],
    "tail": ["--data.init_args.truncation=tail"],
    "head_tail": ["--data.init_args.truncation=head_tail"],
    "head, pooler head": ["--data.init_args.truncation=head", "--model.init_args.pooling=pooler"],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train_reviews", type=int, default=2000)
    parser.add_argument("--test_reviews", type=int, default=2000)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data_dir", default="/tmp/lit_finetune_imdb", help="where the archive and subset go")
    parser.add_argument("--out", default="runs/benchmarks/imdb", help="folder of all runs")
    parser.add_argument("--output", default="runs/benchmarks/imdb.json", help="JSON report")
    parser.add_argument("--hf", action="store_true", help=argparse.SUPPRESS)  # child mode: the Trainer run
    return parser.parse_args()


def natural(name: str) -> list:
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def build_subset(args: argparse.Namespace) -> dict[str, Path]:
    """Class folders of the first reviews of each class, linked from the extracted archive."""
    root = Path(args.data_dir)
    extracted = root / "aclImdb"
    if not (extracted / "test" / "pos").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(ARCHIVE) as archive:
            archive.extractall(root, filter="data")
    folders = {}
    for split, count in (("train", args.train_reviews), ("test", args.test_reviews)):
        folder = root / f"subset-{args.train_reviews}-{args.test_reviews}" / split
        for label in ("neg", "pos"):
            (folder / label).mkdir(parents=True, exist_ok=True)
            for name in sorted(os.listdir(extracted / split / label), key=natural)[:count // 2]:
                link = folder / label / name
                if not link.exists():
                    link.symlink_to((extracted / split / label / name).resolve())
        folders[split] = folder
    return folders


def fit(run_dir: Path, folders: dict[str, Path], extra: list[str], args: argparse.Namespace) -> dict:
    run = fit_run(run_dir, "--config", CONFIG, "--data.init_args.dataset_name=null",
                  f"--data.init_args.train_file={folders['train']}",
                  f"--data.init_args.validation_file={folders['test']}",
                  "--data.init_args.label_names=[neg, pos]", "--data.init_args.id_column=file",
                  f"--data.init_args.max_length={args.max_length}", *extra, f"--trainer.max_epochs={args.epochs}",
                  "--trainer.callbacks+=lit_finetune.callbacks.Throughput")
    return dict(run=str(run_dir), test_acc=max(v for _, _, v in run.curve("val/acc")),
                samples_per_s=run.curve("perf/samples_per_s")[-1][2], wall_s=run.record.get("wall_s"))


def read_folder(folder: Path) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for label, name in enumerate(("neg", "pos")):
        for path in sorted((folder / name).iterdir(), key=lambda p: natural(p.name)):
            texts.append(path.read_text(encoding="utf-8").strip())
            labels.append(label)
    return texts, labels


def run_hf(args: argparse.Namespace, folders: dict[str, Path]) -> None:
    """The Trainer recipe a user would write, with imdb.yaml's settings and the Trainer's own head truncation."""
    import time

    import numpy as np
    import yaml
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        set_seed,
    )

    started = time.perf_counter()
    config = yaml.safe_load(Path(CONFIG).read_text())
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())

    def dataset(split: str) -> Dataset:
        texts, labels = read_folder(folders[split])
        return Dataset.from_dict({"text": texts, "label": labels}).map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=args.max_length), batched=True,
            remove_columns=["text"])

    train, test = dataset("train"), dataset("test")
    set_seed(config["seed_everything"])
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    training_args = trainer_arguments(CONFIG, Path(args.out) / "hf", args.epochs)
    trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=test,
                      data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=lambda p: {"accuracy": float(np.mean(p.predictions.argmax(-1) == p.label_ids))})
    output = trainer.train()
    accuracy = trainer.evaluate()["eval_accuracy"]
    result = dict(test_acc=accuracy, samples_per_s=output.metrics["train_samples_per_second"],
                  wall_s=time.perf_counter() - started)
    emit_line(result)


def hf_baseline(args: argparse.Namespace) -> dict:
    return child_result([sys.executable, str(SCRIPT), "--hf", f"--train_reviews={args.train_reviews}",
                         f"--test_reviews={args.test_reviews}", f"--max_length={args.max_length}",
                         f"--epochs={args.epochs}", f"--data_dir={args.data_dir}", f"--out={args.out}"])


def markdown(report: dict) -> str:
    lines = ["| system | truncation | head | test acc | training samples/s | wall s |", "|---|---|---|---|---|---|"]
    for name, r in report["results"].items():
        system = "HF Trainer" if name == "hf" else "lit_finetune"
        truncation = "head" if name == "hf" else name.split(",")[0]
        head = "pooler" if name == "hf" or "pooler" in name else "mean"
        lines.append(f"| {system} | {truncation} | {head} | {r['test_acc']:.4f} | {r['samples_per_s']:.1f} | "
                     f"{r['wall_s']:.0f} |")
    lines += provenance_lines(report)
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    folders = build_subset(args)
    if args.hf:
        run_hf(args, folders)
        return
    results = {"hf": hf_baseline(args)}
    for i, (name, extra) in enumerate(RUNS.items()):
        results[name] = fit(Path(args.out) / f"run{i}", folders, extra, args)
    report = new_report(SCRIPT, train_reviews=args.train_reviews, test_reviews=args.test_reviews,
                        max_length=args.max_length, epochs=args.epochs, results=results)
    write_report(report, markdown(report), args.output)


if __name__ == "__main__":
    main()
