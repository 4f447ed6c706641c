"""CoNLL-2003 NER benchmark: lit_finetune with and without a CRF against a run_ner-style Hugging Face `Trainer`.

All three fine-tune the packaged all-MiniLM-L6-v2 on train.txt and report entity-level F1 (seqeval, conlleval
matching) on valid.txt (dev) and test.txt. The recipe (learning rate, weight decay, warmup, schedule, batch size,
max_length, gradient clipping, seed, first-sub-token labels) is read from configs/ner/conll2003.yaml, so the baseline
cannot drift from what lit_finetune ships. Each system runs in its own subprocess, so its peak RSS is its own.

    python benchmarks/conll2003.py                          # hf, lit, lit_crf; full train set, 1 epoch
    python benchmarks/conll2003.py --max_train_examples 500 # smoke run
    python benchmarks/conll2003.py --systems hf,lit --seeds 42,43,44   # each system once per seed, then mean and std

Data: ../shared/data/conll2003/{train,valid,test}.txt relative to the repo root (word POS chunk NER, IOB2).
Set HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false on a machine offline.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # a child's wall time counts from here, so it includes importing its framework

import argparse  # noqa: E402  (imports after START on purpose)
import os
from datetime import datetime
from pathlib import Path

from common import (
    emit_result,
    hf_clock,
    lightning_clock,
    minilm_path,
    new_report,
    provenance_lines,
    run_child,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().relative_to(REPO)
CONFIG = Path("configs/ner/conll2003.yaml")  # paths relative to the repo root (main() changes into it)
DATA = Path("../shared/data/conll2003")
SYSTEMS = {"hf": "HF Trainer (run_ner-style)", "lit": "lit_finetune", "lit_crf": "lit_finetune + CRF"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default="hf,lit,lit_crf", help="which systems to run, in this order")
    parser.add_argument("--max_train_examples", type=int, default=None, help="first N training sentences")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", default=None, help="comma-separated seeds, each system run once per seed "
                        "(default: the config's seed_everything)")
    parser.add_argument("--output", default="runs/benchmarks/conll2003.json", help="JSON report")
    parser.add_argument("--run_dir", default=None,
                        help="run folders (default runs/benchmarks/conll2003-<time>/<system>)")
    parser.add_argument("--run", choices=sorted(SYSTEMS), help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not args.systems or set(args.systems) - set(SYSTEMS):
        parser.error(f"--systems: got {args.systems}; choose from {sorted(SYSTEMS)}, comma-separated")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else []
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    return args


def recipe(args: argparse.Namespace) -> dict:
    import yaml

    config = yaml.safe_load(CONFIG.read_text())
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    return dict(learning_rate=float(model["learning_rate"]), weight_decay=float(model["weight_decay"]),
                warmup=float(model["warmup"]), lr_scheduler=model["lr_scheduler"], batch_size=int(data["batch_size"]),
                max_length=int(data["max_length"]), max_grad_norm=float(config["trainer"]["gradient_clip_val"]),
                seed=args.seed if args.seed is not None else int(config["seed_everything"]), epochs=args.epochs)


def run_lit(args: argparse.Namespace, hp: dict) -> None:
    """lit_finetune through its real CLI and the shipped config; only the data source and folders change."""
    from lit_finetune.commands import process_defaults
    from lit_finetune.commands.fit import LitFinetuneCLI

    LitStepClock = lightning_clock()
    process_defaults()
    cli = LitFinetuneCLI(args=[
        "fit", f"--config={CONFIG}", f"--seed_everything={hp['seed']}", "--data.init_args.dataset_name=null",
        *[f"--data.init_args.{split}_file={DATA / name}" for split, name in
          (("train", "train.txt"), ("validation", "valid.txt"), ("test", "test.txt"))],
        f"--data.init_args.max_train_examples={args.max_train_examples or 'null'}",
        f"--data.init_args.cache_dir={Path(args.run_dir).with_name(args.run + '-cache')}",  # tokenizing is timed too
        f"--model.init_args.use_crf={args.run == 'lit_crf'}",
        f"--trainer.max_epochs={hp['epochs']}", f"--trainer.default_root_dir={args.run_dir}",
        "--trainer.callbacks+=__main__.LitStepClock"])
    clock = next(cb for cb in cli.trainer.callbacks if isinstance(cb, LitStepClock))
    dev = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    test = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
    emit_result(START, clock, len(cli.datamodule.splits["train"]) * hp["epochs"], system=args.run, seed=hp["seed"],
                train_examples=len(cli.datamodule.splits["train"]), dev_f1=dev["val/f1"], test_f1=test["test/f1"],
                dev_precision=dev["val/precision"], dev_recall=dev["val/recall"],
                test_per_type={k[len("test/f1_"):]: v for k, v in test.items() if k.startswith("test/f1_")})


def read_conll(path: Path, limit: int | None = None) -> tuple[list[list[str]], list[list[str]]]:
    """Words and NER tags (last column) of each sentence, -DOCSTART- lines skipped: the reader run_ner users write."""
    sentences, words, tags = [], [], []
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                sentences.append((words, tags))
                words, tags = [], []
            continue
        words.append(fields[0])
        tags.append(fields[-1])
    sentences = sentences[:limit]
    return [s[0] for s in sentences], [s[1] for s in sentences]


def run_hf(args: argparse.Namespace, hp: dict) -> None:
    """transformers' run_ner recipe: first sub-token labelled, DataCollatorForTokenClassification, seqeval metrics."""
    import numpy as np
    from datasets import Dataset
    from seqeval.metrics import classification_report
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    train_words, train_tags = read_conll(DATA / "train.txt", args.max_train_examples)
    names = sorted({t for tags in train_tags for t in tags}, key=lambda t: (t != "O", t[2:], t))
    label2id = {name: i for i, name in enumerate(names)}

    def split(words: list[list[str]], tags: list[list[str]]) -> Dataset:
        def tokenize(batch):
            enc = tokenizer(batch["words"], is_split_into_words=True, truncation=True, max_length=hp["max_length"])
            labels = []
            for i, row in enumerate(batch["tags"]):
                previous, ids = None, []
                for word in enc.word_ids(i):
                    ids.append(label2id[row[word]] if word is not None and word != previous else -100)
                    previous = word
                labels.append(ids)
            enc["labels"] = labels
            return enc
        return Dataset.from_dict({"words": words, "tags": tags}).map(tokenize, batched=True,
                                                                      remove_columns=["words", "tags"])

    def entity_f1(prediction) -> dict:
        gold, predicted = [], []
        for logits, labels in zip(prediction.predictions, prediction.label_ids):
            keep = labels != -100
            gold.append([names[i] for i in labels[keep]])
            predicted.append([names[i] for i in np.asarray(logits).argmax(-1)[keep]])
        report = classification_report(gold, predicted, output_dict=True, zero_division=0)
        return {"f1": report["micro avg"]["f1-score"], "precision": report["micro avg"]["precision"],
                "recall": report["micro avg"]["recall"],
                **{f"f1_{k}": v["f1-score"] for k, v in report.items() if not k.endswith(" avg")}}

    train = split(train_words, train_tags)
    dev, test = (split(*read_conll(DATA / name)) for name in ("valid.txt", "test.txt"))
    set_seed(hp["seed"])
    model = AutoModelForTokenClassification.from_pretrained(
        minilm_path(), num_labels=len(names), id2label=dict(enumerate(names)), label2id=label2id)
    training_args = TrainingArguments(
        output_dir=args.run_dir, num_train_epochs=hp["epochs"], seed=hp["seed"],
        per_device_train_batch_size=hp["batch_size"], per_device_eval_batch_size=2 * hp["batch_size"],
        learning_rate=hp["learning_rate"], weight_decay=hp["weight_decay"], warmup_steps=hp["warmup"],  # a ratio < 1
        lr_scheduler_type=hp["lr_scheduler"], max_grad_norm=hp["max_grad_norm"], optim="adamw_torch_fused",
        dataloader_num_workers=0, save_strategy="no", eval_strategy="no", report_to="none")
    clock = hf_clock()
    trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorForTokenClassification(tokenizer), callbacks=[clock],
                      compute_metrics=entity_f1)
    trainer.train()
    dev_scores = trainer.evaluate()
    test_scores = trainer.evaluate(test, metric_key_prefix="test")
    emit_result(START, clock, len(train) * hp["epochs"], system="hf", seed=hp["seed"], train_examples=len(train),
                dev_f1=dev_scores["eval_f1"], test_f1=test_scores["test_f1"],
                dev_precision=dev_scores["eval_precision"], dev_recall=dev_scores["eval_recall"],
                test_per_type={k[len("test_f1_"):]: v for k, v in test_scores.items() if k.startswith("test_f1_")})


def seed_summary(rows: list[dict]) -> dict:
    """Mean and sample standard deviation over seeds of each system's F1, speed and memory."""
    from statistics import mean, stdev

    summary = {}
    for system in dict.fromkeys(r["system"] for r in rows):
        runs = [r for r in rows if r["system"] == system]
        summary[system] = {"seeds": ",".join(str(r["seed"]) for r in runs)}
        for key in ("dev_f1", "test_f1", "samples_per_s", "peak_rss_mib"):
            values = [r[key] for r in runs]
            summary[system][f"{key}_mean"] = mean(values)
            summary[system][f"{key}_std"] = stdev(values) if len(values) > 1 else 0.0
    return summary


def markdown(rows: list[dict], report: dict) -> str:
    header = ["system", "seed", "dev F1", "test F1", "test F1 PER / LOC / ORG / MISC", "train time s", "samples/s",
              "peak RSS MiB", "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        per_type = " / ".join(f"{r['test_per_type'].get(t, 0):.3f}" for t in ("PER", "LOC", "ORG", "MISC"))
        lines.append(f"| {SYSTEMS[r['system']]} | {r['seed']} | {r['dev_f1']:.4f} | {r['test_f1']:.4f} | {per_type} "
                     f"| {r['train_s']:.1f} | {r['samples_per_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['wall_s']:.1f} |")
    lines.append("")
    if report["seeds"]:
        lines += ["| system | seeds | dev F1 mean ± std | test F1 mean ± std |", "|---|---|---|---|"]
        lines += [f"| {SYSTEMS[system]} | {s['seeds']} | {s['dev_f1_mean']:.4f} ± {s['dev_f1_std']:.4f} "
                  f"| {s['test_f1_mean']:.4f} ± {s['test_f1_std']:.4f} |" for system, s in report["summary"].items()]
        lines.append("")
    lines += [f"- {name}: {value:.4f}" for name, value in report["ratios"].items()]
    lines += [f"- {SYSTEMS[r['system']]}: peak RSS {r['train_peak_rss_mib']:.0f} MiB by the end of training; CPU "
              f"{r['cpu_s']:.0f} s on {r['torch_threads']} torch threads; 1-min load {r['load_1m']:.1f} at its end"
              for r in rows]
    lines += [*provenance_lines(report), f"- recipe: {report['recipe']}"]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    os.chdir(REPO)
    hp = recipe(args)
    if args.run:
        (run_hf if args.run == "hf" else run_lit)(args, hp)
        return
    run_dir = Path(args.run_dir or f"runs/benchmarks/conll2003-{datetime.now():%Y%m%d-%H%M%S}")
    if args.seeds:
        rows = [run_child(str(SCRIPT), system, f"{SYSTEMS[system]}, seed {seed}", run_dir / f"seed{seed}",
                          "--seed", str(seed)) for seed in args.seeds for system in args.systems]
    else:
        rows = [run_child(str(SCRIPT), system, SYSTEMS[system], run_dir) for system in args.systems]
    summary = seed_summary(rows)
    ratios = {}
    if "hf" in summary:
        hf = summary["hf"]
        for system in ("lit", "lit_crf"):
            if system in summary:
                for split in ("test", "dev"):
                    ratios[f"{split} F1 {system} - HF (mean over seeds)"] = (summary[system][f"{split}_f1_mean"]
                                                                             - hf[f"{split}_f1_mean"])
                ratios[f"samples/s {system}/HF"] = summary[system]["samples_per_s_mean"] / hf["samples_per_s_mean"]
                ratios[f"peak RSS {system}/HF"] = summary[system]["peak_rss_mib_mean"] / hf["peak_rss_mib_mean"]
    report = new_report(SCRIPT, recipe=hp, seeds=args.seeds, data=str(DATA), run_dir=str(run_dir), results=rows,
                        summary=summary, ratios=ratios)
    write_report(report, markdown(rows, report), args.output)


if __name__ == "__main__":
    main()
