"""Tokenized datasets cached on disk: keyed by everything that changes the result, written once and atomically.

Our own cache replaces `datasets`' fingerprinting, which cannot hash a method that holds a tokenizer.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

import datasets

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("LIT_FINETUNE_CACHE", Path.home() / ".cache" / "lit_finetune"))


def tokenizer_fingerprint(tokenizer) -> str:
    """Take it before first use: tokenizing with truncation changes the backend's serialized state."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()


def content_digest(path: str | Path) -> str:
    """A hash of the file's bytes: a file rewritten with the same size and modification time still changes it.
    Hashed once per process and file version (the change time, which no user sets, is in the key)."""
    st = os.stat(path)
    return _digest(str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@functools.lru_cache(maxsize=256)
def _digest(path: str, *version) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def folder_digest(folder: str | Path) -> str:
    """A hash of every file's relative path, size and modification time under a folder (one file per example, as
    in IMDB's class folders): an added, removed or rewritten file changes it, without reading them all."""
    digest = hashlib.blake2b(digest_size=16)
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        st = path.stat()
        digest.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def file_signatures(files: dict[str, str]) -> dict:
    """Path and content hash of each local file (or folder of files), so an edited one is tokenized again."""
    return {split: (str(Path(p).resolve()), content_digest(p) if os.path.isfile(p) else folder_digest(p))
            for split, p in files.items() if os.path.exists(p)}


def cache_path(root: Path, family: str, key: dict) -> Path:
    text = json.dumps({"version": CACHE_VERSION, **key}, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return root / family / digest[:16]


def is_cached(target: Path) -> bool:
    return (target / "meta.json").is_file()


def save(splits: datasets.DatasetDict, meta: dict, target: Path) -> None:
    """Write to a temporary folder and rename, so a crash never leaves a half-written cache behind."""
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    splits.save_to_disk(str(tmp))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first: its cache is identical
        shutil.rmtree(tmp, ignore_errors=True)


def load(target: Path) -> tuple[datasets.DatasetDict, dict]:
    if not is_cached(target):
        raise RuntimeError(f"tokenized cache {target} is missing: prepare_data did not run on this node")
    return datasets.load_from_disk(str(target)), json.loads((target / "meta.json").read_text())
