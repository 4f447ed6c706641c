"""What a change costs a run: the same SST-2 fine-tuning with an earlier checkout and this one, interleaved
(A B A B) in one session: training samples/s, wall time and dev accuracy per run.

The earlier checkout is a git worktree, e.g. ``git worktree add /tmp/lf-before 27333c7``; both run with this
environment's packages (``python -m lit_finetune`` imports the package from the folder it runs in).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine_line, new_report, write_report

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "data" / "sst2"


def throughput_callback(tree: Path) -> str:
    """The Throughput callback's class path in `tree` (callbacks/ has held it since the restructure of issue 14)."""
    if (tree / "lit_finetune" / "callbacks" / "__init__.py").is_file():
        return "lit_finetune.callbacks.Throughput"
    return "lit_finetune.training.callbacks.Throughput"


def run(tree: Path, out: Path, examples: int) -> dict:
    args = ["fit", "--config", "configs/classification/sst2.yaml", "--data.init_args.dataset_name=null",
            "--data.init_args.dataset_config=null", "--data.init_args.id_column=null",
            f"--data.init_args.train_file={SST2 / 'train.tsv'}", f"--data.init_args.validation_file={SST2 / 'dev.tsv'}",
            "--data.init_args.label_names=[negative, positive]", f"--data.init_args.max_train_examples={examples}",
            "--trainer.max_epochs=1", "--trainer.logger=lit_finetune.training.loggers.RunCSVLogger",
            "--trainer.enable_progress_bar=false", f"--trainer.callbacks+={throughput_callback(tree)}",
            f"--trainer.default_root_dir={out}"]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lit_finetune", *args], cwd=tree, check=True, capture_output=True)
    wall = time.perf_counter() - started
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    speed = [float(r["perf/samples_per_s"]) for r in rows if r.get("perf/samples_per_s")]
    acc = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    return {"samples_per_s": speed[-1], "wall_s": wall, "val_acc": acc[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", required=True, help="checkout of the earlier commit (a git worktree)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--output", default="runs/benchmarks/reliability_overhead.json")
    args = parser.parse_args()
    trees = {"before": Path(args.before).resolve(), "after": REPO}
    results = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for name, tree in trees.items():  # interleaved: before, after, before, after
                results[name].append(run(tree, Path(tmp) / f"{name}-{i}", args.examples))
                print(name, i, results[name][-1], flush=True)
    ratio = statistics.mean(r["samples_per_s"] for r in results["after"]) / \
        statistics.mean(r["samples_per_s"] for r in results["before"])
    report = new_report(__file__, results=results, ratio=ratio)
    lines = [f"`{report['command']}` ({report['date']}; {machine_line(report['machine'])})", "",
             "| checkout | samples/s (each run) | wall s (each run) | val/acc |", "|---|---|---|---|"]
    for name, runs in results.items():
        speeds = ", ".join(f"{r['samples_per_s']:.1f}" for r in runs)
        walls = ", ".join(f"{r['wall_s']:.0f}" for r in runs)
        lines.append(f"| {name} | {speeds} | {walls} | {runs[-1]['val_acc']:.4f} |")
    lines.append(f"\nsamples/s after / before: {ratio:.3f}")
    write_report(report, "\n".join(lines), args.output)


if __name__ == "__main__":
    main()
