"""bitsandbytes: where its 4-bit layers (QLoRA) and 8-bit optimizer states can run, checked before a run starts."""

from __future__ import annotations

import importlib.metadata
import importlib.util

from packaging.version import Version

from lit_finetune.errors import ConfigError

# From this release on bitsandbytes runs its 4-bit layers and 8-bit optimizers on CPU too (before it, CUDA only);
# tested here with 0.50.
CPU_RELEASE = "0.48"
DEVICES = ("cuda", "cpu")


def check_bitsandbytes(key: str, what: str, device_type: str, instead: str) -> None:
    """ConfigError naming `key` when bitsandbytes is missing, or cannot run `what` on this device (with `instead`,
    what runs here)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{key}: {what} needs the bitsandbytes package: pip install 'bitsandbytes>={CPU_RELEASE}'")
    if device_type not in DEVICES:
        raise ConfigError(f"{key}: bitsandbytes runs {what} on CUDA GPUs and CPUs, and this run is on {device_type}; "
                          f"{instead}")
    installed = importlib.metadata.version("bitsandbytes")
    if device_type == "cpu" and Version(installed) < Version(CPU_RELEASE):
        raise ConfigError(f"{key}: bitsandbytes {installed} runs {what} on CUDA GPUs only, and this run is on cpu; "
                          f"pip install 'bitsandbytes>={CPU_RELEASE}' (CPU support), or {instead}")
