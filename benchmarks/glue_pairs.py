"""GLUE sentence-pair benchmark: MRPC, RTE and STS-B through the classification task and the shipped configs.

Each task fine-tunes the packaged all-MiniLM-L6-v2 with configs/classification/{mrpc,rte,stsb}.yaml (only the data
source switched to the local TSVs, as each config's header comment shows) on train and scores the best checkpoint's
predictions on dev: MRPC accuracy and F1 of the "equivalent" class (GLUE's F1), RTE accuracy, STS-B Pearson and
Spearman. Baselines in the same run: the majority training class (MRPC, RTE) and, for STS-B, the cosine similarity of
the packaged MiniLM's own sentence embeddings (mean pooling, no fine-tuning: what the model was trained for). Each task
runs in its own subprocess, so its peak RSS is its own; training speed is the common StepClock's (first to last
optimizer step, so with --epochs > 1 it includes the validation between epochs).

    python benchmarks/glue_pairs.py                                   # all three, full train sets, 1 epoch each
    python benchmarks/glue_pairs.py --tasks mrpc --epochs 3
    python benchmarks/glue_pairs.py --max_train_examples 64           # smoke run

Data: ../shared/data/{mrpc,rte,stsb}/{train,dev}.tsv relative to the repo root (GLUE TSVs, unquoted; MRPC has a BOM).
Set HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false on a machine offline.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # a child's wall time counts from here, so it includes importing its framework

import argparse  # noqa: E402  (imports after START on purpose)
import os
from collections import Counter
from datetime import datetime
from pathlib import Path

from common import (
    emit_result,
    lightning_clock,
    minilm_path,
    new_report,
    provenance_lines,
    read_glue_tsv,
    run_child,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().relative_to(REPO)
DATA = Path("../shared/data")  # paths relative to the repo root (main() changes into it)
# Per task: the local-file override of the config's hub source (its header comment), the gold column of the TSVs,
# the headline metrics (the first is the key one) and the positive class of GLUE's F1.
TASKS = {
    "mrpc": dict(override=["--data.init_args.id_column=null",
                           '--data.init_args={text_column: "#1 String", text_pair_column: "#2 String"}',
                           "--data.init_args.label_column=Quality",
                           "--data.init_args.label_names=[not_equivalent, equivalent]"],
                 gold="Quality", metrics=("acc", "f1"), positive="equivalent"),
    "rte": dict(override=["--data.init_args.id_column=index"], gold="label", metrics=("acc",), positive=None),
    "stsb": dict(override=["--data.init_args.id_column=index", "--data.init_args.label_column=score"],
                 gold="score", metrics=("spearman", "pearson"), positive=None),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="mrpc,rte,stsb", help="which tasks to run, in this order")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs per task (the configs ship 3)")
    parser.add_argument("--max_train_examples", type=int, default=None, help="first N training rows (smoke runs)")
    parser.add_argument("--output", default="runs/benchmarks/glue_pairs.json", help="JSON report")
    parser.add_argument("--run_dir", default=None,
                        help="run folders (default runs/benchmarks/glue_pairs-<time>/<task>)")
    parser.add_argument("--run", choices=sorted(TASKS), help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not args.tasks or set(args.tasks) - set(TASKS):
        parser.error(f"--tasks: got {args.tasks}; choose from {sorted(TASKS)}, comma-separated")
    return args


# --------------------------------------------------------------------------------------------------------------- #
# The child: one task through the real CLI, then the best checkpoint's dev predictions


def dev_scores(task: str, predictions: list[dict], gold: list, id2label: dict | None) -> dict:
    """The task's GLUE metrics from prediction rows (in dev order) and the gold labels (class ids, or scores)."""
    import torch
    from torchmetrics.functional import f1_score, pearson_corrcoef, spearman_corrcoef

    target = torch.tensor(gold)
    if id2label is None:
        preds = torch.tensor([row["score"] for row in predictions])
        return {"pearson": float(pearson_corrcoef(preds, target.float())),
                "spearman": float(spearman_corrcoef(preds, target.float()))}
    label2id = {name: i for i, name in id2label.items()}
    preds = torch.tensor([label2id[row["label"]] for row in predictions])
    scores = {"acc": float((preds == target).float().mean())}
    positive = TASKS[task]["positive"]
    if positive:
        scores["f1"] = float(f1_score(preds == label2id[positive], target == label2id[positive], task="binary"))
    return scores


def run_task(args: argparse.Namespace) -> None:
    from lit_finetune.commands import process_defaults
    from lit_finetune.commands.fit import LitFinetuneCLI

    task, data = args.run, DATA / args.run
    LitStepClock = lightning_clock()
    process_defaults()  # as the `lit-finetune` command does
    cli = LitFinetuneCLI(args=[
        "fit", f"--config=configs/classification/{task}.yaml",
        "--data.init_args.dataset_name=null", "--data.init_args.dataset_config=null",
        f"--data.init_args.train_file={data / 'train.tsv'}", f"--data.init_args.validation_file={data / 'dev.tsv'}",
        *TASKS[task]["override"],
        f"--data.init_args.max_train_examples={args.max_train_examples or 'null'}",
        # A fresh tokenization cache, so the wall time includes tokenizing.
        f"--data.init_args.cache_dir={Path(args.run_dir).with_name(task + '-cache')}",
        f"--trainer.max_epochs={args.epochs}", f"--trainer.default_root_dir={args.run_dir}",
        "--trainer.callbacks+=__main__.LitStepClock"])
    clock = next(cb for cb in cli.trainer.callbacks if isinstance(cb, LitStepClock))
    dm = cli.datamodule
    logged = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    # predict_dataloader falls back to the validation split: dev scores of the best checkpoint
    batches = cli.trainer.predict(cli.model, datamodule=dm, ckpt_path="best")
    # Predict batches come longest first: put the rows back in the split's order before scoring against its labels.
    position = {example_id: i for i, example_id in enumerate(dm.splits["validation"]["example_id"])}
    predictions = sorted((row for batch in batches for row in batch), key=lambda row: position[row["id"]])
    scores = dev_scores(task, predictions, dm.splits["validation"]["labels"], dm.id2label)
    emit_result(START, clock, len(dm.splits["train"]) * args.epochs, task=task, dev=scores, logged_last_epoch=logged,
                train_examples=len(dm.splits["train"]), dev_examples=len(predictions), epochs=args.epochs)


# --------------------------------------------------------------------------------------------------------------- #
# The parent: baselines, the children, the report


def majority_baseline(task: str) -> dict:
    """Always the most frequent training class, scored like the model on dev."""
    gold = TASKS[task]["gold"]
    majority = Counter(r[gold] for r in read_glue_tsv(DATA / task / "train.tsv")).most_common(1)[0][0]
    dev = [r[gold] for r in read_glue_tsv(DATA / task / "dev.tsv")]
    scores = {"acc": sum(v == majority for v in dev) / len(dev)}
    if TASKS[task]["positive"]:  # MRPC, Quality 1: always answering it has precision P / N and recall 1
        positives = sum(v == "1" for v in dev)
        scores["f1"] = 2 * positives / (positives + len(dev)) if majority == "1" else 0.0
    return {"name": f"majority class ({majority!r})", **scores}


def cosine_baseline() -> dict:
    """STS-B dev scored by the cosine of the packaged MiniLM's mean-pooled sentence embeddings (no fine-tuning)."""
    import torch
    from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef
    from transformers import AutoModel, AutoTokenizer

    rows = read_glue_tsv(DATA / "stsb" / "dev.tsv")
    tokenizer, model = AutoTokenizer.from_pretrained(minilm_path()), AutoModel.from_pretrained(minilm_path()).eval()

    @torch.no_grad()
    def embed(texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), 128):
            enc = tokenizer(texts[i:i + 128], padding=True, truncation=True, max_length=128, return_tensors="pt")
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append((model(**enc).last_hidden_state * mask).sum(1) / mask.sum(1))
        return torch.cat(out)

    cosine = torch.cosine_similarity(embed([r["sentence1"] for r in rows]), embed([r["sentence2"] for r in rows]))
    gold = torch.tensor([float(r["score"]) for r in rows])
    return {"name": "MiniLM embeddings, cosine (no fine-tuning)", "pearson": float(pearson_corrcoef(cosine, gold)),
            "spearman": float(spearman_corrcoef(cosine, gold))}


def markdown(rows: list[dict], report: dict) -> str:
    header = ["task", "dev metric", "fine-tuned", "baseline", "baseline name", "train examples", "train time s",
              "samples/s", "peak RSS MiB", "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        for k, metric in enumerate(TASKS[r["task"]]["metrics"]):
            speed = (f"{r['train_examples']} | {r['train_s']:.1f} | {r['samples_per_s']:.1f} | "
                     f"{r['peak_rss_mib']:.0f} | {r['wall_s']:.1f}") if k == 0 else " |  |  |  | "
            lines.append(f"| {r['task'] if k == 0 else ''} | {metric} | {r['dev'][metric]:.4f} | "
                         f"{r['baseline'][metric]:.4f} | {r['baseline']['name']} | {speed} |")
    lines.append("")
    lines += [f"- {r['task']}: {r['dev_examples']} dev examples; peak RSS {r['train_peak_rss_mib']:.0f} MiB by the "
              f"end of training; CPU {r['cpu_s']:.0f} s on {r['torch_threads']} torch threads; 1-min load average "
              f"{r['load_1m']:.1f} at its end" for r in rows]
    lines += [f"- {name}: {value:.3f}" for name, value in report["ratios"].items()]
    lines += [*provenance_lines(report), f"- epochs: {report['epochs']}"]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    os.chdir(REPO)
    if args.run:
        run_task(args)
        return
    run_dir = Path(args.run_dir or f"runs/benchmarks/glue_pairs-{datetime.now():%Y%m%d-%H%M%S}")
    rows = [run_child(str(SCRIPT), task, f"{task.upper()} (lit_finetune)", run_dir) for task in args.tasks]
    for row in rows:
        row["baseline"] = cosine_baseline() if row["task"] == "stsb" else majority_baseline(row["task"])
    ratios = {f"{r['task']} {metric} fine-tuned / baseline": r["dev"][metric] / r["baseline"][metric]
              for r in rows for metric in TASKS[r["task"]]["metrics"][:1] if r["baseline"][metric]}
    report = new_report(SCRIPT, data=str(DATA), run_dir=str(run_dir), epochs=args.epochs,
                  max_train_examples=args.max_train_examples, results=rows, ratios=ratios)
    write_report(report, markdown(rows, report), args.output)


if __name__ == "__main__":
    main()
