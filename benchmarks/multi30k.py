"""Multi30k en-de benchmark: a small T5 trained from scratch on CPU within a time budget, through lit_finetune's real
CLI and the shipped config (configs/seq2seq/multi30k_en_de.yaml); BLEU on the validation set next to a baseline that
copies the English source (the floor: names and numbers carry over).

Steps: (1) a cased WordPiece tokenizer of the English and German training text (`lit-finetune tokenizer`'s function),
(2) `fit` on the local parallel files until --epochs or --max_steps is done or --budget_s of training time is spent
(Lightning's max_time, which also stops a run mid-epoch), validating once at the end (val/bleu, val/rouge*),
(3) `predict` on the validation set: greedy translations scored by sacrebleu directly, as a check of val/bleu.

    python benchmarks/multi30k.py                                   # ~10 minutes on 2 CPU cores
    python benchmarks/multi30k.py --max_train_examples 256 --budget_s 20 --limit_val_batches 1 --max_new_tokens 8

Data: ../shared/data/multi30k/{train,val}.{en,de}.gz relative to the repo root (one sentence per line, aligned).
Set HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false on a machine offline.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # wall time counts from here, so it includes importing the framework

import argparse  # noqa: E402  (imports after START on purpose)
import csv
import math
import os
from datetime import datetime
from pathlib import Path

from common import machine_line, new_report, peak_rss_mib, write_report

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().relative_to(REPO)
CONFIG = Path("configs/seq2seq/multi30k_en_de.yaml")  # paths relative to the repo root (main() changes into it)
DATA = Path("../shared/data/multi30k")
SPLIT_FILES = {"train": "train.{lang}.gz", "validation": "val.{lang}.gz"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small:t5", help="size preset (random weights) or encoder-decoder folder")
    parser.add_argument("--budget_s", type=float, default=420, help="training time cap in seconds (max_time)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs, if the budget allows (sizes the LR decay)")
    parser.add_argument("--max_steps", type=int, default=None, help="optimizer steps instead of epochs (sizes the "
                        "LR decay; pick it from a short run's samples/s so that it fits the budget)")
    parser.add_argument("--batch_size", type=int, default=32, help="training pairs per batch (CPU: more updates)")
    parser.add_argument("--learning_rate", type=float, default=None, help=f"default: {CONFIG}'s")
    parser.add_argument("--vocab_size", type=int, default=8000, help="of the WordPiece tokenizer")
    parser.add_argument("--max_train_examples", type=int, default=None, help="first N training pairs (smoke runs)")
    parser.add_argument("--limit_val_batches", default="1.0", help="validation/predict batches: a fraction, or a "
                        "count for smoke runs (Lightning's limit_val_batches)")
    parser.add_argument("--max_new_tokens", type=int, default=None, help=f"generation length; default: {CONFIG}'s")
    parser.add_argument("--output", default="runs/benchmarks/multi30k.json", help="JSON report")
    parser.add_argument("--run_dir", default=None, help="default runs/benchmarks/multi30k-<time>")
    return parser.parse_args(argv)


def build_tokenizer(run_dir: Path, vocab_size: int) -> tuple[Path, float]:
    """A cased WordPiece tokenizer of both languages' training text: its [SEP] ends every target, so T5 learns to
    stop. (Byte-level BPE has no end token of its own.)"""
    from lit_finetune.data.seq2seq import read_lines
    from lit_finetune.data.tokenizer_training import train_tokenizer

    started = time.perf_counter()
    corpus = run_dir / "tokenizer-corpus.txt"
    lines = [line for lang in ("en", "de")
             for line in read_lines(DATA / SPLIT_FILES["train"].format(lang=lang), "--data")]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    folder = train_tokenizer(str(corpus), str(run_dir / "tokenizer"), kind="wordpiece", vocab_size=vocab_size,
                             lowercase=False)
    return folder, time.perf_counter() - started


def per_epoch(run: Path, key: str) -> list[float]:
    return [float(r[key]) for r in csv.DictReader((run / "metrics.csv").open()) if r.get(key)]


def main() -> None:
    args = parse_args()
    os.chdir(REPO)
    run_dir = Path(args.run_dir or f"runs/benchmarks/multi30k-{datetime.now():%Y%m%d-%H%M%S}")
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer, tokenizer_s = build_tokenizer(run_dir, args.vocab_size)

    import sacrebleu
    import torch
    from lightning.pytorch.callbacks import Timer

    from lit_finetune.commands import process_defaults
    from lit_finetune.commands.fit import LitFinetuneCLI
    from lit_finetune.data.seq2seq import read_lines

    process_defaults()  # as the `lit-finetune` command does
    budget = int(args.budget_s)
    overrides = [
        f"--model.init_args.model_name_or_path={args.model}",
        f"--model.init_args.tokenizer_name_or_path={tokenizer}",
        "--data.init_args.dataset_name=null",
        *(f"--data.init_args.{split}_file={DATA / name}" for split, name in SPLIT_FILES.items()),
        f"--data.init_args.batch_size={args.batch_size}",
        f"--data.init_args.max_train_examples={args.max_train_examples or 'null'}",
        f"--data.init_args.cache_dir={run_dir / 'token-cache'}",  # fresh: tokenizing counts in the wall time
        f"--trainer.max_epochs={args.epochs}",
        f"--trainer.max_steps={args.max_steps or -1}",
        f"--trainer.max_time=00:{budget // 3600:02d}:{budget % 3600 // 60:02d}:{budget % 60:02d}",
        f"--trainer.limit_val_batches={args.limit_val_batches}",
        f"--trainer.limit_predict_batches={args.limit_val_batches}",
        f"--trainer.default_root_dir={run_dir / 'run'}",
        "--trainer.callbacks+=lit_finetune.callbacks.Throughput",
    ]
    if args.learning_rate is not None:
        overrides.append(f"--model.init_args.learning_rate={args.learning_rate}")
    if args.max_new_tokens is not None:
        overrides.append(f"--model.init_args.max_new_tokens={args.max_new_tokens}")
    fit_started = time.perf_counter()
    cli = LitFinetuneCLI(args=["fit", f"--config={CONFIG}", *overrides])
    fit_s = time.perf_counter() - fit_started
    trainer, run = cli.trainer, Path(cli.trainer.default_root_dir)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    train_pairs = len(cli.datamodule.splits["train"])
    timer = next(cb for cb in trainer.callbacks if isinstance(cb, Timer))

    # Greedy translations of the validation set by the final model, scored by sacrebleu itself.
    rows = [row for batch in trainer.predict(cli.model, datamodule=cli.datamodule) for row in batch]
    sources = read_lines(DATA / SPLIT_FILES["validation"].format(lang="en"), "--data")
    references = read_lines(DATA / SPLIT_FILES["validation"].format(lang="de"), "--data")
    predicted_refs = [references[int(r["id"])] for r in rows]
    bleu = sacrebleu.BLEU()  # corpus BLEU, 13a tokenization, cased: the defaults of `sacrebleu` on the command line
    sacre = bleu.corpus_score([r["prediction"] for r in rows], [predicted_refs])
    copy = bleu.corpus_score(sources[:len(rows)], [references[:len(rows)]])

    samples_per_s = per_epoch(run, "perf/samples_per_s")
    result = dict(
        model=args.model, train_pairs=train_pairs, val_pairs=len(rows), global_step=trainer.global_step,
        epochs=round(trainer.global_step / math.ceil(train_pairs / args.batch_size), 3),
        stopped_by_time=timer.time_remaining("train") <= 0,
        val_bleu_sacrebleu=sacre.score, val_bleu_logged=metrics.get("val/bleu"),
        val_rouge1=metrics.get("val/rouge1"), val_rouge2=metrics.get("val/rouge2"),
        val_rougeL=metrics.get("val/rougeL"), val_loss=metrics.get("val/loss"), copy_source_bleu=copy.score,
        samples_per_s=samples_per_s[-1] if samples_per_s else None,
        tokens_per_s=(per_epoch(run, "perf/tokens_per_s") or [None])[-1],
        peak_rss_mib=peak_rss_mib(), fit_s=fit_s, tokenizer_s=tokenizer_s, wall_s=time.perf_counter() - START,
        bleu_signature=str(bleu.get_signature()), torch_threads=torch.get_num_threads())
    report = new_report(SCRIPT, data=str(DATA), run_dir=str(run_dir), config=str(CONFIG), settings=vars(args),
                        result=result, ratios={"BLEU model/copy-source (> 1: the model beats copying the source)":
                                               sacre.score / copy.score if copy.score else None})
    lines = ["| system | val BLEU (sacrebleu) | val ROUGE-L | samples/s | peak RSS MiB | steps | fit s |",
             "|---|---|---|---|---|---|---|",
             f"| lit_finetune {args.model} from scratch | {sacre.score:.2f} | {result['val_rougeL'] or 0:.2f} | "
             f"{result['samples_per_s'] or 0:.1f} | {result['peak_rss_mib']:.0f} | {result['global_step']} | "
             f"{fit_s:.0f} |",
             f"| copy the English source | {copy.score:.2f} | | | | | |", "",
             f"- val/bleu logged by lit_finetune: {result['val_bleu_logged']}; sacrebleu on the predictions: "
             f"{sacre.score:.2f} (the same when the whole validation set was generated at the last validation)",
             f"- command: `{report['command']}`; {train_pairs} training pairs, {result['epochs']} epochs, "
             f"stopped by the time budget: {result['stopped_by_time']}",
             f"- machine: {machine_line(report['machine'])}; {result['torch_threads']} torch threads"]
    write_report(report, "\n".join(lines), args.output)


if __name__ == "__main__":
    main()
