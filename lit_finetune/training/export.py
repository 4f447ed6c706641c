"""Writing exports so that an earlier one is never lost or left half-written."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_directory(output_dir: str | Path) -> Iterator[Path]:
    """Yield a fresh folder beside `output_dir`; only when the block succeeds does it replace `output_dir`."""
    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp"))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; an export is meant to be shared
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def export_checkpoint(ckpt_path: str, output_dir: str) -> Path:
    """Export any lit_finetune checkpoint as a Hugging Face folder (model with its labels, and tokenizer).

    Args:
        ckpt_path: A checkpoint written by ``lit-finetune fit`` (e.g. runs/NAME/checkpoints/last.ckpt).
        output_dir: Folder to write; an existing export there is replaced only once the new one is complete.
    """
    from lit_finetune.errors import ConfigError
    from lit_finetune.tasks.base import TaskModule

    if not Path(ckpt_path).is_file():
        raise ConfigError(f"--ckpt_path: checkpoint {ckpt_path} does not exist")
    path = TaskModule.load_checkpoint(ckpt_path).export(output_dir)
    print(f"Exported {ckpt_path} to {path}")
    return path
