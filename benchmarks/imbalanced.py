"""Imbalanced classes on real data, through the real CLI: SST-2 training sentences with the positive class cut to
10% of the set, against the balanced dev set; macro F1 with the plain loss, inverse-frequency class weights, the
focal loss, and both.

The subset is built here, under /tmp (never in the repo): the first `--source_rows` rows of
../shared/data/sst2/train.tsv, every negative kept and the first positives up to 10% of the result. Each setting
runs configs/classification/sst2.yaml on it, the same seed and epochs.

    python benchmarks/imbalanced.py                          # 8,000 source rows -> ~3,900 sentences, 1 epoch each
    python benchmarks/imbalanced.py --source_rows 800        # smoke run

Set HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false on a machine offline.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from common import SST2, SST2_LOCAL, fit_run, new_report, provenance_lines, read_glue_tsv, write_report

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().relative_to(REPO)
TASK = "configs/classification/sst2.yaml"
SETTINGS = {
    "cross-entropy": [],
    "class_weights: auto": ["--model.init_args.class_weights=auto"],
    "loss: focal (gamma 2)": ["--model.init_args.loss=focal"],
    "auto + focal": ["--model.init_args.class_weights=auto", "--model.init_args.loss=focal"],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source_rows", type=int, default=8000, help="first N SST-2 training rows to draw from")
    parser.add_argument("--positive_share", type=float, default=0.10)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data_dir", default="/tmp/lit_finetune_sst2_imbalanced", help="where the subset goes")
    parser.add_argument("--out", default="runs/benchmarks/imbalanced", help="folder of all runs")
    parser.add_argument("--output", default="runs/benchmarks/imbalanced.json", help="JSON report")
    return parser.parse_args()


def build_subset(args: argparse.Namespace) -> tuple[Path, dict]:
    """The imbalanced training file (GLUE TSV layout) and its class counts."""
    rows = read_glue_tsv(SST2 / "train.tsv")[:args.source_rows]
    negatives = [r for r in rows if r["label"] == "0"]
    wanted = round(len(negatives) * args.positive_share / (1 - args.positive_share))
    positives = [r for r in rows if r["label"] == "1"][:wanted]
    keep = {id(r) for r in negatives + positives}
    subset = [r for r in rows if id(r) in keep]  # the source's order
    out = Path(args.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "train.tsv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar=None, lineterminator="\n")
        writer.writerow(["sentence", "label"])
        writer.writerows([r["sentence"], r["label"]] for r in subset)
    return path, {"negative": len(negatives), "positive": len(positives)}


def fit(run_dir: Path, train_file: Path, extra: list[str], args: argparse.Namespace) -> dict:
    """One run (skipped when its folder holds a finished one) and its dev scores."""
    dev_only = [arg for arg in SST2_LOCAL if "train_file" not in arg]  # the subset is the training file
    run = fit_run(run_dir, "--config", TASK, *dev_only, f"--data.init_args.train_file={train_file}", *extra,
                  f"--trainer.max_epochs={args.epochs}")
    best = max(run.curve("val/acc"), key=lambda point: point[2])[1]  # the best checkpoint's step, by val/acc
    at_best = {key: next(v for _, step, v in run.curve(key) if step == best) for key in
               ("val/f1", "val/acc", "val/f1_binary")}
    return dict(run=str(run_dir), **at_best)


def markdown(report: dict) -> str:
    lines = ["| training loss | dev macro F1 | dev accuracy | dev F1 of positive |", "|---|---|---|---|"]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {r['val/f1']:.4f} | {r['val/acc']:.4f} | {r['val/f1_binary']:.4f} |")
    counts = report["class_counts"]
    lines += ["", f"- training set: {counts['negative']:,} negative, {counts['positive']:,} positive sentences"]
    lines += provenance_lines(report)
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    train_file, counts = build_subset(args)
    results = {name: fit(Path(args.out) / f"setting{i}", train_file, extra, args)
               for i, (name, extra) in enumerate(SETTINGS.items())}
    report = new_report(SCRIPT, source_rows=args.source_rows, positive_share=args.positive_share, epochs=args.epochs,
                        class_counts=counts, results=results)
    write_report(report, markdown(report), args.output)


if __name__ == "__main__":
    main()
