"""scipy.signal, which torchmetrics imports at start-up and never uses, is loaded only by code that reads it."""

import subprocess
import sys

from helpers import REPO

PROBE = """
import sys
import lit_finetune.commands, lightning.pytorch, torchmetrics
print("loaded at start-up:", "scipy.signal._signal_api" in sys.modules)
import scipy.signal
from scipy.signal import butter
import scipy.signal.windows
assert "scipy.signal._signal_api" in sys.modules
assert sys.modules["scipy.signal"] is scipy.signal and type(scipy.signal).__name__ == "module"
assert [round(float(x), 6) for x in scipy.signal.hamming(3)] == [0.08, 1.0, 0.08]
b, a = butter(2, 0.3)
print("filter:", len(b), len(a))
"""


def test_start_up_leaves_scipy_signal_unloaded_and_first_use_gets_the_real_module():
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "loaded at start-up: False" in result.stdout
    assert "filter: 3 3" in result.stdout
