"""Number types for config knobs, checked by jsonargparse when the config is parsed, so a learning rate of -1 or a
batch size of 0 is refused with its key named before anything is built."""

from __future__ import annotations

from jsonargparse.typing import ClosedUnitInterval as Probability  # in [0, 1]
from jsonargparse.typing import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    restricted_number_type,
)
from jsonargparse.typing import OpenUnitInterval as OpenFraction  # in (0, 1): neither nothing nor everything

Fraction = restricted_number_type("Fraction", float, [(">=", 0), ("<", 1)])
"""In [0, 1): dropout, label smoothing."""
DecayFactor = restricted_number_type("DecayFactor", float, [(">", 0), ("<=", 1)])
"""In (0, 1]: a multiplicative decay (1 = off)."""

__all__ = ["DecayFactor", "Fraction", "NonNegativeFloat", "NonNegativeInt", "OpenFraction", "PositiveFloat",
           "PositiveInt", "Probability", "plain"]


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
