"""Pretraining benchmarks: each case runs the real `lit-finetune` CLI in a subprocess and reads its run folder.

Cases (``--cases``, comma-separated):
  throughput  every objective on a same-sized small model (4 layers, hidden 256), --throughput_steps steps each:
              training tokens/s, samples/s and peak memory (the Throughput callback's numbers)
  mlm         continued masked-LM of the packaged MiniLM on WikiText-2 train: validation perplexity before (`validate`)
              and after --steps steps, on the same fixed masking of WikiText-2 valid
  clm         causal LM from scratch (small:gpt2 with a byte-level BPE tokenizer trained on WikiText-2 train) for a
              token budget of --steps x batch x 128: validation perplexity before and after, and tokens/s
  simcse      unsupervised SimCSE on the packaged MiniLM with WikiText-2 sentences: STS-B dev Spearman before and after

    python benchmarks/pretraining.py --cases mlm,simcse --steps 300

Data: ../shared/data/{wikitext-2,stsb} relative to the repo root. Prints a markdown table per case and writes JSON.
Set HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false on a machine offline.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WIKI = Path("../shared/data/wikitext-2")
STSB = Path("../shared/data/stsb")
LOCAL_WIKI = ["--data.init_args.dataset_name=null", "--data.init_args.dataset_config=null",
              f"--data.init_args.train_file={WIKI / 'train.txt'}", f"--data.init_args.validation_file={WIKI / 'valid.txt'}"]
OBJECTIVES = {  # config, small model of the same size for each objective
    "mlm": ("mlm.yaml", "small:bert"), "mlm_nsp": ("mlm_nsp.yaml", "small:bert"),
    "mlm_sop": ("mlm_sop.yaml", "small:albert"), "electra": ("electra.yaml", "small:electra"),
    "clm": ("clm.yaml", "small:gpt2"), "simcse": ("simcse.yaml", "small:bert"),
}


def lit(subcommand: str, config: str, run_dir: Path, *args: str) -> tuple[Path, float]:
    """Run `lit-finetune <subcommand>` on a pretraining config; returns the run folder and the wall time."""
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "lit_finetune", subcommand, "--config", f"configs/pretrain/{config}",
           f"--trainer.default_root_dir={run_dir}", *args]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return run_dir, time.perf_counter() - started


def budget(steps: int) -> list[str]:
    """Train `steps` steps and validate once, at the end (all runs stop inside their first epoch)."""
    return [f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}"]


def last(run_dir: Path, key: str) -> float | None:
    values = [float(row[key]) for row in csv.DictReader((run_dir / "metrics.csv").open()) if row.get(key)]
    return values[-1] if values else None


def case_throughput(out: Path, steps: int) -> list[dict]:
    rows = []
    for name, (config, model) in OBJECTIVES.items():
        data = ["--data.init_args.train_dataset=null", "--data.init_args.validation_dataset=null",
                f"--data.init_args.train_file={WIKI / 'train.txt'}",
                f"--data.init_args.validation_file={STSB / 'dev.tsv'}", "--data.init_args.batch_size=32",
                "--data.init_args.max_length=128"] if name == "simcse" else [*LOCAL_WIKI, "--data.init_args.batch_size=32"]
        run_dir, wall = lit("fit", config, out / name, f"--model.init_args.model_name_or_path={model}", *data,
                            *budget(steps), "--trainer.limit_val_batches=2")
        rows.append({"objective": name, "model": model, "steps": steps,
                     "tokens/s": round(last(run_dir, "perf/tokens_per_s"), 1),
                     "samples/s": round(last(run_dir, "perf/samples_per_s"), 2),
                     "peak RSS MB": round(last(run_dir, "perf/peak_rss_mb")), "wall s": round(wall, 1)})
        print(rows[-1], flush=True)
    return rows


def before_after(out: Path, config: str, args: list[str], metric: str) -> dict:
    """The metric of the starting model (`validate`), then after fitting with the same settings and seed."""
    before_dir, _ = lit("validate", config, out / "before", *args)
    after_dir, wall = lit("fit", config, out / "after", *args)
    return {"before": last(before_dir, metric), "after": last(after_dir, metric), "fit wall s": round(wall, 1),
            "tokens/s": round(last(after_dir, "perf/tokens_per_s") or 0, 1),
            "peak RSS MB": round(last(after_dir, "perf/peak_rss_mb") or 0)}


def case_mlm(out: Path, steps: int) -> list[dict]:
    args = [*LOCAL_WIKI, "--data.init_args.batch_size=32", *budget(steps)]
    row = {"case": "continued MLM, packaged MiniLM", "steps": steps, "metric": "val/perplexity",
           **before_after(out, "mlm.yaml", args, "val/perplexity")}
    return [row]


def case_clm(out: Path, steps: int) -> list[dict]:
    tokenizer = out / "tokenizer-bpe-8k"
    subprocess.run([sys.executable, "-m", "lit_finetune", "tokenizer", f"--train_file={WIKI / 'train.txt'}",
                    f"--output_dir={tokenizer}", "--kind=bpe", "--vocab_size=8000"], cwd=REPO, check=True)
    args = [*LOCAL_WIKI, "--model.init_args.model_name_or_path=small:gpt2",
            f"--model.init_args.tokenizer_name_or_path={tokenizer}", "--data.init_args.batch_size=32", *budget(steps)]
    row = {"case": "causal LM from scratch, small:gpt2 + BPE 8k", "steps": steps,
           "token budget": steps * 32 * 128, "metric": "val/perplexity",
           **before_after(out, "clm.yaml", args, "val/perplexity")}
    return [row]


def case_simcse(out: Path, steps: int) -> list[dict]:
    args = ["--data.init_args.train_dataset=null", "--data.init_args.validation_dataset=null",
            f"--data.init_args.train_file={WIKI / 'train.txt'}", f"--data.init_args.validation_file={STSB / 'dev.tsv'}",
            "--model.init_args.pooling=mean", *budget(steps)]
    row = {"case": "unsupervised SimCSE, packaged MiniLM (mean pooling)", "steps": steps, "metric": "val/spearman",
           **before_after(out, "simcse.yaml", args, "val/spearman")}
    return [row]


CASES = {"throughput": case_throughput, "mlm": case_mlm, "clm": case_clm, "simcse": case_simcse}


def markdown(rows: list[dict]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(row.get(k, "")) for k in header) + " |" for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="throughput,mlm,clm,simcse")
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (mlm, clm, simcse)")
    parser.add_argument("--throughput_steps", type=int, default=30, help="training steps per objective (throughput)")
    parser.add_argument("--output", default="runs/benchmarks/pretraining.json")
    args = parser.parse_args()
    os.chdir(REPO)
    out = Path("runs/benchmarks") / f"pretraining-{datetime.now():%Y%m%d-%H%M%S}"
    report = {"date": datetime.now().isoformat(timespec="seconds"), "machine": f"{platform.machine()}, "
              f"{os.cpu_count()} CPUs, {platform.system()}", "command": " ".join(sys.argv), "cases": {}}
    for case in args.cases.split(","):
        rows = CASES[case](out / case, args.throughput_steps if case == "throughput" else args.steps)
        report["cases"][case] = rows
        print(f"\n## {case}\n\n{markdown(rows)}\n", flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
