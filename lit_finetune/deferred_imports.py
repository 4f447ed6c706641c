"""Start-up imports that a dependency makes and never uses, deferred until something reads them.

torchmetrics 1.9 (which Lightning imports) runs `import scipy.signal` whenever SciPy is installed, only to give
`scipy.signal` a `hamming` alias for SRMRpy, a package it never imports (Lightning-AI/torchmetrics#3457). SciPy is
installed here through seqeval's scikit-learn, so every process of every command paid ~2 s and ~65 MiB of RSS for
it. `defer_scipy_signal` puts a stand-in module in its place that already holds the alias and turns into the real
`scipy.signal` the first time any other name is read from it, so code that uses SciPy's signal module still gets it.

torchmetrics 1.9 also imports `matplotlib.pyplot` at start-up whenever matplotlib is installed (lit_finetune's
`compare` plots with it), for the `.plot()` helpers of its metrics, which a training run never calls: ~24 MiB of RSS
and ~1 s. `defer_torchmetrics_plot` stands in for `torchmetrics.utilities.plot` with what torchmetrics' modules read
from it as they load (the type aliases it uses when matplotlib is absent, an axes class whose `isinstance` asks the
real `matplotlib.axes.Axes`, and functions that import the real module on first call).
"""

import importlib
import importlib.util
import sys
import types
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

SCIPY_SIGNAL = "scipy.signal"
TORCHMETRICS_PLOT = "torchmetrics.utilities.plot"
# What torchmetrics 1.9's modules import from its plot module while they load (tests/test_deferred_imports.py checks
# that start-up reads nothing else): a name outside this list loads the real module, which is correct, only not lazy.
PLOT_FUNCTIONS = ("plot_single_or_multi_val", "plot_curve", "plot_confusion_matrix")


class DeferredModule(types.ModuleType):
    """Stands in for a module until a name it does not hold is read; from then on it forwards to the real module."""

    def __init__(self, spec, preset: dict):
        super().__init__(spec.name)
        self.__spec__ = spec
        if spec.submodule_search_locations is not None:  # a package
            self.__path__ = list(spec.submodule_search_locations)
        self.__file__ = spec.origin
        self.__package__ = spec.name
        self.__dict__.update(preset)

    def __getattr__(self, name: str):
        if name == "__path__":  # `from module import x` asks; a plain module (not a package) has none
            raise AttributeError(name)
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


def deferred_function(stand_in: DeferredModule, name: str):
    """The stand-in's `name`: a function that loads the real module when first called and calls the real one."""

    def call(*args, **kwargs):
        return getattr(load_real_module(stand_in), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


def torchmetrics_imports_unused_modules() -> bool:
    """Whether the installed torchmetrics is a release known to import scipy.signal and matplotlib.pyplot at start-up
    (1.9 and older)."""
    try:
        major, minor = (int(part) for part in version("torchmetrics").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) <= (1, 9)


def defer_unused_torchmetrics_imports() -> None:
    """Stand in for the modules torchmetrics imports at start-up without using them; only before torchmetrics itself
    is imported, and only for the releases known to (one version check for both)."""
    if "torchmetrics" in sys.modules or not torchmetrics_imports_unused_modules():
        return
    defer_scipy_signal()
    defer_torchmetrics_plot()


def defer_scipy_signal() -> None:
    """Stand in for scipy.signal until it is used, when nothing has imported it yet."""
    if SCIPY_SIGNAL in sys.modules:
        return
    try:
        spec = importlib.util.find_spec(SCIPY_SIGNAL)  # imports the small `scipy` package itself, not its signal module
    except ImportError:
        return
    if spec is None:
        return
    stand_in = DeferredModule(spec, {})
    stand_in.hamming = deferred_function(stand_in, "hamming")  # the alias torchmetrics would otherwise add at once
    sys.modules[SCIPY_SIGNAL] = stand_in


class MatplotlibAxesType(type):
    """`isinstance(x, _AX_TYPE)` (torchmetrics checks axes handed to `MetricCollection.plot`) against the real
    `matplotlib.axes.Axes`, imported only when something asks."""

    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, importlib.import_module("matplotlib.axes").Axes)


class MatplotlibAxes(metaclass=MatplotlibAxesType):
    """Stands in for `matplotlib.axes.Axes` in torchmetrics' annotations and axes checks."""


def defer_torchmetrics_plot() -> None:
    """Stand in for torchmetrics' plot module until a metric plots, when matplotlib is not loaded yet."""
    if "matplotlib" in sys.modules:
        return
    try:  # top-level lookups only: finding the submodule itself would import torchmetrics
        package, matplotlib = importlib.util.find_spec("torchmetrics"), importlib.util.find_spec("matplotlib")
    except (ImportError, ValueError):
        return
    if package is None or matplotlib is None or not package.submodule_search_locations:
        return  # without matplotlib torchmetrics imports nothing heavy
    path = Path(package.submodule_search_locations[0]) / "utilities" / "plot.py"
    if not path.is_file():
        return
    stand_in = DeferredModule(importlib.util.spec_from_file_location(TORCHMETRICS_PLOT, path), {
        "_AX_TYPE": MatplotlibAxes, "_PLOT_OUT_TYPE": tuple[object, object], "_CMAP_TYPE": object})
    stand_in.__dict__.update({name: deferred_function(stand_in, name) for name in PLOT_FUNCTIONS})
    sys.modules[TORCHMETRICS_PLOT] = stand_in
