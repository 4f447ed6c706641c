"""The run folder's own files (run record, lock) and the one way every file of it is written: atomically, beside its
destination, so a crash or a full disk never leaves half a file and never loses the earlier one."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Iterator

from lit_finetune.errors import LitFinetuneError

RUN_RECORD = "run.json"
CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
LOCK = ".lock"
# Set by the process that locked a run folder, so the processes it launches (DDP ranks) know it is theirs.
LOCKED_ENV = "LIT_FINETUNE_RUN_LOCKED"
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class WriteError(LitFinetuneError, OSError):
    """A file of the run could not be written (disk full, file size limit); the earlier version is kept."""


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


def write_run_record(run_dir: str | Path, status: str, started: float, global_step: int,
                     best: dict | None = None) -> None:
    """run.json: how the run ended (finished, stopped, interrupted, preempted, failed), how long it took and its best
    monitored value, for `lit-finetune compare`, schedulers and the next start in this folder."""
    record = {"status": status, "started": datetime.fromtimestamp(started).isoformat(timespec="seconds"),
              "wall_s": round(time.time() - started, 1), "global_step": global_step}
    if best:
        record["best"] = best
    write_text(Path(run_dir) / RUN_RECORD, json.dumps(record, indent=2) + "\n")


def read_run_record(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RUN_RECORD
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


class RunLock:
    """An exclusive lock on a run folder, held for the whole process: a second start in the same folder is refused
    before it writes anything. The kernel drops the lock when the process ends, however it ends."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.file = None

    def acquire(self) -> None:
        if os.environ.get(LOCKED_ENV) == str(self.run_dir.resolve()):
            return  # launched by the process that holds it
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(self.run_dir / LOCK, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            self.file = None
            raise LitFinetuneError(f"trainer.default_root_dir: {self.run_dir} is in use by another lit-finetune "
                                   "process; wait for it to end or choose another folder") from None
        os.environ[LOCKED_ENV] = str(self.run_dir.resolve())

    def release(self) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None
            os.environ.pop(LOCKED_ENV, None)
