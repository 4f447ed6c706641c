"""Scale-out on CPU, through the real CLI: model state per rank under DDP and FSDP2, consolidating a sharded
checkpoint, and streaming a corpus 10x larger than WikiText-2.

1. Memory per rank: SmolLM2-135M-Instruct (the packaged ``smollm2``) SFT on 2 CPU processes (gloo) for a few dozen
   steps, DDP (configs/strategies/ddp.yaml) against FSDP2 (configs/strategies/fsdp2.yaml, with each process saving its
   shards): per rank, the bytes of parameters + gradients + optimizer state held, and the peak RSS.
2. Sharded export: `lit-finetune export` of the FSDP2 run's sharded last.ckpt folder, in a fresh process: time and
   peak RSS.
3. Streaming: masked-LM steps of MiniLM on WikiText-2 train, (a) tokenized and cached as usual, (b) streamed, and
   (c) a 10x corpus (the train lines repeated 10 times, shuffled; ~108 MB in /tmp) streamed: tokens/s over the
   timed steps (data loading included) and peak RSS.

    python benchmarks/scale_out.py                 # 24 SFT steps, 30 MLM steps per run
    python benchmarks/scale_out.py --sft_steps 6 --mlm_steps 10 --rounds 1   # smoke run

The SFT data are prompt/answer pairs made from the SQuAD v1.1 dev questions (question -> answer text), written to
/tmp by this script. Data: ../shared/data/{squad,wikitext-2} relative to the repo root. Runs one job at a time: the
two ranks of a distributed run on one thread each, a single-process run on two (the machine's two cores). A rerun
keeps the SFT runs already done (same steps). Set HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
WANDB_MODE=offline TOKENIZERS_PARALLELISM=false offline.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import machine_line, new_report, write_report

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().relative_to(REPO)
DATA = Path("../shared/data")  # relative to the repo root (main() changes into it)
PROBE = "--trainer.callbacks+=scale_probes.ScaleProbe"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft_steps", type=int, default=24)
    parser.add_argument("--mlm_steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2, help="streaming runs interleaved (a b c a b c ...)")
    parser.add_argument("--work", default="/tmp/lit_finetune_scale_out", help="derived data and runs")
    parser.add_argument("--output", default="runs/benchmarks/scale_out.json", help="JSON report")
    return parser.parse_args()


def lit_finetune(*args: str, threads: int = 1) -> float:
    """Run the CLI with the probes importable, on `threads` threads per process; its wall time."""
    print("\n$ lit-finetune " + " ".join(args), flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "benchmarks"), "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lit_finetune", *args], check=True, env=env)
    return time.perf_counter() - started


def ranks(probe: Path, count: int) -> list[dict]:
    return [json.loads((probe / f"rank-{r}.json").read_text()) for r in range(count)]


def done(probe: Path, count: int, steps: int) -> bool:
    """Whether a run of `steps` steps left its readings already (a rerun skips it)."""
    try:
        return all(r["global_step"] == steps for r in ranks(probe, count))
    except (OSError, ValueError, KeyError):
        return False


def sft_pairs(work: Path) -> tuple[Path, Path]:
    """Prompt/response rows from the SQuAD dev questions: 2,000 for training, 64 for validation."""
    squad = json.loads((DATA / "squad/dev-v1.1.json").read_text())
    rows = [{"prompt": qa["question"], "response": qa["answers"][0]["text"]}
            for article in squad["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    random.Random(0).shuffle(rows)
    files = work / "sft_train.jsonl", work / "sft_dev.jsonl"
    for path, part in zip(files, (rows[:2000], rows[2000:2064])):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return files


def memory_per_rank(args, work: Path) -> dict:
    train, dev = sft_pairs(work)
    common = ["--config", "configs/sft/smollm2_instructions.yaml", "--data.init_args.dataset_name=null",
              "--data.init_args.messages_column=null", f"--data.init_args.train_file={train}",
              f"--data.init_args.validation_file={dev}", "--data.init_args.max_length=96",
              "--data.init_args.batch_size=4", "--trainer.accelerator=cpu", "--trainer.devices=2",
              f"--trainer.max_steps={args.sft_steps}", f"--trainer.val_check_interval={args.sft_steps}",
              "--trainer.check_val_every_n_epoch=null", "--trainer.limit_val_batches=2",
              "--trainer.num_sanity_val_steps=0", "--trainer.logger=lit_finetune.training.loggers.RunCSVLogger",
              "--trainer.enable_progress_bar=false",
              "--trainer.callbacks.init_args.num_prompts=1", "--trainer.callbacks.init_args.max_new_tokens=8", PROBE]
    results = {}
    for name, strategy in (("ddp", ["--config", "configs/strategies/ddp.yaml"]),
                           ("fsdp2", ["--config", "configs/strategies/fsdp2.yaml",
                                      "--trainer.strategy.init_args.save_distributed_checkpoint=true"])):
        run_dir, probe = work / f"sft-{name}", work / f"sft-{name}-probe"
        if done(probe, 2, args.sft_steps):
            results[name] = {"ranks": ranks(probe, 2), "wall_s": None, "run_dir": str(run_dir)}
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        wall = lit_finetune("fit", *common, *strategy, f"--trainer.default_root_dir={run_dir}",
                            f"--trainer.callbacks.output_dir={probe}")
        results[name] = {"ranks": ranks(probe, 2), "wall_s": wall, "run_dir": str(run_dir)}
    for rank in range(2):
        state = {name: sum(results[name]["ranks"][rank][k] for k in ("params", "grads", "optimizer"))
                 for name in ("ddp", "fsdp2")}
        results.setdefault("model_state_ratio", []).append(state["fsdp2"] / state["ddp"])
        results.setdefault("peak_rss_ratio", []).append(results["fsdp2"]["ranks"][rank]["peak_rss_mib"]
                                                        / results["ddp"]["ranks"][rank]["peak_rss_mib"])
    return results


def sharded_export(run_dir: Path, work: Path) -> dict:
    """Consolidate the sharded last.ckpt folder into a Hugging Face folder in a fresh process."""
    last, output = run_dir / "checkpoints" / "last.ckpt", work / "sharded-export"
    code = ("import json, resource, sys, time; from lit_finetune import commands; t = time.perf_counter(); "
            f"commands.main(['export', '--ckpt_path', {str(last)!r}, '--output_dir', {str(output)!r}]); "
            "print('EXPORT ' + json.dumps({'seconds': time.perf_counter() - t, "
            "'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))")
    print(f"\n$ lit-finetune export --ckpt_path {last} --output_dir {output}", flush=True)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    result = json.loads(next(line for line in out.splitlines() if line.startswith("EXPORT "))[len("EXPORT "):])
    shards = sum(f.stat().st_size for f in last.rglob("*") if f.is_file())
    return {**result, "checkpoint_folder_mb": shards / 2**20, "is_folder": last.is_dir(),
            "export_mb": sum(f.stat().st_size for f in output.rglob("*") if f.is_file()) / 2**20}


def big_corpus(work: Path, times: int = 10) -> Path:
    """WikiText-2 train repeated `times` times, its lines shuffled."""
    path = work / f"wikitext2_train_x{times}.txt"
    if not path.is_file():
        lines = (DATA / "wikitext-2/train.txt").read_text("utf-8").splitlines() * times
        random.Random(0).shuffle(lines)
        path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def streaming(args, work: Path) -> dict:
    train, valid = DATA / "wikitext-2/train.txt", DATA / "wikitext-2/valid.txt"
    cache = work / "cache"
    common = ["--config", "configs/pretrain/mlm.yaml", "--model.init_args.model_name_or_path=minilm",
              "--data.init_args.dataset_name=null", "--data.init_args.dataset_config=null",
              f"--data.init_args.validation_file={valid}", "--data.init_args.max_length=128",
              "--data.init_args.batch_size=8", f"--data.init_args.cache_dir={cache}", "--trainer.accelerator=cpu",
              "--trainer.devices=1", f"--trainer.max_steps={args.mlm_steps}", "--trainer.limit_val_batches=2",
              f"--trainer.val_check_interval={args.mlm_steps}", "--trainer.check_val_every_n_epoch=null",
              "--trainer.num_sanity_val_steps=0", "--trainer.logger=lit_finetune.training.loggers.RunCSVLogger",
              "--trainer.enable_progress_bar=false",
              PROBE]
    runs = {"cached_1x": [f"--data.init_args.train_file={train}"],
            "streamed_1x": [f"--data.init_args.train_file={train}", "--data.init_args.streaming=true"],
            "streamed_10x": [f"--data.init_args.train_file={big_corpus(work)}", "--data.init_args.streaming=true"]}
    # The cached run's tokenization happens once, before the timed rounds.
    shutil.rmtree(work / "mlm-warm", ignore_errors=True)
    lit_finetune("fit", *common, *runs["cached_1x"], f"--trainer.default_root_dir={work / 'mlm-warm'}",
                 f"--trainer.callbacks.output_dir={work / 'mlm-warm-probe'}", "--trainer.max_steps=1",
                 "--trainer.val_check_interval=1", threads=2)
    results: dict = {name: [] for name in runs}
    for round_ in range(args.rounds):
        for name, extra in runs.items():
            run_dir, probe = work / f"mlm-{name}-{round_}", work / f"mlm-{name}-{round_}-probe"
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(probe, ignore_errors=True)
            lit_finetune("fit", *common, *extra, f"--trainer.default_root_dir={run_dir}",
                         f"--trainer.callbacks.output_dir={probe}", threads=2)
            results[name].append(ranks(probe, 1)[0])
    mean = {name: {k: sum(r[k] for r in rs) / len(rs) for k in ("tokens_per_s", "peak_rss_mib")}
            for name, rs in results.items()}
    return {"runs": results, "mean": mean,
            "tokens_per_s_streamed_vs_cached": mean["streamed_1x"]["tokens_per_s"] / mean["cached_1x"]["tokens_per_s"],
            "tokens_per_s_10x_vs_cached": mean["streamed_10x"]["tokens_per_s"] / mean["cached_1x"]["tokens_per_s"],
            "peak_rss_10x_vs_1x": mean["streamed_10x"]["peak_rss_mib"] / mean["streamed_1x"]["peak_rss_mib"],
            "corpus_mb": {"1x": train.stat().st_size / 2**20, "10x": big_corpus(work).stat().st_size / 2**20}}


def markdown(report: dict) -> str:
    mem, export, stream = report["memory"], report["sharded_export"], report["streaming"]
    mib = 2**20
    lines = [f"`{report['command']}` ({report['date'][:10]}; {machine_line(report['machine'])}; one job at a time)",
             "", "| SmolLM2-135M SFT, 2 CPU processes | rank | params MiB | grads MiB | optimizer MiB | state total "
             "MiB | peak RSS at start MiB | peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for name in ("ddp", "fsdp2"):
        for rank, r in enumerate(mem[name]["ranks"]):
            total = r["params"] + r["grads"] + r["optimizer"]
            lines.append(f"| {name} | {rank} | {r['params'] / mib:.0f} | {r['grads'] / mib:.0f} | "
                         f"{r['optimizer'] / mib:.0f} | {total / mib:.0f} | {r['peak_rss_at_start_mib']:.0f} | "
                         f"{r['peak_rss_mib']:.0f} |")
    lines += ["", f"FSDP2 / DDP per rank: model state {', '.join(f'{x:.3f}' for x in mem['model_state_ratio'])}; "
              f"peak RSS {', '.join(f'{x:.3f}' for x in mem['peak_rss_ratio'])}.", "",
              f"Sharded export: {export['seconds']:.1f} s, peak RSS {export['peak_rss_mib']:.0f} MiB, from a "
              f"{export['checkpoint_folder_mb']:.0f} MiB checkpoint folder to a {export['export_mb']:.0f} MiB "
              "Hugging Face folder.", "",
              "| MiniLM MLM, 1 process | corpus | tokens/s (mean) | peak RSS MiB (mean) |", "|---|---|---|---|"]
    for name, corpus in (("cached_1x", "1x"), ("streamed_1x", "1x"), ("streamed_10x", "10x")):
        m = stream["mean"][name]
        lines.append(f"| {name} | {stream['corpus_mb'][corpus]:.0f} MB | {m['tokens_per_s']:.0f} | "
                     f"{m['peak_rss_mib']:.0f} |")
    lines += ["", f"Streamed / cached tokens/s: {stream['tokens_per_s_streamed_vs_cached']:.3f} (1x), "
              f"{stream['tokens_per_s_10x_vs_cached']:.3f} (10x); peak RSS 10x / 1x streamed: "
              f"{stream['peak_rss_10x_vs_1x']:.3f}."]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    os.chdir(REPO)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report = new_report(SCRIPT, settings=vars(args))
    report["memory"] = memory_per_rank(args, work)
    report["sharded_export"] = sharded_export(Path(report["memory"]["fsdp2"]["run_dir"]), work)
    report["streaming"] = streaming(args, work)
    write_report(report, markdown(report), args.output)


if __name__ == "__main__":
    main()
