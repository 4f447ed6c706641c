"""`lit-finetune COMMAND`: the one table of commands, what `lit-finetune --help` lists, and the entry point that
turns every lit_finetune error into one line and exit code 2."""

from __future__ import annotations

import argparse
import ctypes
import importlib
import netrc
import os
import re
import sys
from dataclasses import dataclass

from lit_finetune.errors import LitFinetuneError


@dataclass(frozen=True)
class Command:
    """A command: where it lives (``module:attribute``, imported only when run), how it parses its arguments, and
    the line `--help` shows. ``kind``: ``lightning`` (LightningCLI's subcommand), ``function`` (its signature and
    docstring become the options, through jsonargparse) or ``argv`` (it parses the argument list itself)."""

    target: str
    kind: str
    summary: str

    def load(self):
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)


FIT = "lit_finetune.commands.fit:LitFinetuneCLI"
COMMANDS = {
    "fit": Command(FIT, "lightning", "Train a task module on a data module from a config (resumes an unfinished run)."),
    "validate": Command(FIT, "lightning", "Score a checkpoint (--ckpt_path) on the validation split."),
    "test": Command(FIT, "lightning", "Score a checkpoint (--ckpt_path) on the test split."),
    "predict": Command(FIT, "lightning", "Write a checkpoint's predictions for the predict split to a file."),
    "export": Command("lit_finetune.tasks.base:export_checkpoint", "function",
                      "Write a checkpoint as a Hugging Face folder that from_pretrained and pipeline load."),
    "tokenizer": Command("lit_finetune.data.tokenizer_training:train_tokenizer", "function",
                         "Train a WordPiece or BPE tokenizer on text files, for pretraining from scratch."),
    "deploy": Command("lit_finetune.commands.deploy:deploy", "function",
                      "Shrink a fine-tuned classifier for CPU serving (int8, ONNX); measure accuracy, latency, size."),
    "sweep": Command("lit_finetune.commands.sweep:main", "argv",
                     "Run a W&B sweep file (sweeps/*.yaml) on this machine; rerunning resumes it."),
    "compare": Command("lit_finetune.commands.compare:main", "argv",
                       "Compare finished runs or a sweep from their run folders: a table and a plot."),
    "quickstart-data": Command("lit_finetune.commands.quickstart:write_data", "function",
                               "Write the embedded quickstart dataset (aspect-sentiment CSVs) to a folder."),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items())
    return (f"usage: lit-finetune COMMAND [options]\n\nPretrain and fine-tune Transformer language models.\n\n"
            f"commands:\n{rows}\n\n`lit-finetune COMMAND --help` lists a command's options.")


def run(argv: list[str]) -> None:
    """Run the command `argv` names (LitFinetuneError and parse errors pass up to `main`)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    name, rest = argv[0], argv[1:]
    command = COMMANDS.get(name)
    if command is None:
        raise LitFinetuneError(f"unknown command {name!r}; expected one of {', '.join(COMMANDS)} "
                               "(lit-finetune --help lists them)")
    target = command.load()
    if command.kind == "lightning":
        target(args=argv)
    elif command.kind == "function":
        from jsonargparse import CLI

        CLI(target, args=rest, as_positional=False, prog=f"lit-finetune {name}")
    else:
        target(rest)


def user_error(err: BaseException) -> LitFinetuneError | None:
    """The LitFinetuneError behind `err`, if any: jsonargparse and Lightning re-raise errors of the classes they
    build inside their own."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, LitFinetuneError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def parse_error_line(message: str) -> str:
    """One line for a jsonargparse error: the key (a subclass's own key dotted onto its group's) and what was wrong
    with it, instead of every union subtype jsonargparse tried."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    outer = re.match(r'Parser key "([^"]+)":\s*(.*)', lines[0]) if lines else None
    if not outer:
        return lines[0] if lines else message
    key, body = outer.group(1), ([outer.group(2)] if outer.group(2) else []) + lines[1:]
    problem = next((i for i, line in enumerate(body) if line.startswith("- Problem with given class_path")), None)
    if problem is not None and problem + 1 < len(body):
        inner = re.match(r'Parser key "([^"]+)":\s*(.*)', body[problem + 1])
        if inner:
            detail = inner.group(2) or (body[problem + 2] if problem + 2 < len(body) else "")
            if detail.startswith("Does not validate"):  # an Optional knob: say why its non-None type refused it
                detail = next((line[2:] for line in body[problem + 2:] if line.startswith("- ")
                               and "NoneType" not in line), detail)
            return f"{key}.init_args.{inner.group(1)}: {detail}"
        return f"{key}.init_args: {body[problem + 1]}"
    expected = [re.sub(r"<class '([^']+)'>", r"\1", line[len("- Expected a "):]) for line in body
                if line.startswith("- Expected a ")]
    given = next((line.split(":", 1)[1].strip() for line in body if line.startswith("Given value:")), None)
    if expected:
        return f"{key}: expected {' or '.join(expected)}, got {given}"
    return f"{key}: {body[0] if body else 'invalid value'}"


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def default_wandb_mode() -> None:
    """Go offline when no W&B credentials exist, so a run never waits on a login prompt; WANDB_MODE always wins."""
    if not os.environ.get("WANDB_MODE") and not wandb_has_credentials():
        os.environ["WANDB_MODE"] = "offline"


# glibc serves allocations below its mmap threshold from the heap, and raises that threshold (up to 32 MiB) each time
# a larger block is freed; a training step's activations then come from the heap, fragment it, and the process keeps
# memory it no longer uses. LIT_FINETUNE_MMAP_THRESHOLD=<bytes> pins the threshold: blocks above it are mapped on
# their own and go back to the system when freed. Opt-in, as its cost (page faults on every fresh block) depends on the
# model and lengths: on SST-2 / MiniLM, 8 MiB cut peak RSS by ~46 MiB at no measurable speed cost, but on batches
# padded to 128 tokens by 73 MiB at ~10% of the speed (BENCHMARKS.md).
M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def pin_mmap_threshold() -> bool:
    """Pin glibc's mmap threshold at LIT_FINETUNE_MMAP_THRESHOLD bytes, if set; False where it is unset or ``off``,
    the C library is not glibc, or MALLOC_MMAP_THRESHOLD_ (glibc's own setting) is set."""
    setting = os.environ.get("LIT_FINETUNE_MMAP_THRESHOLD", "off")
    if setting == "off" or sys.platform != "linux" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    if not setting.isdigit():
        raise LitFinetuneError(f"LIT_FINETUNE_MMAP_THRESHOLD: expected a number of bytes or off, got {setting!r}")
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(M_MMAP_THRESHOLD, int(setting)) == 1


def process_defaults() -> None:
    """What the `lit-finetune` command sets in its process before any command runs (scripts that drive the CLI
    classes directly, such as the benchmarks, call it too): W&B offline without credentials, the mmap threshold
    pinned if asked."""
    default_wandb_mode()
    pin_mmap_threshold()


def main(args: list[str] | None = None) -> None:
    """Entry point of the `lit-finetune` console script."""
    try:
        process_defaults()
        run(sys.argv[1:] if args is None else args)
    except argparse.ArgumentError as err:
        error = user_error(err)
        print(f"lit-finetune: error: {error if error else parse_error_line(str(err))}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        error = user_error(err)
        if error is None:
            raise
        print(f"lit-finetune: error: {error}", file=sys.stderr)
        sys.exit(2)
