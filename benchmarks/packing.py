"""Padded, length-grouped and packed SFT batches of SmolLM2-135M on real instruction data, beside the no-padding
limit, interleaved (A B C D, A B C D) on one machine: non-pad tokens/s, pad fraction, steps and the validation loss
after the same examples.

The instruction set is built from ../shared/data/squad (SQuAD v1.1 dev: a paragraph and a question -> the answer),
written under the run folder: prompts of very different lengths, as in real instruction data. Each system trains
one epoch over the same examples in its own interpreter (``--run SYSTEM``), on every core, one at a time:

- ``padded``: batches of 8 random examples, padded to the longest (the default);
- ``grouped``: batches of 8 examples of similar length (``data.group_by_length``);
- ``packed``: rows of up to max_length tokens holding several examples (``data.packing: padding_free``), 4 rows
  per batch;
- ``limit``: the same number of tokens in full rows of max_length with no padding and no boundaries (causal-LM
  blocks of the same texts), the speed no batching of these examples can beat;
- ``packed_checkpointed``: packed, with ``model.gradient_checkpointing`` (only with ``--systems``).

Memory: the peak RSS of each run, and its activation share: that peak less the RSS at the start of the second
step (weights, gradients and AdamW state by then), read from /proc.

    python benchmarks/packing.py                          # 64 training examples, 2 rounds (about 20 minutes)
    python benchmarks/packing.py --examples 16 --rounds 1 # smoke run
    python benchmarks/packing.py --systems packed packed_checkpointed --output runs/benchmarks/checkpointing.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULT_PREFIX, lightning_clock, machine_line, new_report, run_child, write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SYSTEMS = ("padded", "grouped", "packed", "limit", "packed_checkpointed")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=64, help="training examples (each system: one epoch)")
    parser.add_argument("--max_length", type=int, default=512, help="tokens per example, and per packed row")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS[:4]))
    parser.add_argument("--output", default="runs/benchmarks/packing.json")
    parser.add_argument("--run", choices=SYSTEMS, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--run_dir", help=argparse.SUPPRESS)
    return parser.parse_args()


def build_instructions(work: Path, examples: int) -> tuple[Path, Path, Path]:
    """SQuAD dev as prompt/response rows (paragraphs of at most 250 words, so no example is cut): `examples` for
    training, 32 for validation, and the training texts as plain lines for the limit run."""
    squad = json.loads((DATA / "squad" / "dev-v1.1.json").read_text())
    rows = [{"prompt": f"{paragraph['context']}\n\nQuestion: {qa['question']}", "response": qa["answers"][0]["text"]}
            for article in squad["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]
            if len(paragraph["context"].split()) <= 250]
    random.Random(0).shuffle(rows)
    work.mkdir(parents=True, exist_ok=True)
    train, dev, text = work / "train.jsonl", work / "dev.jsonl", work / "train.txt"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:examples]))
    dev.write_text("".join(json.dumps(r) + "\n" for r in rows[examples:examples + 32]))
    text.write_text("".join(f"{r['prompt']} {r['response']}".replace("\n", " ") + "\n" for r in rows[:examples]))
    return train, dev, text


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def token_clock():
    """The step clock, also counting each batch's real tokens and token slots (real + padding)."""
    clock = lightning_clock()

    class TokenClock(clock):
        real, slots = 0, 0

        static_rss_mib = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self.steps == 1:  # weights, gradients and AdamW state are all there by now
                self.static_rss_mib = current_rss_mib()
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.real += int(batch["attention_mask"].sum())
            self.slots += batch["attention_mask"].numel()
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    TokenClock.__qualname__ = TokenClock.__name__
    sys.modules["__main__"].TokenClock = TokenClock
    return TokenClock


def run_system(args: argparse.Namespace) -> None:
    from lit_finetune.commands.fit import LitFinetuneCLI

    token_clock()
    work = Path(args.output).with_suffix("")  # where main() wrote the data
    train, dev, text = work / "train.jsonl", work / "dev.jsonl", work / "train.txt"
    common = [f"--trainer.default_root_dir={args.run_dir}", "--trainer.max_epochs=1", "--trainer.accelerator=cpu",
              "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]",
              "--trainer.callbacks+=__main__.TokenClock", "--trainer.enable_progress_bar=false",
              "--trainer.num_sanity_val_steps=0", "--seed_everything=0", "--model.init_args.warmup=0",
              f"--data.init_args.cache_dir={work / 'cache'}", f"--data.init_args.max_length={args.max_length}"]
    if args.run == "limit":
        cli = LitFinetuneCLI(args=["fit", "--config", str(REPO / "configs/pretrain/clm.yaml"), *common,
                                   "--model.init_args.model_name_or_path=smollm2", "--data.init_args.dataset_name=null",
                                   "--data.init_args.dataset_config=null", f"--data.init_args.train_file={text}",
                                   f"--data.init_args.validation_file={text}", "--data.init_args.batch_size=4",
                                   "--trainer.limit_val_batches=0", "--trainer.val_check_interval=null"])
    else:
        packed = ["--data.init_args.batch_size=4", "--data.init_args.packing=padding_free"]
        batching = {"padded": ["--data.init_args.batch_size=8"],
                    "grouped": ["--data.init_args.batch_size=8", "--data.init_args.group_by_length=true"],
                    "packed": packed,
                    "packed_checkpointed": [*packed, "--model.init_args.gradient_checkpointing=true"]}[args.run]
        cli = LitFinetuneCLI(args=["fit", "--config", str(REPO / "configs/sft/smollm2_instructions.yaml"), *common,
                                   "--data.init_args.dataset_name=null", "--data.init_args.messages_column=null",
                                   f"--data.init_args.train_file={train}", f"--data.init_args.validation_file={dev}",
                                   "--data.init_args.eval_batch_size=8", "--trainer.val_check_interval=1.0",
                                   *batching])
    clock = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "TokenClock")
    val_loss = cli.trainer.callback_metrics.get("val/loss")
    print(RESULT_PREFIX + json.dumps({
        "steps": clock.steps, "train_s": clock.seconds, "real_tokens": clock.real, "token_slots": clock.slots,
        "pad_fraction": 1 - clock.real / clock.slots, "tokens_per_s": clock.real / clock.seconds,
        "val_loss": None if val_loss is None else float(val_loss), "train_peak_rss_mib": clock.train_peak_rss_mib,
        "static_rss_mib": clock.static_rss_mib,
        "activation_mib": clock.train_peak_rss_mib - clock.static_rss_mib}), flush=True)


def markdown(report: dict) -> str:
    rows = report["systems"]
    padded = rows.get("padded", {}).get("tokens_per_s")
    limit = rows.get("limit", {}).get("tokens_per_s")
    lines = [f"Command: `{report['command']}` ({report['date']}; {machine_line(report['machine'])}). "
             f"{report['examples']} SQuAD-dev instruction examples, max_length {report['max_length']}, fp32, "
             f"best of {report['rounds']} interleaved rounds (nothing else running).", "",
             "| batches | steps | pad fraction | non-pad tokens/s | vs padded | vs no-padding limit | val loss after "
             "the epoch | peak RSS MiB | activations MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        loss = "—" if r["val_loss"] is None else f"{r['val_loss']:.4f}"
        versus_padded = f"{r['tokens_per_s'] / padded:.2f}x" if padded else "—"
        versus_limit = f"{r['tokens_per_s'] / limit:.2f}" if limit else "—"
        lines.append(f"| {name} | {r['steps']} | {r['pad_fraction']:.3f} | {r['tokens_per_s']:.0f} | "
                     f"{versus_padded} | {versus_limit} | {loss} | {r['train_peak_rss_mib']:.0f} | "
                     f"{r['activation_mib']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.run:
        run_system(args)
        return
    work = Path(args.output).with_suffix("")
    build_instructions(work, args.examples)
    runs: dict[str, list[dict]] = {name: [] for name in args.systems}
    for round_ in range(args.rounds):
        for name in args.systems:
            runs[name].append(run_child(__file__, name, f"round {round_ + 1}: {name}", work / f"round{round_}"))
    best = {name: max(results, key=lambda r: r["tokens_per_s"]) for name, results in runs.items()}
    report = new_report(__file__, examples=args.examples, max_length=args.max_length, rounds=args.rounds,
                        systems=best, all_runs=runs)
    write_report(report, markdown(report), args.output)


if __name__ == "__main__":
    main()
