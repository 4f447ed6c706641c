"""SST-2 benchmark: lit_finetune against a plain Hugging Face `transformers.Trainer`, same model, data and recipe.

Both fine-tune the packaged all-MiniLM-L6-v2 on SST-2 train and evaluate on dev. The recipe (learning rate, weight
decay, warmup, schedule, batch size, max_length, length-grouped batches, gradient clipping, seed) is read from
configs/classification/sst2.yaml, so the baseline cannot drift from what lit_finetune ships. Each system runs in its
own subprocess (this script with the hidden `--run lit|hf`), so its peak RSS is its own; both children measure with
the same code (StepClock, finish).

    python benchmarks/sst2_classification.py                            # both systems, full train set, 1 epoch
    python benchmarks/sst2_classification.py --max_train_examples 1000  # smoke run, a couple of minutes on CPU
    python benchmarks/sst2_classification.py --hf_report_to wandb       # the Trainer logs to W&B too, as the recipe

Data: ../shared/data/sst2/{train,dev}.tsv relative to the repo root (GLUE TSVs: `sentence<TAB>label`, unquoted), or
another folder of the same layout with `--data_dir` (benchmarks/long_sst2.py builds one of long texts).
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
    SST2,
    StepClock,
    emit_result,
    hf_clock,
    lightning_clock,
    mark_phase,
    memory_phase_table,
    minilm_path,
    new_report,
    provenance_lines,
    read_glue_tsv,
    run_child,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().relative_to(REPO)
CONFIG = Path("configs/classification/sst2.yaml")  # paths relative to the repo root (main() changes into it)
DATA = SST2
LABEL_NAMES = ["negative", "positive"]
SYSTEMS = {"lit": "lit_finetune", "hf": "HF Trainer"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default="hf,lit", help="which systems to run, in this order (default hf,lit)")
    parser.add_argument("--max_train_examples", type=int, default=None, help="first N training rows (smoke runs)")
    parser.add_argument("--learning_rate", type=float, default=None, help=f"both systems (default: {CONFIG})")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--hf_report_to", choices=["none", "wandb"], default="none",
                        help="the Trainer's logger: none (default), or wandb like lit_finetune's recipe")
    parser.add_argument("--data_dir", type=Path, default=DATA,
                        help=f"train.tsv and dev.tsv in SST-2's layout (default {DATA}; benchmarks/long_sst2.py "
                             "builds a long-text set)")
    parser.add_argument("--output", default="runs/benchmarks/sst2.json", help="JSON report")
    parser.add_argument("--run_dir", default=None, help="run folders (default runs/benchmarks/sst2-<time>/<system>)")
    parser.add_argument("--run", choices=sorted(SYSTEMS), help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not args.systems or set(args.systems) - set(SYSTEMS):
        parser.error(f"--systems: got {args.systems}; choose from {sorted(SYSTEMS)}, comma-separated")
    return args


def recipe(args: argparse.Namespace) -> dict:
    """The shared hyperparameters, from the lit_finetune config (learning rate overridable for both systems)."""
    import yaml

    config = yaml.safe_load(CONFIG.read_text())
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    return dict(learning_rate=float(model["learning_rate"] if args.learning_rate is None else args.learning_rate),
                weight_decay=float(model["weight_decay"]), warmup=float(model["warmup"]),
                lr_scheduler=model["lr_scheduler"], batch_size=int(data["batch_size"]),
                max_length=int(data["max_length"]), group_by_length=bool(data.get("group_by_length", False)),
                max_grad_norm=float(config["trainer"]["gradient_clip_val"]),
                seed=int(config["seed_everything"]), epochs=args.epochs,
                log_every_n_steps=int(config["trainer"]["log_every_n_steps"]))


def read_tsv(path: Path, limit: int | None = None) -> tuple[list[str], list[int]]:
    """Sentences and labels of a GLUE TSV (unquoted: a `"` is text), the first `limit` rows like lit_finetune."""
    rows = read_glue_tsv(path)[:limit]
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def finish(system: str, clock: StepClock, train_examples: int, epochs: int, dev_acc: float) -> None:
    emit_result(START, clock, train_examples * epochs, system=system, dev_acc=dev_acc, train_examples=train_examples)


# --------------------------------------------------------------------------------------------------------------- #
# The two systems (each imports only its own framework, so neither pays for the other's memory)


def run_lit(args: argparse.Namespace, hp: dict) -> None:
    """lit_finetune through its real CLI and the shipped SST-2 config; only the data source and folders change."""
    from lit_finetune.commands import process_defaults
    from lit_finetune.commands.fit import LitFinetuneCLI

    mark_phase("setup")  # reading and tokenizing the data, loading the model, until the first training step
    LitStepClock = lightning_clock()  # the CLI instantiates it from its class path
    process_defaults()  # as the `lit-finetune` command does
    cli = LitFinetuneCLI(args=[
        "fit", f"--config={CONFIG}",
        "--data.init_args.dataset_name=null",
        f"--data.init_args.train_file={args.data_dir / 'train.tsv'}",
        f"--data.init_args.validation_file={args.data_dir / 'dev.tsv'}",
        "--data.init_args.text_column=sentence",
        "--data.init_args.id_column=null",
        f"--data.init_args.label_names=[{','.join(LABEL_NAMES)}]",
        f"--data.init_args.max_train_examples={args.max_train_examples or 'null'}",
        # A fresh tokenization cache, so lit_finetune's wall time includes tokenizing, like the baseline's.
        f"--data.init_args.cache_dir={Path(args.run_dir).with_name('lit-cache')}",
        f"--model.init_args.learning_rate={hp['learning_rate']}",
        "--model.init_args.pooling=pooler",  # the Trainer's stock head (lit_finetune's default for MiniLM: mean)
        f"--trainer.max_epochs={hp['epochs']}",
        f"--trainer.default_root_dir={args.run_dir}",
        f"--trainer.callbacks+=__main__.{LitStepClock.__name__}",
    ])
    clock = next(cb for cb in cli.trainer.callbacks if isinstance(cb, LitStepClock))
    finish("lit", clock, len(cli.datamodule.splits["train"]), hp["epochs"],
           float(cli.trainer.callback_metrics["val/acc"]))


def run_hf(args: argparse.Namespace, hp: dict) -> None:
    """The plain transformers recipe a user would write: Trainer defaults wherever they already match the config."""
    import numpy as np
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    mark_phase("setup")
    if args.hf_report_to == "wandb":  # the run's files in its run folder, as lit_finetune's; offline without a key
        os.makedirs(args.run_dir, exist_ok=True)
        os.environ.update(WANDB_DIR=args.run_dir, WANDB_PROJECT="lit-finetune-benchmarks")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())

    def split(name: str, limit: int | None = None) -> Dataset:
        sentences, labels = read_tsv(args.data_dir / f"{name}.tsv", limit)
        return Dataset.from_dict({"sentence": sentences, "label": labels}).map(
            lambda b: tokenizer(b["sentence"], truncation=True, max_length=hp["max_length"]),
            batched=True, remove_columns=["sentence"])

    train, dev = split("train", args.max_train_examples), split("dev")
    set_seed(hp["seed"])  # before the model, so the classifier head starts from the seed too
    id2label = dict(enumerate(LABEL_NAMES))
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_path(), num_labels=len(LABEL_NAMES), id2label=id2label, label2id={v: k for k, v in id2label.items()})
    training_args = TrainingArguments(
        output_dir=args.run_dir, num_train_epochs=hp["epochs"], seed=hp["seed"],
        per_device_train_batch_size=hp["batch_size"], per_device_eval_batch_size=2 * hp["batch_size"],  # lit's eval
        learning_rate=hp["learning_rate"], weight_decay=hp["weight_decay"], warmup_steps=hp["warmup"],  # a ratio < 1
        lr_scheduler_type=hp["lr_scheduler"], max_grad_norm=hp["max_grad_norm"], optim="adamw_torch_fused",
        train_sampling_strategy="group_by_length" if hp["group_by_length"] else "random",
        logging_steps=hp["log_every_n_steps"], dataloader_num_workers=0, save_strategy="no", eval_strategy="no",
        report_to=args.hf_report_to)
    clock = hf_clock()
    trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorWithPadding(tokenizer), callbacks=[clock],
                      compute_metrics=lambda p: {"accuracy": float(np.mean(p.predictions.argmax(-1) == p.label_ids))})
    trainer.train()
    clock.eval_begin()
    accuracy = trainer.evaluate()["eval_accuracy"]
    clock.eval_end()
    finish("hf", clock, len(train), hp["epochs"], accuracy)


# --------------------------------------------------------------------------------------------------------------- #
# The parent: run the children, add what needs no child, report


def count_train_tokens(data_dir: Path, limit: int | None, max_length: int) -> int:
    """Non-pad tokens in one epoch of the training set, counted once with the same tokenizer and truncation."""
    from transformers import AutoTokenizer

    sentences, _ = read_tsv(data_dir / "train.tsv", limit)
    masks = AutoTokenizer.from_pretrained(minilm_path())(sentences, truncation=True, max_length=max_length)
    return sum(map(sum, masks["attention_mask"]))


def markdown(rows: list[dict], ratios: dict, report: dict) -> str:
    header = ["system", "dev acc", "train time s", "samples/s", "non-pad tokens/s", "dev eval s", "peak RSS MiB",
              "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append(f"| {SYSTEMS[r['system']]} | {r['dev_acc']:.4f} | {r['train_s']:.1f} | {r['samples_per_s']:.1f} "
                     f"| {r['tokens_per_s']:.0f} | {r['eval_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['wall_s']:.1f} |")
    lines.append("")
    lines += [f"- {name}: {value:.3f}" for name, value in ratios.items()]
    lines += [f"- {SYSTEMS[r['system']]}: peak RSS {r['train_peak_rss_mib']:.0f} MiB by the end of training (before "
              f"evaluation, checkpoints, export); CPU {r['cpu_s']:.0f} s on {r['torch_threads']} torch threads; "
              f"1-min load average {r['load_1m']:.1f} at its end" for r in rows]
    lines += ["", "Resident memory phase by phase (sampled every 50 ms):", ""]
    lines += memory_phase_table(rows, lambda r: SYSTEMS[r["system"]])
    lines += ["", *provenance_lines(report),
              f"- recipe: {report['recipe']}; {report['train_examples']} training examples, "
              f"{report['train_tokens_per_epoch']} non-pad tokens per epoch; the Trainer logs to "
              f"{report['hf_report_to']}"]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    os.chdir(REPO)
    hp = recipe(args)
    if args.run:
        {"lit": run_lit, "hf": run_hf}[args.run](args, hp)
        return
    run_dir = Path(args.run_dir or f"runs/benchmarks/sst2-{datetime.now():%Y%m%d-%H%M%S}")
    # A system named twice (--systems hf,lit,hf,lit) runs twice, interleaved; the ratios compare the means.
    rows = [run_child(str(SCRIPT), system, SYSTEMS[system], run_dir / f"round{args.systems[:i].count(system)}")
            for i, system in enumerate(args.systems)]
    train_tokens = count_train_tokens(args.data_dir, args.max_train_examples, hp["max_length"])
    for row in rows:
        row["tokens_per_s"] = train_tokens * hp["epochs"] / row["train_s"]

    def mean(system: str, key: str) -> float:
        values = [row[key] for row in rows if row["system"] == system]
        return sum(values) / len(values)

    ratios = {}
    if {"lit", "hf"} <= set(args.systems):
        ratios = {"samples/s lit/HF (> 1: lit_finetune trains faster)":
                  mean("lit", "samples_per_s") / mean("hf", "samples_per_s"),
                  "dev evaluation time lit/HF (< 1: lit_finetune evaluates faster)":
                  mean("lit", "eval_s") / mean("hf", "eval_s"),
                  "peak RSS lit/HF (> 1: lit_finetune uses more memory)":
                  mean("lit", "peak_rss_mib") / mean("hf", "peak_rss_mib")}
    report = new_report(SCRIPT, recipe=hp, data=str(args.data_dir), run_dir=str(run_dir),
                        hf_report_to=args.hf_report_to, train_examples=rows[0]["train_examples"] if rows else 0,
                        train_tokens_per_epoch=train_tokens, results=rows, ratios=ratios)
    write_report(report, markdown(rows, ratios, report), args.output)


if __name__ == "__main__":
    main()
