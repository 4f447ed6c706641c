"""Multi-label classification on real data: which entity types (PER, ORG, LOC, MISC) each CoNLL-2003 sentence
mentions (any number, or none), lit_finetune against a Hugging Face Trainer with the same settings.

The set is built here, under /tmp (never in the repo), from ../shared/data/conll2003/{train,valid}.txt: each
sentence's words joined by spaces, its labels the sorted set of entity types its tags name. lit_finetune runs
configs/classification/conll_entity_types.yaml (mean pooling, the packaged MiniLM's own, and once with the stock
pooler head, the Trainer's); the Trainer uses `problem_type="multi_label_classification"` (BCE) and a 0.5
threshold. Reported: dev micro / macro F1 and exact match at 0.5, and lit_finetune's validation-tuned threshold.

    python benchmarks/conll_entity_types.py                               # first 4,000 training sentences, 1 epoch
    python benchmarks/conll_entity_types.py --build_only                  # only write the data (the recipe's paths)
    python benchmarks/conll_entity_types.py --max_train_examples 256      # smoke run

Set HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false on a machine offline.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
CONLL = Path("../shared/data/conll2003")  # relative to the repo root (main() changes into it)
CONFIG = "configs/classification/conll_entity_types.yaml"
TYPES = ["LOC", "MISC", "ORG", "PER"]
RUNS = {"lit_finetune (mean pooling)": [], "lit_finetune (pooler head)": ["--model.init_args.pooling=pooler"]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max_train_examples", type=int, default=4000, help="first N training sentences")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data_dir", default="/tmp/lit_finetune_conll_entity_types", help="where the set goes")
    parser.add_argument("--build_only", action="store_true", help="write the data set and stop")
    parser.add_argument("--out", default="runs/benchmarks/conll_entity_types", help="folder of all runs")
    parser.add_argument("--output", default="runs/benchmarks/conll_entity_types.json", help="JSON report")
    parser.add_argument("--hf", action="store_true", help=argparse.SUPPRESS)  # child mode: the Trainer run
    return parser.parse_args()


def sentences(path: Path) -> list[tuple[list[str], list[str]]]:
    """(words, NER tags) of each sentence of a CoNLL-2003 file, -DOCSTART- lines left out."""
    found, words, tags = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines() + [""]:
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if words:
                found.append((words, tags))
            words, tags = [], []
            continue
        words.append(parts[0])
        tags.append(parts[-1])
    return found


def build(args: argparse.Namespace) -> dict[str, Path]:
    out = Path(args.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, name in (("train", "train.txt"), ("validation", "valid.txt")):
        rows = [{"id": f"{split}-{i}", "text": " ".join(words),
                 "labels": sorted({tag[2:] for tag in tags if tag != "O"})}
                for i, (words, tags) in enumerate(sentences(CONLL / name))]
        files[split] = out / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        print(f"{files[split]}: {len(rows)} sentences, {sum(not r['labels'] for r in rows)} with no entity")
    return files


def fit(run_dir: Path, files: dict[str, Path], extra: list[str], args: argparse.Namespace) -> dict:
    run = fit_run(run_dir, "--config", CONFIG, f"--data.init_args.train_file={files['train']}",
                  f"--data.init_args.validation_file={files['validation']}",
                  f"--data.init_args.max_train_examples={args.max_train_examples}", *extra,
                  f"--trainer.max_epochs={args.epochs}")
    last = {key: run.curve(key)[-1][2] for key in
            ("val/f1_micro", "val/f1", "val/exact_match", "val/threshold", "val/f1_micro_tuned")}
    return dict(run=str(run_dir), f1_micro=last["val/f1_micro"], f1_macro=last["val/f1"],
                exact_match=last["val/exact_match"], threshold=last["val/threshold"],
                f1_micro_tuned=last["val/f1_micro_tuned"], wall_s=run.record.get("wall_s"))


def run_hf(args: argparse.Namespace, files: dict[str, Path]) -> None:
    """The Trainer recipe a user would write for multi-label data, with the recipe's settings."""
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
    data_args = config["data"]["init_args"]
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())

    def dataset(split: str, limit: int | None = None) -> Dataset:
        rows = [json.loads(line) for line in files[split].read_text().splitlines()][:limit]
        hot = [[float(t in r["labels"]) for t in TYPES] for r in rows]
        return Dataset.from_dict({"text": [r["text"] for r in rows], "labels": hot}).map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=int(data_args["max_length"])), batched=True,
            remove_columns=["text"])

    train, dev = dataset("train", args.max_train_examples), dataset("validation")
    set_seed(config["seed_everything"])
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_path(), num_labels=len(TYPES), problem_type="multi_label_classification",
        id2label=dict(enumerate(TYPES)), label2id={t: i for i, t in enumerate(TYPES)})
    training_args = trainer_arguments(CONFIG, Path(args.out) / "hf", args.epochs)

    def scores(p) -> dict:
        predicted = 1 / (1 + np.exp(-p.predictions)) >= 0.5
        gold = p.label_ids >= 0.5
        tp, fp, fn = (predicted & gold).sum(0), (predicted & ~gold).sum(0), (~predicted & gold).sum(0)
        micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
        macro = np.mean([2 * a / max(2 * a + b + c, 1) for a, b, c in zip(tp, fp, fn)])
        return {"f1_micro": float(micro), "f1_macro": float(macro),
                "exact_match": float(np.mean((predicted == gold).all(1)))}

    trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=scores)
    trainer.train()
    metrics = trainer.evaluate()
    result = {key: metrics[f"eval_{key}"] for key in ("f1_micro", "f1_macro", "exact_match")}
    emit_line({**result, "wall_s": time.perf_counter() - started})


def hf_baseline(args: argparse.Namespace) -> dict:
    return child_result([sys.executable, str(SCRIPT), "--hf", f"--max_train_examples={args.max_train_examples}",
                         f"--epochs={args.epochs}", f"--data_dir={args.data_dir}", f"--out={args.out}"])


def markdown(report: dict) -> str:
    lines = ["| system | dev micro F1 | dev macro F1 | dev exact match | tuned threshold: micro F1 | wall s |",
             "|---|---|---|---|---|---|"]
    for name, r in report["results"].items():
        tuned = f"{r['threshold']:.2f}: {r['f1_micro_tuned']:.4f}" if "threshold" in r else "-"
        lines.append(f"| {name} | {r['f1_micro']:.4f} | {r['f1_macro']:.4f} | {r['exact_match']:.4f} | {tuned} | "
                     f"{r['wall_s']:.0f} |")
    lines += provenance_lines(report)
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    files = build(args)
    if args.build_only:
        return
    if args.hf:
        run_hf(args, files)
        return
    results = {"HF Trainer (pooler head)": hf_baseline(args)}
    for i, (name, extra) in enumerate(RUNS.items()):
        results[name] = fit(Path(args.out) / f"run{i}", files, extra, args)
    report = new_report(SCRIPT, max_train_examples=args.max_train_examples, epochs=args.epochs, results=results)
    write_report(report, markdown(report), args.output)


if __name__ == "__main__":
    main()
