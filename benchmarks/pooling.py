"""Pooling under the classification head on SST-2, through the real CLI: the BERT pooler (transformers' stock head)
against mean pooling (the packaged sentence-transformers MiniLM's own), for full fine-tuning, feature extraction,
LoRA r=8 and QLoRA (the same LoRA over the base in 4 bits).

Each strategy runs `configs/classification/sst2.yaml` plus its strategy config twice, `model.pooling` pooler and
mean, the order alternating from strategy to strategy; the Throughput callback measures speed. The dev metric is the
best validation accuracy of the run (one epoch: its end); "export acc" is the dev accuracy of the run's `export/`
through `pipeline("text-classification")` (for QLoRA: the adapters merged into the base in full precision, where
the run validated over the 4-bit base).

    python benchmarks/pooling.py                                  # first 4,000 training sentences, 1 epoch each
    python benchmarks/pooling.py --strategies full --max_train_examples 256   # smoke run
    python benchmarks/pooling.py --strategies lora qlora --poolings mean       # LoRA against QLoRA

Data: ../shared/data/sst2 relative to the repo root. Reruns skip finished runs. Set HF_HUB_OFFLINE=1
HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false on a machine offline.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from common import SST2, SST2_LOCAL, fit_run, new_report, provenance_lines, read_glue_tsv, write_report

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().relative_to(REPO)
TASK = "configs/classification/sst2.yaml"
STRATEGIES = {name: f"configs/strategies/{name}.yaml" for name in ("full", "feature_extraction", "lora", "qlora")}
POOLINGS = ("pooler", "mean")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--poolings", nargs="+", default=list(POOLINGS), choices=list(POOLINGS))
    parser.add_argument("--max_train_examples", type=int, default=4000, help="first N training sentences")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", default="runs/benchmarks/pooling", help="folder of all runs")
    parser.add_argument("--output", default="runs/benchmarks/pooling.json", help="JSON report")
    return parser.parse_args()


def fit(run_dir: Path, strategy: str, pooling: str, args: argparse.Namespace) -> dict:
    """One run (skipped when its folder holds a finished one) and its dev accuracy, size and speed."""
    run = fit_run(run_dir, "--config", TASK, "--config", STRATEGIES[strategy], *SST2_LOCAL,
                  f"--data.init_args.max_train_examples={args.max_train_examples}",
                  f"--model.init_args.pooling={pooling}", f"--trainer.max_epochs={args.epochs}",
                  "--trainer.callbacks+=lit_finetune.callbacks.Throughput")
    last = {key: run.curve(key)[-1][2] for key in ("params/trainable", "perf/samples_per_s", "perf/peak_rss_mb")}
    return dict(run=str(run_dir), strategy=strategy, pooling=pooling,
                dev_acc=max(v for _, _, v in run.curve("val/acc")), export_acc=export_accuracy(run_dir / "export"),
                wall_s=run.record.get("wall_s"), **last)


def export_accuracy(export: Path) -> float:
    """Dev accuracy of an export as users load it: `pipeline`, with the pooled head's class registered."""
    from transformers import pipeline  # noqa: PLC0415

    import lit_finetune.heads  # noqa: F401, PLC0415

    rows = read_glue_tsv(SST2 / "dev.tsv")
    classify = pipeline("text-classification", model=str(export), device="cpu")
    predicted = classify([row["sentence"] for row in rows], batch_size=64, truncation=True)
    names = ("negative", "positive")
    return sum(p["label"] == names[int(row["label"])] for p, row in zip(predicted, rows)) / len(rows)


def markdown(report: dict) -> str:
    lines = ["| strategy | pooling | dev acc | export acc | trainable params | samples/s | peak RSS MB | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['strategy']} | {r['pooling']} | {r['dev_acc']:.4f} | {r['export_acc']:.4f} | "
                     f"{r['params/trainable']:,.0f} | "
                     f"{r['perf/samples_per_s']:.1f} | {r['perf/peak_rss_mb']:.0f} | {r['wall_s']:.0f} |")
    lines.append("")
    acc = {(r["strategy"], r["pooling"]): r["dev_acc"] for r in report["results"]}
    for pooling in POOLINGS:
        if ("full", pooling) in acc:
            gaps = ", ".join(f"{s} {acc[(s, pooling)] - acc[('full', pooling)]:+.4f}" for s in STRATEGIES
                             if s != "full" and (s, pooling) in acc)
            lines.append(f"- {pooling}: against full fine-tuning: {gaps or 'no other strategy run'}")
    lines += provenance_lines(report)
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    results = []
    for i, strategy in enumerate(args.strategies):
        for pooling in (args.poolings if i % 2 == 0 else args.poolings[::-1]):
            results.append(fit(Path(args.out) / f"{strategy}-{pooling}", strategy, pooling, args))
    report = new_report(SCRIPT, max_train_examples=args.max_train_examples, epochs=args.epochs, results=results)
    write_report(report, markdown(report), args.output)


if __name__ == "__main__":
    main()
