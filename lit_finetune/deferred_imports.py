"""Start-up imports that a dependency makes and never uses, deferred until something reads them.

torchmetrics 1.9 (which Lightning imports) runs `import scipy.signal` whenever SciPy is installed, only to give
`scipy.signal` a `hamming` alias for SRMRpy, a package it never imports (Lightning-AI/torchmetrics#3457). SciPy is
installed here through seqeval's scikit-learn, so every process of every command paid ~2 s and ~65 MiB of RSS for
it. `defer_scipy_signal` puts a stand-in module in its place that already holds the alias and turns into the real
`scipy.signal` the first time any other name is read from it, so code that uses SciPy's signal module still gets it.
"""

import importlib
import importlib.util
import sys
import types
from importlib.metadata import PackageNotFoundError, version

SCIPY_SIGNAL = "scipy.signal"


class DeferredModule(types.ModuleType):
    """Stands in for a module until a name it does not hold is read; from then on it forwards to the real module."""

    def __init__(self, spec, preset: dict):
        super().__init__(spec.name)
        self.__spec__ = spec
        self.__path__ = list(spec.submodule_search_locations or [])
        self.__file__ = spec.origin
        self.__package__ = spec.name
        self.__dict__.update(preset)

    def __getattr__(self, name: str):
        return getattr(load_real_module(self), name)


def load_real_module(stand_in: DeferredModule) -> types.ModuleType:
    """Import the module that `stand_in` stood for (once) and put it where the stand-in was."""
    name = stand_in.__name__
    if sys.modules.get(name) is stand_in:
        del sys.modules[name]
    real = importlib.import_module(name)
    if name == SCIPY_SIGNAL and not hasattr(real, "hamming"):
        real.hamming = real.windows.hamming  # the alias torchmetrics adds, kept for whoever relies on it
    return real


def hamming(*args, **kwargs):
    """`scipy.signal.windows.hamming`, reached through the real module on first call."""
    return importlib.import_module(SCIPY_SIGNAL).windows.hamming(*args, **kwargs)


def torchmetrics_imports_scipy_signal() -> bool:
    """Whether the installed torchmetrics is a release known to import scipy.signal at start-up (1.9 and older)."""
    try:
        major, minor = (int(part) for part in version("torchmetrics").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) <= (1, 9)


def defer_scipy_signal() -> None:
    """Stand in for scipy.signal until it is used, when nothing has imported it or torchmetrics yet."""
    if SCIPY_SIGNAL in sys.modules or "torchmetrics" in sys.modules or not torchmetrics_imports_scipy_signal():
        return
    try:
        spec = importlib.util.find_spec(SCIPY_SIGNAL)  # imports the small `scipy` package itself, not its signal module
    except ImportError:
        return
    if spec is None:
        return
    sys.modules[SCIPY_SIGNAL] = DeferredModule(spec, {"hamming": hamming})
