"""SQuAD v1.1 benchmark: lit_finetune against a run_qa-style Hugging Face `Trainer`, same model, data and recipe.

No SQuAD training file is shipped, so the official dev file is split by article, in file order: the first 40 articles
train, the last 8 are evaluated (their titles are printed), written as SQuAD JSON into the run folder. Both systems
fine-tune the packaged all-MiniLM-L6-v2 and report the official SQuAD exact match and F1 (0-100) on the 8 articles,
training windows/s and peak RSS. The recipe (learning rate, weight decay, warmup, schedule, batch size, max_length,
doc_stride, n-best, max answer length, gradient clipping, seed, epochs) is read from configs/qa/squad.yaml, so the
baseline cannot drift from what lit_finetune ships. Each system runs in its own subprocess, so its peak RSS is its own.

    python benchmarks/squad.py                                       # hf, lit: 2 epochs on the 40 articles
    python benchmarks/squad.py --max_steps 3 --eval_questions 40     # smoke run, a minute or two on CPU

Data: ../shared/data/squad/dev-v1.1.json relative to the repo root.
Set HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false on a machine offline.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # a child's wall time counts from here, so it includes importing its framework

import argparse  # noqa: E402  (imports after START on purpose)
import json
import math
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
CONFIG = Path("configs/qa/squad.yaml")  # paths relative to the repo root (main() changes into it)
DATA = Path("../shared/data/squad/dev-v1.1.json")
TRAIN_ARTICLES = 40  # the first 40 of the dev file's 48 articles train; the last 8 are evaluated
SYSTEMS = {"hf": "HF Trainer (run_qa-style)", "lit": "lit_finetune"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default="hf,lit", help="which systems to run, in this order (default hf,lit)")
    parser.add_argument("--epochs", type=int, default=None, help=f"training epochs (default: {CONFIG})")
    parser.add_argument("--max_steps", type=int, default=None,
                        help="stop (and validate) after this many optimizer steps, within the first epoch (smoke runs)")
    parser.add_argument("--batch_size", type=int, default=None, help=f"training windows per batch (default: {CONFIG})")
    parser.add_argument("--max_length", type=int, default=None, help=f"tokens per window (default: {CONFIG})")
    parser.add_argument("--learning_rate", type=float, default=None, help=f"peak learning rate (default: {CONFIG})")
    parser.add_argument("--eval_questions", type=int, default=None,
                        help="evaluate only the first N questions of the 8 articles (smoke runs)")
    parser.add_argument("--output", default="runs/benchmarks/squad.json", help="JSON report")
    parser.add_argument("--run_dir", default=None, help="run folders (default runs/benchmarks/squad-<time>/<system>)")
    parser.add_argument("--run", choices=sorted(SYSTEMS), help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not args.systems or set(args.systems) - set(SYSTEMS):
        parser.error(f"--systems: got {args.systems}; choose from {sorted(SYSTEMS)}, comma-separated")
    return args


def recipe(args: argparse.Namespace) -> dict:
    """The shared hyperparameters, from the lit_finetune config (the command line overrides them for both)."""
    import yaml

    config = yaml.safe_load(CONFIG.read_text())
    model, data, trainer = config["model"]["init_args"], config["data"]["init_args"], config["trainer"]
    pick = lambda given, default: default if given is None else given  # noqa: E731
    return dict(learning_rate=float(pick(args.learning_rate, model["learning_rate"])),
                weight_decay=float(model["weight_decay"]), warmup=float(model["warmup"]),
                lr_scheduler=model["lr_scheduler"], batch_size=int(pick(args.batch_size, data["batch_size"])),
                max_length=int(pick(args.max_length, data["max_length"])), doc_stride=int(data["doc_stride"]),
                n_best=int(model["n_best"]), max_answer_length=int(model["max_answer_length"]),
                max_grad_norm=float(trainer["gradient_clip_val"]), seed=int(config["seed_everything"]),
                epochs=int(pick(args.epochs, trainer["max_epochs"])), max_steps=args.max_steps)


def write_splits(folder: Path, eval_questions: int | None) -> dict:
    """train.json (first 40 articles) and eval.json (last 8) in SQuAD's format; returns paths, titles and counts."""
    squad = json.loads(DATA.read_text("utf-8"))
    parts = {"train": squad["data"][:TRAIN_ARTICLES], "eval": squad["data"][TRAIN_ARTICLES:]}
    if eval_questions:  # smoke runs: keep the first N questions of the evaluated articles
        left, kept = eval_questions, []
        for article in parts["eval"]:
            paragraphs = []
            for paragraph in article["paragraphs"]:
                if left > 0:
                    paragraphs.append({**paragraph, "qas": paragraph["qas"][:left]})
                    left -= len(paragraphs[-1]["qas"])
            if paragraphs:
                kept.append({**article, "paragraphs": paragraphs})
        parts["eval"] = kept
    folder.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, articles in parts.items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps({"version": squad["version"], "data": articles}), encoding="utf-8")
        info[name] = dict(path=str(path), titles=[a["title"] for a in articles],
                          questions=sum(len(p["qas"]) for a in articles for p in a["paragraphs"]))
    return info


def trained_windows(clock, windows: int, batch_size: int) -> int:
    """Training windows seen in the clock's steps (each epoch ends with a short batch)."""
    per_epoch = math.ceil(windows / batch_size)
    return clock.steps // per_epoch * windows + clock.steps % per_epoch * batch_size


# --------------------------------------------------------------------------------------------------------------- #
# The two systems (each imports only its own framework)


def run_lit(args: argparse.Namespace, hp: dict, data: Path) -> None:
    """lit_finetune through its real CLI and the shipped config; only the data, limits and folders change."""
    from lit_finetune.commands import process_defaults
    from lit_finetune.commands.fit import LitFinetuneCLI

    LitStepClock = lightning_clock()
    process_defaults()
    cli = LitFinetuneCLI(args=[
        "fit", f"--config={CONFIG}", "--data.init_args.dataset_name=null",
        f"--data.init_args.train_file={data / 'train.json'}", f"--data.init_args.validation_file={data / 'eval.json'}",
        f"--data.init_args.batch_size={hp['batch_size']}", f"--data.init_args.max_length={hp['max_length']}",
        f"--data.init_args.cache_dir={Path(args.run_dir).with_name('lit-cache')}",  # tokenizing is timed too
        f"--model.init_args.learning_rate={hp['learning_rate']}", f"--trainer.max_epochs={hp['epochs']}",
        f"--trainer.max_steps={hp['max_steps'] or -1}", f"--trainer.default_root_dir={args.run_dir}",
        # A run cut short by max_steps (smoke) validates at its last step, not at an epoch end it never reaches.
        f"--trainer.val_check_interval={hp['max_steps'] or 1.0}",
        "--trainer.callbacks+=__main__.LitStepClock"])
    clock = next(cb for cb in cli.trainer.callbacks if isinstance(cb, LitStepClock))
    windows = len(cli.datamodule.splits["train"])
    metrics = cli.trainer.callback_metrics
    emit_result(START, clock, trained_windows(clock, windows, hp["batch_size"]), system="lit", train_windows=windows,
                em=float(metrics["val/em"]), f1=float(metrics["val/f1"]))


def run_hf(args: argparse.Namespace, hp: dict, data: Path) -> None:
    """The transformers run_qa.py recipe a user would write: windows, Trainer, n-best post-processing, SQuAD metric."""
    import numpy as np
    from datasets import Dataset
    from torchmetrics.functional.text import squad
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())

    def examples(name: str) -> Dataset:
        rows = [{"id": qa["id"], "context": p["context"], "question": qa["question"].lstrip(),
                 "answers": {"text": [a["text"] for a in qa["answers"]],
                             "answer_start": [a["answer_start"] for a in qa["answers"]]}}
                for article in json.loads((data / f"{name}.json").read_text())["data"]
                for p in article["paragraphs"] for qa in p["qas"]]
        return Dataset.from_list(rows)

    def windows(batch: dict) -> dict:
        return tokenizer(batch["question"], batch["context"], truncation="only_second", max_length=hp["max_length"],
                         stride=hp["doc_stride"], return_overflowing_tokens=True, return_offsets_mapping=True)

    def train_features(batch: dict) -> dict:
        enc = windows(batch)
        enc["start_positions"], enc["end_positions"] = [], []
        for i, offsets in enumerate(enc.pop("offset_mapping")):
            answers = batch["answers"][enc["overflow_to_sample_mapping"][i]]
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            sequence = enc.sequence_ids(i)
            first = sequence.index(1)
            last = len(sequence) - 1 - sequence[::-1].index(1)
            if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
                enc["start_positions"].append(0)
                enc["end_positions"].append(0)
                continue
            while first < len(offsets) and offsets[first][0] <= start_char:
                first += 1
            while offsets[last][1] >= end_char:
                last -= 1
            enc["start_positions"].append(first - 1)
            enc["end_positions"].append(last + 1)
        enc.pop("overflow_to_sample_mapping")
        return enc

    def eval_features(batch: dict) -> dict:
        enc = windows(batch)
        enc["example_id"] = [batch["id"][j] for j in enc.pop("overflow_to_sample_mapping")]
        enc["offset_mapping"] = [[o if s == 1 else None for o, s in zip(offsets, enc.sequence_ids(i))]
                                 for i, offsets in enumerate(enc["offset_mapping"])]
        return enc

    def postprocess(examples_: Dataset, features: Dataset, start_logits, end_logits) -> dict[str, str]:
        """run_qa's postprocess_qa_predictions, SQuAD v1.1 branch: best n-best span over each example's windows."""
        by_example: dict[str, list[int]] = {}
        for i, example_id in enumerate(features["example_id"]):
            by_example.setdefault(example_id, []).append(i)
        answers = {}
        for example in examples_:
            best = (-math.inf, "")
            for i in by_example.get(example["id"], []):
                offsets = features[i]["offset_mapping"]
                starts = np.argsort(start_logits[i])[-1:-hp["n_best"] - 1:-1]
                ends = np.argsort(end_logits[i])[-1:-hp["n_best"] - 1:-1]
                for s in starts:
                    for e in ends:
                        if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                            continue
                        if e < s or e - s + 1 > hp["max_answer_length"]:
                            continue
                        score = start_logits[i][s] + end_logits[i][e]
                        if score > best[0]:
                            best = (score, example["context"][offsets[s][0]:offsets[e][1]])
            answers[example["id"]] = best[1]
        return answers

    train_examples, eval_examples = examples("train"), examples("eval")
    train = train_examples.map(train_features, batched=True, remove_columns=train_examples.column_names)
    evaluation = eval_examples.map(eval_features, batched=True, remove_columns=eval_examples.column_names)
    set_seed(hp["seed"])  # before the model, so the QA head starts from the seed too
    model = AutoModelForQuestionAnswering.from_pretrained(minilm_path())
    training_args = TrainingArguments(
        output_dir=args.run_dir, num_train_epochs=hp["epochs"], max_steps=hp["max_steps"] or -1, seed=hp["seed"],
        per_device_train_batch_size=hp["batch_size"], per_device_eval_batch_size=2 * hp["batch_size"],  # lit's eval
        learning_rate=hp["learning_rate"], weight_decay=hp["weight_decay"], warmup_steps=hp["warmup"],  # a ratio < 1
        lr_scheduler_type=hp["lr_scheduler"], max_grad_norm=hp["max_grad_norm"], optim="adamw_torch_fused",
        dataloader_num_workers=0, save_strategy="no", eval_strategy="no", report_to="none")
    clock = hf_clock()
    trainer = Trainer(model=model, args=training_args, train_dataset=train, callbacks=[clock],
                      data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    start_logits, end_logits = trainer.predict(evaluation.remove_columns(["example_id", "offset_mapping"])).predictions
    answers = postprocess(eval_examples, evaluation, start_logits, end_logits)
    scores = squad([{"id": i, "prediction_text": a} for i, a in answers.items()],
                   [{"id": e["id"], "answers": e["answers"]} for e in eval_examples])
    emit_result(START, clock, trained_windows(clock, len(train), hp["batch_size"]), system="hf",
                train_windows=len(train), em=float(scores["exact_match"]), f1=float(scores["f1"]))


# --------------------------------------------------------------------------------------------------------------- #
# The parent: split the data, run the children, report


def markdown(rows: list[dict], report: dict) -> str:
    header = ["system", "EM", "F1", "train time s", "windows/s", "peak RSS MiB", "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append(f"| {SYSTEMS[r['system']]} | {r['em']:.2f} | {r['f1']:.2f} | {r['train_s']:.1f} "
                     f"| {r['samples_per_s']:.1f} | {r['peak_rss_mib']:.0f} | {r['wall_s']:.1f} |")
    lines.append("")
    lines += [f"- {name}: {value:.3f}" for name, value in report["ratios"].items()]
    lines += [f"- {SYSTEMS[r['system']]}: {r['train_windows']} training windows, {r['train_steps']} steps; peak RSS "
              f"{r['train_peak_rss_mib']:.0f} MiB by the end of training; CPU {r['cpu_s']:.0f} s on "
              f"{r['torch_threads']} torch threads; 1-min load {r['load_1m']:.1f} at its end" for r in rows]
    splits = report["splits"]
    lines += [f"- data: {splits['train']['questions']} questions of the first {TRAIN_ARTICLES} articles of "
              f"{report['data']} train; {splits['eval']['questions']} questions of the last 8 evaluated: "
              f"{', '.join(splits['eval']['titles'])}",
              *provenance_lines(report), f"- recipe: {report['recipe']}"]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    os.chdir(REPO)
    hp = recipe(args)
    if args.run:
        {"hf": run_hf, "lit": run_lit}[args.run](args, hp, Path(args.run_dir).parent / "data")
        return
    run_dir = Path(args.run_dir or f"runs/benchmarks/squad-{datetime.now():%Y%m%d-%H%M%S}")
    splits = write_splits(run_dir / "data", args.eval_questions)
    print(f"Training on {splits['train']['questions']} questions of {len(splits['train']['titles'])} articles; "
          f"evaluating {splits['eval']['questions']} questions of: {', '.join(splits['eval']['titles'])}")
    rows = [run_child(str(SCRIPT), system, SYSTEMS[system], run_dir) for system in args.systems]
    by_system = {row["system"]: row for row in rows}
    ratios = {}
    if {"lit", "hf"} <= by_system.keys():
        lit, hf = by_system["lit"], by_system["hf"]
        ratios = {"F1 lit - HF (points)": lit["f1"] - hf["f1"], "EM lit - HF (points)": lit["em"] - hf["em"],
                  "windows/s lit/HF (> 1: lit_finetune trains faster)": lit["samples_per_s"] / hf["samples_per_s"],
                  "peak RSS lit/HF (> 1: lit_finetune uses more memory)": lit["peak_rss_mib"] / hf["peak_rss_mib"]}
    report = new_report(SCRIPT, recipe=hp,
                  data=str(DATA), splits=splits, run_dir=str(run_dir), results=rows, ratios=ratios)
    write_report(report, markdown(rows, report), args.output)


if __name__ == "__main__":
    main()
