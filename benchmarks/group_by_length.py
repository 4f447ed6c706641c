"""Length-grouped vs random training batches, through the real CLI: does grouping keep the dev metric, and how much
faster is it? SST-2 (sequence classification) and CoNLL-2003 (token classification), several seeds each.

Each (task, seed) runs the shipped config twice, `--data.init_args.group_by_length=false` and `=true`, the order
alternating from seed to seed so that neither setting always runs second; the Throughput callback measures training
speed and padding. The dev metric is the best validation score of the run (one epoch: its end).

    python benchmarks/group_by_length.py                                 # both tasks, seeds 1 2 3, 4,000 sentences
    python benchmarks/group_by_length.py --tasks sst2 --seeds 1 --max_train_examples 256   # smoke run

Data: ../shared/data/{sst2,conll2003} relative to the repo root. Reruns skip finished runs. Set HF_HUB_OFFLINE=1
HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false on a machine offline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from common import fit_run, new_report, provenance_lines, write_report

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().relative_to(REPO)
SST2, CONLL = Path("../shared/data/sst2"), Path("../shared/data/conll2003")  # relative to the repo root
TASKS = {
    "sst2": dict(config="configs/classification/sst2.yaml", metric="val/acc", data=[
        "--data.init_args.dataset_name=null", "--data.init_args.dataset_config=null", "--data.init_args.id_column=null",
        f"--data.init_args.train_file={SST2 / 'train.tsv'}", f"--data.init_args.validation_file={SST2 / 'dev.tsv'}",
        "--data.init_args.label_names=[negative, positive]"]),
    "conll2003": dict(config="configs/ner/conll2003.yaml", metric="val/f1", data=[
        "--data.init_args.dataset_name=null", f"--data.init_args.train_file={CONLL / 'train.txt'}",
        f"--data.init_args.validation_file={CONLL / 'valid.txt'}"]),
}
SETTINGS = {False: "random", True: "grouped"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--max_train_examples", type=int, default=4000, help="first N training sentences")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", default="runs/benchmarks/group_by_length", help="folder of all runs")
    parser.add_argument("--output", default="runs/benchmarks/group_by_length.json", help="JSON report")
    return parser.parse_args()


def fit(run_dir: Path, task: dict, grouped: bool, seed: int, args: argparse.Namespace) -> dict:
    """One run (skipped when its folder holds a finished one) and its dev metric, speed and padding."""
    run = fit_run(run_dir, "--config", task["config"], *task["data"],
                  f"--data.init_args.max_train_examples={args.max_train_examples}",
                  f"--data.init_args.group_by_length={str(grouped).lower()}", f"--seed_everything={seed}",
                  f"--trainer.max_epochs={args.epochs}", "--trainer.callbacks+=lit_finetune.callbacks.Throughput")
    last = {key: run.curve(key)[-1][2] for key in
            ("perf/samples_per_s", "perf/tokens_per_s", "perf/pad_fraction", "perf/peak_rss_mb")}
    return dict(run=str(run_dir), seed=seed, setting=SETTINGS[grouped],
                metric=max(v for _, _, v in run.curve(task["metric"])), wall_s=run.record.get("wall_s"), **last)


def mean_sd(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def markdown(report: dict) -> str:
    lines = ["| task | batches | dev metric per seed | mean ± sd | samples/s | non-pad tokens/s | pad fraction | "
             "wall s |", "|---|---|---|---|---|---|---|---|"]
    for name, rows in report["results"].items():
        for setting in SETTINGS.values():
            mine = [r for r in rows if r["setting"] == setting]
            per_seed = ", ".join(f"{r['metric']:.4f}" for r in sorted(mine, key=lambda r: r["seed"]))
            metric = mean_sd([r["metric"] for r in mine])
            lines.append(
                f"| {name} ({TASKS[name]['metric']}) | {setting} | {per_seed} | {metric} | "
                f"{statistics.mean(r['perf/samples_per_s'] for r in mine):.1f} | "
                f"{statistics.mean(r['perf/tokens_per_s'] for r in mine):.0f} | "
                f"{statistics.mean(r['perf/pad_fraction'] for r in mine):.3f} | "
                f"{statistics.mean(r['wall_s'] for r in mine):.0f} |")
    lines.append("")
    for name, summary in report["summary"].items():
        lines.append(f"- {name}: grouped - random dev metric {summary['delta']:+.4f} (seed sd {summary['sd']:.4f}); "
                     f"samples/s grouped/random {summary['speedup']:.2f}x")
    lines += provenance_lines(report)
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    results: dict[str, list[dict]] = {name: [] for name in args.tasks}
    for i, seed in enumerate(args.seeds):
        for name in args.tasks:
            for grouped in ((False, True) if i % 2 == 0 else (True, False)):
                run_dir = Path(args.out) / name / f"seed{seed}-{SETTINGS[grouped]}"
                results[name].append(fit(run_dir, TASKS[name], grouped, seed, args))
    summary = {}
    for name, rows in results.items():
        by = {s: [r for r in rows if r["setting"] == s] for s in SETTINGS.values()}
        metric = {s: [r["metric"] for r in by[s]] for s in by}
        spread = [statistics.stdev(v) for v in metric.values() if len(v) > 1]
        summary[name] = dict(
            delta=statistics.mean(metric["grouped"]) - statistics.mean(metric["random"]),
            sd=max(spread) if spread else 0.0,
            speedup=statistics.mean(r["perf/samples_per_s"] for r in by["grouped"])
            / statistics.mean(r["perf/samples_per_s"] for r in by["random"]))
    report = new_report(SCRIPT, max_train_examples=args.max_train_examples, epochs=args.epochs, seeds=args.seeds,
                        results=results, summary=summary)
    write_report(report, markdown(report), args.output)


if __name__ == "__main__":
    main()
