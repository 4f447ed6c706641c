"""Fine-tuning strategies on SST-2 at the same budget, through the real CLI: which layers train, how fast, how big.

1. `lit-finetune sweep sweeps/strategies.yaml`: full fine-tuning, feature extraction, top-2 layers, gradual
   unfreezing, layer-wise LR decay, LoRA r=8 and a cyclic LR, each composed with configs/classification/sst2.yaml,
   then `lit-finetune compare` (dev accuracy, trainable parameters, training samples/s, peak RSS, wall time).
2. Distillation: the full fine-tuning trial's export teaches a 2-layer student (configs/strategies/distillation.yaml),
   against the same student trained without a teacher.
3. Pruning to 50% (configs/strategies/pruning.yaml), and `lit-finetune deploy` (dynamic int8, ONNX) on the full
   fine-tuning export and on the pruned one: accuracy delta, latency, file size, and the weights' gzip size (where
   unstructured zeros pay off: dense kernels and safetensors do not skip them).

    python benchmarks/strategies.py                          # first 4,000 training sentences, 1 epoch each
    python benchmarks/strategies.py --max_train_examples 64  # smoke run

Every run gets the same data, epochs, batch size and seed; each strategy config sets its own learning rate. Reruns
skip what is done (the sweep resumes; finished runs are kept). Data: ../shared/data/sst2/{train,dev}.tsv relative
to the repo root. Set HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false offline.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

from common import SST2_LOCAL, new_report, provenance_lines, write_report

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().relative_to(REPO)
SST2 = Path("../shared/data/sst2")  # relative to the repo root (main() changes into it)
TASK = "configs/classification/sst2.yaml"
MEASURED = "--trainer.callbacks+=lit_finetune.callbacks.Throughput"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max_train_examples", type=int, default=4000, help="first N training sentences")
    parser.add_argument("--out", default="runs/benchmarks/strategies", help="folder of all runs")
    parser.add_argument("--output", default="runs/benchmarks/strategies.json", help="JSON report")
    return parser.parse_args()


def lit_finetune(*args: str) -> None:
    print("\n$ lit-finetune " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "lit_finetune", *args], check=True)


def fit(run_dir: Path, budget: list[str], *configs_and_args: str) -> dict:
    """A `fit` run (skipped when its folder holds a finished one) and its dev accuracy, size, speed and memory."""
    if not (run_dir / "run.json").is_file():
        lit_finetune("fit", "--config", TASK, *configs_and_args, *budget, f"--trainer.default_root_dir={run_dir}")
    return summary(run_dir)


def summary(run_dir: Path) -> dict:
    from lit_finetune.commands.compare import Run

    run = Run.read(run_dir)
    last = {key: (run.curve(key) or [(None, None, None)])[-1][2]
            for key in ("val/acc", "params/trainable", "params/total", "perf/samples_per_s", "perf/peak_rss_mb")}
    return {"run": str(run_dir), "best_val_acc": max(v for _, _, v in run.curve("val/acc")), **last,
            "wall_s": run.record.get("wall_s")}


def deploy(export: Path, out: Path) -> dict:
    if not (out / "report.json").is_file():
        lit_finetune("deploy", f"--model_dir={export}", f"--eval_file={SST2 / 'dev.tsv'}", "--text_column=sentence",
                     "--label_column=label", f"--output_dir={out}", "--threads=1")
    report = json.loads((out / "report.json").read_text())
    report["gzip_mb"] = len(gzip.compress((export / "model.safetensors").read_bytes(), 6)) / 2**20
    return report


def trial_of(sweep_dir: Path, config: str) -> Path:
    state = json.loads((sweep_dir / "sweep.json").read_text())
    return next(sweep_dir / t["name"] for t in state["trials"] if t["params"]["config"] == config)


def markdown(report: dict) -> str:
    lines = [report["sweep_table"], "", "| distillation (2-layer student) | dev acc | trainable params | samples/s | "
             "peak RSS MB | wall s |", "|---|---|---|---|---|---|"]
    for name, row in report["distillation"].items():
        lines.append(f"| {name} | {row['best_val_acc']:.4f} | {row['params/trainable']:,.0f} | "
                     f"{row['perf/samples_per_s']:.1f} | {row['perf/peak_rss_mb']:.0f} | {row['wall_s']:.0f} |")
    lines += ["", "| model (dev, 1 thread) | dev acc | Δ acc vs full FT fp32 | ms/batch of 32 | ms/example | "
              "file MB | gzip MB |", "|---|---|---|---|---|---|---|"]
    base = report["deploy"]["full fine-tuning"]["variants"]["fp32"]["accuracy"]
    for name, deployed in report["deploy"].items():
        for variant, row in deployed["variants"].items():
            gzip_mb = f"{deployed['gzip_mb']:.1f}" if variant == "fp32" else "-"
            lines.append(f"| {name}, {variant} | {row['accuracy']:.4f} | {row['accuracy'] - base:+.4f} | "
                         f"{row['ms_per_batch']:.1f} | {row['ms_per_example']:.2f} | {row['file_bytes'] / 2**20:.1f} | "
                         f"{gzip_mb} |")
    pruned = report["pruning"]
    lines += ["", "- ONNX vs PyTorch max |Δ logits|: " + ", ".join(
        f"{name} {d['onnx_max_abs_diff']:.1e}" for name, d in report["deploy"].items()),
        f"- pruning run: dev acc {pruned['best_val_acc']:.4f}, measured sparsity of the pruned weights "
                  f"{pruned['sparsity']:.3f}",
              *provenance_lines(report)]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    out = Path(args.out)
    budget = [f"--data.init_args.max_train_examples={args.max_train_examples}", "--trainer.max_epochs=1", MEASURED,
              *SST2_LOCAL]
    sweep_dir = out / "sweep"
    lit_finetune("sweep", "sweeps/strategies.yaml", f"--sweep_dir={sweep_dir}", "--", *budget)
    lit_finetune("compare", "--sweep", str(sweep_dir), "--markdown", str(sweep_dir / "compare.md"))
    teacher = trial_of(sweep_dir, "configs/strategies/full.yaml") / "export"
    distillation = {
        "with the full fine-tuning export as teacher": fit(
            out / "student-distilled", budget, "--config", "configs/strategies/distillation.yaml",
            f"--model.init_args.distillation.teacher={teacher}"),
        "without a teacher": fit(out / "student-alone", budget, "--config", "configs/strategies/distillation.yaml",
                                 "--model.init_args.distillation=null"),
    }
    pruning = fit(out / "pruned", budget, "--config", "configs/strategies/pruning.yaml")
    from lit_finetune.commands.compare import Run

    pruning["sparsity"] = Run.read(out / "pruned").curve("pruning/sparsity")[-1][2]
    deployed = {"full fine-tuning": deploy(teacher, out / "deploy-full"),
                "pruned 50%": deploy(out / "pruned" / "export", out / "deploy-pruned")}
    report = new_report(SCRIPT, budget=budget, sweep_table=(sweep_dir / "compare.md").read_text().strip(),
                        distillation=distillation, pruning=pruning, deploy=deployed)
    write_report(report, markdown(report), args.output)


if __name__ == "__main__":
    main()
