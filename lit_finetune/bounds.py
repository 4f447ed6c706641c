"""Number types for config knobs, checked by jsonargparse when the config is parsed, so a learning rate of -1 or a
batch size of 0 is refused with its key named before anything is built; and settings groups (dataclasses such as
LoraSettings) turned into the plain values that checkpoints keep."""

from __future__ import annotations

from dataclasses import asdict, fields

from jsonargparse.typing import ClosedUnitInterval as Probability  # in [0, 1]
from jsonargparse.typing import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    restricted_number_type,
)
from jsonargparse.typing import OpenUnitInterval as OpenFraction  # in (0, 1): neither nothing nor everything

from lit_finetune.errors import ConfigError

Fraction = restricted_number_type("Fraction", float, [(">=", 0), ("<", 1)])
"""In [0, 1): dropout, label smoothing."""
DecayFactor = restricted_number_type("DecayFactor", float, [(">", 0), ("<=", 1)])
"""In (0, 1]: a multiplicative decay (1 = off)."""

__all__ = ["DecayFactor", "Fraction", "NonNegativeFloat", "NonNegativeInt", "OpenFraction", "PositiveFloat",
           "PositiveInt", "Probability", "plain", "settings_dict"]


def plain(value):
    """`value` with the checked number types above turned back into int / float (recursively), so hyperparameters
    saved in checkpoints are plain values that load with ``weights_only=True``."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int) and type(value) is not int:
        return int(value)
    if isinstance(value, float) and type(value) is not float:
        return float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


def plain_hparams(module) -> None:
    """Turn a module's saved hyperparameters (and the copy loggers get) into plain values."""
    for key, value in list(module.hparams.items()):
        module.hparams[key] = plain(value)
    initial = getattr(module, "_hparams_initial", None)
    if initial is not None:
        for key, value in list(initial.items()):
            initial[key] = plain(value)


def settings_dict(value, settings_class, key: str) -> dict | None:
    """A settings group (a dataclass such as LoraSettings) as a plain dict of its fields, checked: the CLI hands
    over the dataclass, Python callers and checkpoints a dict; hyperparameters, checkpoints and W&B all take a dict.

    Raises: ConfigError naming `key` for a key the settings class does not have.
    """
    if value is None:
        return None
    if not isinstance(value, settings_class):
        names = [f.name for f in fields(settings_class)]
        unknown = set(value) - set(names)
        if unknown:
            raise ConfigError(f"{key}: unknown keys {sorted(unknown)}; expected some of {names}")
        value = settings_class(**value)
    return plain(asdict(value))
