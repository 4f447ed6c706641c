"""scipy.signal and matplotlib, which torchmetrics imports at start-up and a run never uses, are loaded only by code
that reads them; that code gets the real modules."""

import subprocess
import sys

from helpers import REPO

PROBE = """
import sys
import lit_finetune.commands.fit, lightning.pytorch, torchmetrics, torch
print("loaded at start-up:", "scipy.signal._signal_api" in sys.modules, "matplotlib" in sys.modules)
import scipy.signal
from scipy.signal import butter
import scipy.signal.windows
assert "scipy.signal._signal_api" in sys.modules
assert sys.modules["scipy.signal"] is scipy.signal and type(scipy.signal).__name__ == "module"
assert [round(float(x), 6) for x in scipy.signal.hamming(3)] == [0.08, 1.0, 0.08]
b, a = butter(2, 0.3)
print("filter:", len(b), len(a))

from torchmetrics.classification import BinaryAccuracy, BinaryConfusionMatrix, BinaryROC
preds, target = torch.tensor([0.9, 0.2, 0.7]), torch.tensor([1, 0, 0])
plots = []
for metric in (BinaryAccuracy(), BinaryConfusionMatrix(), BinaryROC()):
    metric.update(preds, target)
    plots.append(metric.plot())
import matplotlib.axes, matplotlib.figure
assert all(isinstance(fig, matplotlib.figure.Figure) and isinstance(ax, matplotlib.axes.Axes) for fig, ax in plots)
assert type(sys.modules["torchmetrics.utilities.plot"]).__name__ == "module"
collection = torchmetrics.MetricCollection([BinaryAccuracy()])
collection.update(preds, target)
collection.plot(ax=plots[0][1], together=True)
try:
    collection.plot(ax="not axes", together=True)
except ValueError as error:
    print("refused:", error)
"""


def test_start_up_leaves_scipy_signal_and_matplotlib_unloaded_and_first_use_gets_the_real_modules():
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "loaded at start-up: False False" in result.stdout
    assert "filter: 3 3" in result.stdout
    assert "refused: Expected argument `ax` to be a matplotlib axis object" in result.stdout
