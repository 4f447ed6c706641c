"""`lit-finetune sweep`: run a W&B sweep file on this machine, with W&B's own search engine (the `sweeps` package).

The file is the one `wandb sweep` takes. Each trial is a `lit-finetune fit` subprocess with its own folder under the
sweep folder; sweep.json there records every trial's parameters and state, so rerunning the command resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from lit_finetune.commands import compare
from lit_finetune.commands.fit import LitFinetuneCLI
from lit_finetune.errors import ConfigError
from lit_finetune.io import write_text
from lit_finetune.run_folder import RunFolder

with warnings.catch_warnings():  # sweeps 0.2 still declares pydantic-1 config keys
    warnings.simplefilter("ignore", UserWarning)
    from sweeps.config.cfg import validate_categorical_prob, validate_min_max, validator

    import sweeps

STATE_FILE = "sweep.json"
ARG_MACROS = ("${args}", "${args_no_hyphens}", "${args_json}", "${args_no_boolean_flags}")  # W&B's agent's
ENGINE_STATE = {"finished": "finished", "stopped": "finished", "failed": "failed", "running": "running",
                "interrupted": "running"}  # our trial states -> the search engine's run states


@dataclass
class Trial:
    """One sweep trial: its parameters and how it went (states: running, finished, stopped, failed, interrupted)."""

    name: str
    params: dict
    state: str = "running"
    exitcode: int | None = None
    wall_s: float | None = None
    log_tail: str | None = None
    attempts: int = 0

    def history(self, folder: Path, metric: str) -> list[float]:
        try:
            return [value for _, _, value in compare.Run.read(folder).curve(metric)]
        except ConfigError:  # not started yet
            return []

    def as_engine_run(self, folder: Path, metric: str | None) -> sweeps.SweepRun:
        history = self.history(folder, metric) if metric else []
        # sweeps 0.2 under pydantic 2 only accepts the camelCase field names.
        return sweeps.SweepRun(name=self.name, state=ENGINE_STATE[self.state],
                               config={k: {"value": v} for k, v in self.params.items()},
                               sampledHistory=[{metric: v} for v in history], summaryMetrics={})


@dataclass
class SweepState:
    """Contents of sweep.json."""

    sweep_id: str
    spec: dict
    extra_args: list[str]
    trials: list[Trial] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> SweepState:
        raw = json.loads(path.read_text())
        return cls(raw["sweep_id"], raw["spec"], raw["extra_args"], [Trial(**t) for t in raw["trials"]])

    def save(self, path: Path) -> None:
        write_text(path, json.dumps(asdict(self), indent=2) + "\n")


def read_spec(path: Path) -> dict:
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"sweep: {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"sweep: {path} is not valid YAML: {err}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"sweep: {path} must hold a mapping (method, metric, parameters, command)")
    return spec


def schema_problems(spec: dict) -> list[str]:
    """W&B's sweep schema, with each problem prefixed by the key it is about."""
    problems = [f"{'.'.join(map(str, e.absolute_path)) or 'top level'}: {e.message}"
                for e in validator.iter_errors(spec)]
    for name, param in (spec.get("parameters") or {}).items():
        for check in (validate_min_max, validate_categorical_prob):
            try:
                check(name, param)
            except (ValueError, TypeError, KeyError) as err:
                problems.append(f"parameters.{name}: {err}")
    if "metric" not in spec:
        problems.append("metric: missing; name the logged metric to optimise, e.g. {name: val/acc, goal: maximize}")
    return problems


def fit_command(spec: dict) -> list[str]:
    """The `lit-finetune fit` arguments of the file's `command`, without the ${args} that W&B's agent fills with
    the parameters (the runner adds them itself)."""
    command = [str(c) for c in spec.get("command") or []]
    while command and command[0] in ("${env}", "/usr/bin/env"):
        command = command[1:]
    if command[:2] == ["lit-finetune", "fit"]:
        rest = command[2:]
    elif command[:4] in (["${interpreter}", "-m", "lit_finetune", "fit"], ["python", "-m", "lit_finetune", "fit"]):
        rest = command[4:]
    else:
        raise ConfigError("sweep: command: expected `${env} lit-finetune fit --config <config.yaml> ${args}`, got "
                          f"{' '.join(command) or 'nothing'}")
    macros = [c for c in rest if c in ARG_MACROS]
    if macros != ["${args}"]:
        raise ConfigError("sweep: command: must pass the parameters once, as ${args} (--key=value flags)")
    return [c for c in rest if c != "${args}"]


def parameter_flags(params: dict) -> list[str]:
    """--key=value flags exactly as W&B's agent writes them."""
    return create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})["args"]


class _ArgumentCheck(LitFinetuneCLI):
    """Parses `fit` arguments without building anything, raising instead of exiting (as every LitFinetuneCLI
    does): the sweep's up-front check."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


# jsonargparse's union-type boilerplate, dropped so the line that names the problem stands out.
PARSE_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
               "- Expected a <class 'NoneType'>")


def first_lines(err: BaseException, n: int = 8) -> str:
    lines = [line for line in str(err).strip().splitlines() if not line.strip().startswith(PARSE_NOISE)]
    return "\n    ".join(lines[:n])


def candidate_values(param: dict) -> list:
    """Every listed value, or samples drawn by W&B's own engine (so their types are the ones trials will get)."""
    if "values" in param:
        return list(param["values"])
    if "value" in param:
        return [param["value"]]
    samples = sweeps.next_runs({"method": "random", "parameters": {"p": param}}, [], n=4)
    return [run.config["p"]["value"] for run in samples]


def check_parameters(spec: dict, base_args: list[str]) -> None:
    """Every parameter key and value must be accepted by `lit-finetune fit` on top of the command's arguments."""
    try:
        with warnings.catch_warnings():  # LightningCLI warns that sys.argv (the sweep's) is not what it parses
            warnings.simplefilter("ignore")
            seed_log = logging.getLogger("lightning.fabric.utilities.seed")
            seed_log.disabled, was_disabled = True, seed_log.disabled  # no "Seed set" line: nothing runs here
            try:
                parser = _ArgumentCheck(args=base_args, run=False).parser
            finally:
                seed_log.disabled = was_disabled
    except Exception as err:
        raise ConfigError(f"sweep: command: `lit-finetune fit {shlex.join(base_args)}` does not parse:\n    "
                          f"{first_lines(err)}") from None
    for key, param in spec["parameters"].items():
        if key in ("trainer.default_root_dir", "ckpt_path"):  # a `config` parameter is one more --config: allowed
            raise ConfigError(f"sweep: parameters.{key}: set by the sweep itself (each trial gets its own folder)")
        for value in candidate_values(param):
            try:
                parser.parse_args(base_args + parameter_flags({key: value}))
            except Exception as err:
                raise ConfigError(f"sweep: parameters.{key}: value {value!r} is not accepted by `lit-finetune fit`:"
                                  f"\n    {first_lines(err)}") from None


def validate(spec: dict, extra_args: list[str], source: Path) -> list[str]:
    """Checks the whole sweep before any trial starts; returns the fit arguments shared by every trial."""
    problems = schema_problems(spec)
    if problems:
        raise ConfigError(f"sweep: {source} does not follow W&B's sweep schema:\n  " + "\n  ".join(problems))
    base_args = fit_command(spec)
    check_parameters(spec, base_args + extra_args)
    return base_args + extra_args


class LocalSweep:
    """Proposes trials with W&B's engine, runs each as a subprocess, stops weak ones early (hyperband)."""

    def __init__(self, sweep_file: Path, sweep_dir: Path, extra_args: list[str], poll_s: float = 2.0):
        self.spec = read_spec(sweep_file)
        self.fit_args = validate(self.spec, extra_args, sweep_file)
        self.dir, self.poll_s = sweep_dir, poll_s
        self.metric = self.spec["metric"]["name"]
        self.state_path = sweep_dir / STATE_FILE
        if self.state_path.is_file():
            self.state = SweepState.load(self.state_path)
            if (self.state.spec, self.state.extra_args) != (self.spec, extra_args):
                raise ConfigError(f"sweep: {sweep_dir} holds a sweep started from a different sweep file or extra "
                                  "arguments; pass --sweep_dir to start a new sweep elsewhere")
            print(f"Resuming sweep {self.state.sweep_id} in {sweep_dir} ({len(self.state.trials)} trials so far)")
        else:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            self.state = SweepState(f"{sweep_file.stem}-{secrets.token_hex(4)}", self.spec, extra_args)
            self.state.save(self.state_path)
            print(f"Sweep {self.state.sweep_id} ({self.spec['method']}, {self.metric} "
                  f"{self.spec['metric'].get('goal', 'minimize')}) in {sweep_dir}")

    def folder(self, trial: Trial) -> Path:
        return self.dir / trial.name

    def engine_runs(self) -> list[sweeps.SweepRun]:
        return [t.as_engine_run(self.folder(t), self.metric) for t in self.state.trials]

    def propose(self) -> Trial | None:
        proposal = sweeps.next_run(self.spec, self.engine_runs())
        if proposal is None:
            return None
        return Trial(f"trial-{len(self.state.trials):03d}", {k: v["value"] for k, v in proposal.config.items()})

    def should_stop_early(self, trial: Trial) -> bool:
        if "early_terminate" not in self.spec:
            return False
        return any(run.name == trial.name for run in sweeps.stop_runs(self.spec, self.engine_runs()))

    def command(self, trial: Trial) -> list[str]:
        folder = self.folder(trial)
        args = [sys.executable, "-m", "lit_finetune", "fit", *self.fit_args, *parameter_flags(trial.params),
                f"--trainer.default_root_dir={folder}", "--trainer.callbacks+=lit_finetune.callbacks.StopOnRequest"]
        last = RunFolder(folder).last_checkpoint
        if trial.attempts and last.exists():
            args.append(f"--ckpt_path={last}")  # an interrupted trial continues from its last checkpoint
        elif RunFolder(folder).holds_run():
            # Interrupted before its first checkpoint: keep what it wrote, start it again from scratch.
            aborted = self.dir / "aborted" / f"{trial.name}-attempt{trial.attempts}"
            aborted.parent.mkdir(exist_ok=True)
            folder.rename(aborted)
        return args

    def run_trial(self, trial: Trial) -> None:
        args = self.command(trial)
        folder = self.folder(trial)
        folder.mkdir(parents=True, exist_ok=True)
        RunFolder(folder).stop_file.unlink(missing_ok=True)
        log_path = folder / "trial.log"
        trial.state, trial.attempts = "running", trial.attempts + 1
        self.state.save(self.state_path)
        flags = " ".join(f"{k}={compare.cell(v)}" for k, v in trial.params.items())
        print(f"{trial.name}: {flags}  (log: {log_path})", flush=True)
        # The trials' W&B group; and no inherited WANDB_SERVICE: each trial runs its own W&B service, as from a
        # shell (a shared one would hold an interrupted trial's run open, and its resume would find the id in use).
        env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
        env["WANDB_RUN_GROUP"] = self.state.sweep_id
        started, stop_requested = time.time(), False
        with log_path.open("a", encoding="utf-8") as log:
            # Own session: a Ctrl-C reaches only this runner, which passes one SIGINT on to the trial.
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                while proc.poll() is None:
                    time.sleep(self.poll_s)
                    if not stop_requested and self.should_stop_early(trial):
                        RunFolder(folder).stop_file.touch()  # what StopOnRequest watches
                        stop_requested = True
                        print(f"{trial.name}: below the hyperband threshold; stopping it after this step", flush=True)
            except KeyboardInterrupt:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                trial.state = "interrupted"
                trial.wall_s = round((trial.wall_s or 0) + time.time() - started, 1)
                self.state.save(self.state_path)
                raise
        trial.exitcode = proc.returncode
        trial.wall_s = round((trial.wall_s or 0) + time.time() - started, 1)
        history = trial.history(folder, self.metric)
        if proc.returncode != 0:
            trial.state = "failed"
            trial.log_tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-40:])
            print(f"{trial.name}: FAILED (exit {proc.returncode}); last lines of {log_path}:\n"
                  + "".join(trial.log_tail.splitlines(True)[-15:]), flush=True)
        else:
            trial.state = "stopped" if stop_requested else "finished"
            best = (max if self.spec["metric"].get("goal") == "maximize" else min)(history) if history else None
            print(f"{trial.name}: {trial.state} in {trial.wall_s:.0f} s; {self.metric} best {compare.cell(best)} "
                  f"over {len(history)} validations", flush=True)
        self.state.save(self.state_path)
        if proc.returncode == 0 and not history:  # every further trial would be blind too
            logged = sorted({k for row in compare.Run.read(folder).history for k, v in row.items() if v and "/" in k})
            raise ConfigError(f"sweep: metric.name: {trial.name} never logged {self.metric!r}; it logged "
                              f"{', '.join(logged) or 'nothing'}")

    def run(self, count: int | None) -> None:
        for trial in self.state.trials:  # first finish what an earlier, interrupted invocation left running
            if trial.state in ("running", "interrupted"):
                self.run_trial(trial)
        while count is None or len(self.state.trials) < count:
            trial = self.propose()
            if trial is None:
                print("Every combination of the grid has run.")
                break
            self.state.trials.append(trial)
            self.run_trial(trial)

    def report(self) -> None:
        runs = [compare.Run.read(self.folder(t)) for t in self.state.trials
                if RunFolder(self.folder(t)).holds_run()]
        if not runs:
            return
        goal = self.spec["metric"].get("goal", "minimize")
        rows = compare.summarize(runs, self.metric, goal)
        print("\n" + compare.as_text(rows))
        if any(row[f"best {self.metric}"] is not None for row in rows):
            compare.plot(runs, rows, compare.varied_keys(runs), self.metric, self.dir / "compare.png")
            print(f"\nPlot: {self.dir / 'compare.png'}")


def main(argv: list[str]) -> None:
    command_line = shlex.join(["lit-finetune", "sweep", *argv])
    fit_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        prog="lit-finetune sweep", description=__doc__.split("\n\n")[0],
        epilog="Arguments after `--` go to every trial's `lit-finetune fit`, before the sweep's own parameters.")
    parser.add_argument("sweep_file", type=Path, help="W&B sweep YAML (method, metric, parameters, command)")
    parser.add_argument("--count", type=int, help="total number of trials (default: the whole grid; required for "
                                                  "random and bayes). Rerunning continues until this many have run")
    parser.add_argument("--sweep_dir", type=Path, help="sweep folder (default runs/sweep-<file name>)")
    parser.add_argument("--poll_s", type=float, default=2.0, help="seconds between looks at a running trial's metrics")
    args = parser.parse_args(argv)
    method = read_spec(args.sweep_file).get("method")
    if args.count is None and method != "grid":
        raise ConfigError(f"sweep: --count is required for a {method} search (it never runs out)")
    sweep = LocalSweep(args.sweep_file, args.sweep_dir or Path("runs") / f"sweep-{args.sweep_file.stem}", fit_args,
                       args.poll_s)
    # Ctrl-C and SIGTERM stop the sweep cleanly, even when started where SIGINT was ignored (a background job), which
    # trials would otherwise inherit too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        sweep.run(args.count)
    except KeyboardInterrupt:
        sweep.report()
        print(f"\nSweep stopped. Rerun the same command to resume it:\n  {command_line}", file=sys.stderr)
        sys.exit(130)
    sweep.report()
