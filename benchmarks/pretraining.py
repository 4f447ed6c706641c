"""Pretraining benchmarks: each case runs the real `lit-finetune` CLI in a subprocess and reads its run folder.

Cases (``--cases``, comma-separated):
  throughput  every objective on a same-sized small model (4 layers, hidden 256), --throughput_steps steps each:
              training tokens/s, samples/s and peak memory (the Throughput callback's numbers)
  mlm         continued masked-LM of the packaged MiniLM on WikiText-2 train: validation perplexity before (`validate`)
              and after --steps steps, on the same fixed masking of WikiText-2 valid
  clm         causal LM from scratch (small:gpt2 with a byte-level BPE tokenizer trained on WikiText-2 train) for a
              token budget of --steps x batch x 128: validation perplexity before and after, and tokens/s
  simcse      unsupervised SimCSE on the packaged MiniLM with WikiText-2 sentences: STS-B dev Spearman before and after
  objectives  MLM (small:bert) vs ELECTRA (small:electra) from scratch, one WordPiece tokenizer trained on WikiText-2,
              for the same training time (--budget_s each, converted to steps from a --throughput_steps probe of
              each objective). Writes runs/pretrain-objectives/{tokenizer,mlm,electra}; fine-tune the exports and
              random weights on SST-2 with `lit-finetune sweep sweeps/pretrain_objectives.yaml` (see that file)

    python benchmarks/pretraining.py --cases mlm,simcse --steps 300
    python benchmarks/pretraining.py --cases objectives --budget_s 120 --precision bf16-mixed --batch_size 128

Data: --data_dir/{wikitext-2,stsb} (../shared/data relative to the repo root). Arguments after `--` go to every
`lit-finetune` run. Prints a markdown table per case and writes JSON.
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

import torch

REPO = Path(__file__).resolve().parents[1]
WIKI = Path("../shared/data/wikitext-2")
STSB = Path("../shared/data/stsb")
OBJECTIVES_DIR = Path("runs/pretrain-objectives")  # sweeps/pretrain_objectives.yaml fine-tunes from these exports
EXTRA_ARGS: list[str] = []  # arguments after `--`, for every run
OBJECTIVES = {  # config, small model of the same size for each objective
    "mlm": ("mlm.yaml", "small:bert"), "mlm_nsp": ("mlm_nsp.yaml", "small:bert"),
    "mlm_sop": ("mlm_sop.yaml", "small:albert"), "electra": ("electra.yaml", "small:electra"),
    "clm": ("clm.yaml", "small:gpt2"), "simcse": ("simcse.yaml", "small:bert"),
}


def lit(subcommand: str, config: str, run_dir: Path, *args: str) -> tuple[Path, float]:
    """Run `lit-finetune <subcommand>` on a pretraining config; returns the run folder and the wall time."""
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "lit_finetune", subcommand, "--config", f"configs/pretrain/{config}",
           f"--trainer.default_root_dir={run_dir}", *args, *EXTRA_ARGS]
    result = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return run_dir, time.perf_counter() - started


def local_wiki() -> list[str]:
    return ["--data.init_args.dataset_name=null", "--data.init_args.dataset_config=null",
            f"--data.init_args.train_file={WIKI / 'train.txt'}",
            f"--data.init_args.validation_file={WIKI / 'valid.txt'}"]


def train_tokenizer(output_dir: Path, kind: str, vocab_size: int) -> Path:
    if not (output_dir / "tokenizer.json").is_file():
        subprocess.run([sys.executable, "-m", "lit_finetune", "tokenizer", f"--train_file={WIKI / 'train.txt'}",
                        f"--output_dir={output_dir}", f"--kind={kind}", f"--vocab_size={vocab_size}"], cwd=REPO,
                       check=True)
    return output_dir


def budget(steps: int, validations: int = 1) -> list[str]:
    """Train `steps` steps (however many epochs that takes) and validate `validations` times, the last at the end."""
    return [f"--trainer.max_steps={steps}", "--trainer.max_epochs=-1", "--trainer.check_val_every_n_epoch=null",
            f"--trainer.val_check_interval={steps // validations}"]


def shape(a: argparse.Namespace) -> list[str]:
    return [f"--data.init_args.batch_size={a.batch_size}", f"--trainer.precision={a.precision}"]


def last(run_dir: Path, key: str) -> float | None:
    values = [float(row[key]) for row in csv.DictReader((run_dir / "metrics.csv").open()) if row.get(key)]
    return values[-1] if values else None


def case_throughput(out: Path, a: argparse.Namespace) -> list[dict]:
    rows, steps = [], a.throughput_steps
    for name, (config, model) in OBJECTIVES.items():
        data = ["--data.init_args.dataset_name=null", "--data.init_args.validation_dataset=null",
                f"--data.init_args.train_file={WIKI / 'train.txt'}",
                f"--data.init_args.validation_file={STSB / 'dev.tsv'}",
                "--data.init_args.max_length=128"] if name == "simcse" else local_wiki()
        run_dir, wall = lit("fit", config, out / name, f"--model.init_args.model_name_or_path={model}", *data,
                            *shape(a), *budget(steps), "--trainer.limit_val_batches=2")
        rows.append({"objective": name, "model": model, "steps": steps,
                     "tokens/s": round(last(run_dir, "perf/tokens_per_s"), 1),
                     "samples/s": round(last(run_dir, "perf/samples_per_s"), 2),
                     "peak RSS MB": round(last(run_dir, "perf/peak_rss_mb")), "wall s": round(wall, 1)})
        if (gpu_mb := last(run_dir, "perf/peak_gpu_mb")) is not None:
            rows[-1]["peak GPU MB"] = round(gpu_mb)
        print(rows[-1], flush=True)
    return rows


def before_after(out: Path, config: str, args: list[str], metric: str) -> dict:
    """The metric of the starting model (`validate`), then after fitting with the same settings and seed."""
    before_dir, _ = lit("validate", config, out / "before", *args)
    after_dir, wall = lit("fit", config, out / "after", *args)
    return {"before": last(before_dir, metric), "after": last(after_dir, metric), "fit wall s": round(wall, 1),
            "tokens/s": round(last(after_dir, "perf/tokens_per_s") or 0, 1),
            "peak RSS MB": round(last(after_dir, "perf/peak_rss_mb") or 0)}


def case_mlm(out: Path, a: argparse.Namespace) -> list[dict]:
    args = [*local_wiki(), *shape(a), *budget(a.steps)]
    row = {"case": "continued MLM, packaged MiniLM", "steps": a.steps, "metric": "val/perplexity",
           **before_after(out, "mlm.yaml", args, "val/perplexity")}
    return [row]


def case_clm(out: Path, a: argparse.Namespace) -> list[dict]:
    tokenizer = train_tokenizer(out / "tokenizer-bpe-8k", "bpe", 8000)
    args = [*local_wiki(), "--model.init_args.model_name_or_path=small:gpt2",
            f"--model.init_args.tokenizer_name_or_path={tokenizer}", *shape(a), *budget(a.steps)]
    row = {"case": "causal LM from scratch, small:gpt2 + BPE 8k", "steps": a.steps,
           "token budget": a.steps * a.batch_size * 128, "metric": "val/perplexity",
           **before_after(out, "clm.yaml", args, "val/perplexity")}
    return [row]


def case_simcse(out: Path, a: argparse.Namespace) -> list[dict]:
    args = ["--data.init_args.dataset_name=null", "--data.init_args.validation_dataset=null",
            f"--data.init_args.train_file={WIKI / 'train.txt'}", f"--data.init_args.validation_file={STSB / 'dev.tsv'}",
            "--model.init_args.pooling=mean", f"--trainer.precision={a.precision}", *budget(a.steps)]
    row = {"case": "unsupervised SimCSE, packaged MiniLM (mean pooling)", "steps": a.steps, "metric": "val/spearman",
           **before_after(out, "simcse.yaml", args, "val/spearman")}
    return [row]


def case_objectives(out: Path, a: argparse.Namespace) -> list[dict]:
    """The ELECTRA paper's claim: for the same compute, replaced-token detection learns more than masked LM."""
    tokenizer = train_tokenizer(OBJECTIVES_DIR / "tokenizer", "wordpiece", 8000)
    rows = []
    for name, config, model in (("mlm", "mlm.yaml", "small:bert"), ("electra", "electra.yaml", "small:electra")):
        args = [*local_wiki(), f"--model.init_args.model_name_or_path={model}",
                f"--model.init_args.tokenizer_name_or_path={tokenizer}", "--model.init_args.learning_rate=5e-4",
                *shape(a)]
        probe, _ = lit("fit", config, out / f"{name}-probe", *args, *budget(a.throughput_steps),
                       "--trainer.limit_val_batches=1")
        tokens_per_s = last(probe, "perf/tokens_per_s")
        steps = 10 * max(1, round(a.budget_s * tokens_per_s / (a.batch_size * 128) / 10))  # full 128-token blocks
        run_dir, wall = lit("fit", config, OBJECTIVES_DIR / name, *args, *budget(steps, validations=10))
        row = {"objective": name, "model": model, "steps": steps, "training tokens": steps * a.batch_size * 128,
               "probe tokens/s": round(tokens_per_s), "fit wall s": round(wall, 1),
               "val/loss": round(last(run_dir, "val/loss"), 4)}
        for key in ("val/perplexity", "val/masked_acc", "val/disc_acc", "val/replaced_precision",
                    "val/replaced_recall", "val/generator_acc"):
            if (value := last(run_dir, key)) is not None:
                row[key] = round(value, 4)
        rows.append(row)
        print(row, flush=True)
    return rows


CASES = {"throughput": case_throughput, "mlm": case_mlm, "clm": case_clm, "simcse": case_simcse,
         "objectives": case_objectives}


def markdown(rows: list[dict]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(row.get(k, "")) for k in header) + " |" for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="throughput,mlm,clm,simcse")
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (mlm, clm, simcse)")
    parser.add_argument("--throughput_steps", type=int, default=30,
                        help="training steps per objective (throughput, and the objectives case's probe)")
    parser.add_argument("--budget_s", type=float, default=600, help="training seconds per objective (objectives)")
    parser.add_argument("--batch_size", type=int, default=32, help="batch size (all but simcse)")
    parser.add_argument("--precision", default="32-true", help="trainer precision, e.g. bf16-mixed on a GPU")
    parser.add_argument("--data_dir", default="../shared/data", help="folder holding wikitext-2/ and stsb/")
    parser.add_argument("--output", default="runs/benchmarks/pretraining.json")
    parser.add_argument("extra", nargs="*", help="arguments for every lit-finetune run (after --)")
    args = parser.parse_args()
    os.chdir(REPO)
    global WIKI, STSB
    WIKI, STSB = Path(args.data_dir) / "wikitext-2", Path(args.data_dir) / "stsb"
    EXTRA_ARGS.extend(args.extra)
    out = Path("runs/benchmarks") / f"pretraining-{datetime.now():%Y%m%d-%H%M%S}"
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    report = {"date": datetime.now().isoformat(timespec="seconds"), "machine": f"{platform.machine()}, "
              f"{os.cpu_count()} CPUs{gpu}, {platform.system()}", "command": " ".join(sys.argv), "cases": {}}
    for case in args.cases.split(","):
        rows = CASES[case](out / case, args)
        report["cases"][case] = rows
        print(f"\n## {case}\n\n{markdown(rows)}\n", flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
