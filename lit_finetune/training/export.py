"""Writing exports so that an earlier one is never lost or left half-written."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lit_finetune.errors import ConfigError
from lit_finetune.run_folder import umask


EXPORT_MARKER = ".lit_finetune_export"  # in every export folder: what `export` may replace


def follow_umask(folder: Path) -> None:
    """Give `folder` and everything in it the modes the user's umask asks for (mkdtemp and some writers make
    files private; an export is meant to be shared)."""
    mask = umask()
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


@contextmanager
def atomic_directory(output_dir: str | Path, marker: str | None = None) -> Iterator[Path]:
    """Yield a fresh folder beside `output_dir`; only when the block succeeds does it replace `output_dir`.

    With `marker`, the folder gets that file, and an existing non-empty `output_dir` without it (a folder that is
    not an earlier one of these) is refused rather than replaced.

    Raises: ConfigError naming the folder when it would replace a folder of someone else's files.
    """
    out = Path(output_dir)
    if marker and out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).is_file())):
        raise ConfigError(f"--output_dir: {out} exists and is not an earlier lit_finetune export (no {marker}); "
                          "choose another folder or empty it, nothing was written")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp"))
    try:
        yield tmp
        if marker:
            (tmp / marker).write_text("written by lit_finetune; `lit-finetune export` may replace this folder\n")
        follow_umask(tmp)
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
        output_dir: Folder to write; an earlier export there is replaced only once the new one is complete, and any
            other non-empty folder is refused.
    """
    from lit_finetune.tasks.base import TaskModule

    path = TaskModule.load_checkpoint(ckpt_path).export(output_dir)
    print(f"Exported {ckpt_path} to {path}")
    return path
