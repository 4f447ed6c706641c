"""The one way lit_finetune writes a file or a folder: through a temporary twin beside the destination, renamed into
place once complete, so a crash or a full disk never leaves half a file and never loses the earlier one."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from lit_finetune.errors import ConfigError, LitFinetuneError

DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class WriteError(LitFinetuneError, OSError):
    """A file could not be written (disk full, file size limit); the earlier version is kept."""


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Write `path` through a temporary file in the same folder, renamed into place once complete and flushed to
    disk; on failure the temporary file is removed and the earlier `path` (if any) stays as it was.

    Raises: WriteError naming the file when the disk (or a file size limit) is full.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            raise WriteError(f"could not write {path}: {os.strerror(err.errno)}; the earlier files are kept, "
                             "free some space and run the same command again to resume") from err
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


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
