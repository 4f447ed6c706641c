"""`lit-finetune compare`: compare runs from their local records (config.yaml, metrics.csv, run.json), no W&B needed.

Prints a table sorted by a metric (with the hyperparameters that differ between runs), and writes a PNG with each
run's validation curve and each varied hyperparameter against the metric; optionally the table as CSV / markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path

from lit_finetune.errors import ConfigError
from lit_finetune.run_folder import RunFolder

# Keys that differ between any two runs without being hyperparameters.
NOT_HYPERPARAMETERS = ("trainer.default_root_dir", "trainer.logger", "trainer.callbacks", "config", "ckpt_path")


def flatten(tree, prefix: str = "") -> dict:
    """Nested config -> dotted keys as on the command line (``model.learning_rate``, no ``init_args``)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        path = prefix if key == "init_args" else f"{prefix}.{key}" if prefix else key
        flat.update(flatten(value, path))
    return flat


@dataclass
class Run:
    folder: Path
    config: dict
    history: list[dict]
    record: dict

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def status(self) -> str:
        return self.record.get("status") or ("incomplete" if self.history else "no metrics")

    def curve(self, metric: str) -> list[tuple[int, int, float]]:
        """(epoch, step, value) of every logged value of `metric`, one per step: a resumed run logs again the steps
        after its last checkpoint, and the later value wins."""
        points = {}
        for row in self.history:
            if row.get(metric):
                epoch = int(row["epoch"]) if row.get("epoch") else None  # loggers' direct writes carry none
                points[row.get("step")] = (epoch, int(row.get("step") or 0), float(row[metric]))
        return list(points.values())

    @classmethod
    def read(cls, folder: str | Path) -> Run:
        run = RunFolder(folder)
        if not run.holds_run():
            raise ConfigError(f"compare: {run.root} is not a run folder (no {run.config.name})")
        return cls(run.root, flatten(run.read_config()), run.read_metrics(), run.read_record())


def varied_keys(runs: list[Run]) -> list[str]:
    """Hyperparameters whose values are not the same in every run."""
    keys = sorted({k for run in runs for k in run.config if not k.startswith(NOT_HYPERPARAMETERS)})
    return [k for k in keys if len({json.dumps(run.config.get(k), default=str) for run in runs}) > 1]


def callbacks(run: Run) -> list[str]:
    """The run's callbacks as ``Class(arg=value, ...)``."""
    return [f"{cb['class_path'].rpartition('.')[2]}("
            + ", ".join(f"{k}={v}" for k, v in (cb.get("init_args") or {}).items()) + ")"
            for cb in run.config.get("trainer.callbacks") or [] if isinstance(cb, dict) and "class_path" in cb]


# Columns shown when some run logged them: their last value.
LOGGED_COLUMNS = {"params/trainable": "trainable params", "perf/peak_rss_mb": "peak RSS MB",
                  "perf/samples_per_s": "samples/s"}


def summarize(runs: list[Run], metric: str, goal: str) -> list[dict]:
    """One row per run: name, varied hyperparameters and callbacks (e.g. a fine-tuning strategy), best and last
    metric, epoch of the best, trainable parameters, speed and memory when logged, wall time, status."""
    pick = max if goal == "maximize" else min
    varied = varied_keys(runs)
    everywhere = set.intersection(*(set(callbacks(run)) for run in runs))
    logged = [key for key in LOGGED_COLUMNS if any(run.curve(key) for run in runs)]
    rows = []
    for run in runs:
        curve = run.curve(metric)
        best_epoch, _, best = pick(curve, key=lambda point: point[2]) if curve else (None, None, None)
        extra_callbacks = [cb for cb in callbacks(run) if cb not in everywhere]
        rows.append({"run": run.name, **{k: run.config.get(k) for k in varied},
                     **({"callbacks": "; ".join(extra_callbacks) or None} if len(everywhere) < max(
                         len(callbacks(r)) for r in runs) else {}),
                     f"best {metric}": best, f"last {metric}": curve[-1][2] if curve else None,
                     "best epoch": best_epoch,
                     **{LOGGED_COLUMNS[key]: (run.curve(key) or [(None, None, None)])[-1][2] for key in logged},
                     "wall s": run.record.get("wall_s"), "status": run.status})
    missing = float("-inf") if goal == "maximize" else float("inf")
    rows.sort(key=lambda row: row[f"best {metric}"] if row[f"best {metric}"] is not None else missing,
              reverse=goal == "maximize")
    return rows


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def as_text(rows: list[dict]) -> str:
    header = list(rows[0])
    table = [header] + [[cell(row[k]) for k in header] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in table)


def as_markdown(rows: list[dict]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(row[k]) for k in header) + " |" for row in rows]) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(runs: list[Run], rows: list[dict], varied: list[str], metric: str, path: Path) -> None:
    """Left: the metric over training steps for every run; then one panel per varied hyperparameter against the best
    value."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(varied), figsize=(5 * (1 + len(varied)), 4), squeeze=False)
    curves = axes[0][0]
    for run in runs:
        points = run.curve(metric)
        if points:  # by step: runs may validate several times per epoch
            curves.plot([step for _, step, _ in points], [v for _, _, v in points], marker="o", label=run.name)
    curves.set(title=f"{metric} during training", xlabel="step", ylabel=metric)
    curves.legend(fontsize="small")
    best = f"best {metric}"
    for ax, key in zip(axes[0][1:], varied):
        points = [(row[key], row[best]) for row in rows if row[best] is not None]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in points)
        labels = sorted({str(x) for x, _ in points})
        xs = [x if numeric else labels.index(str(x)) for x, _ in points]
        ax.scatter(xs, [y for _, y in points])
        if not numeric:
            # Paths name their last folders (runs/x/mlm/export -> mlm/export), turned so long names stay apart.
            ax.set_xticks(range(len(labels)), ["/".join(label.split("/")[-2:]) for label in labels],
                          rotation=20, ha="right")
        elif min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        ax.set(title=f"{key} vs {best}", xlabel=key, ylabel=best)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(prog="lit-finetune compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="run folders (each with config.yaml and metrics.csv)")
    parser.add_argument("--sweep", help="a folder whose subfolders are runs (e.g. a sweep's trials)")
    parser.add_argument("--metric", default="val/acc", help="metric to sort and plot by (default val/acc)")
    parser.add_argument("--goal", choices=("maximize", "minimize"), default="maximize")
    parser.add_argument("--plot", help="PNG to write (default compare.png in the sweep folder or here)")
    parser.add_argument("--csv", help="also write the table as CSV")
    parser.add_argument("--markdown", help="also write the table as markdown")
    args = parser.parse_args(argv)
    folders = [Path(f) for f in args.runs]
    if args.sweep:
        folders += sorted(p for p in Path(args.sweep).iterdir() if RunFolder(p).holds_run())
    if not folders:
        raise ConfigError("compare: give run folders, or --sweep with a folder of runs")
    runs = [Run.read(folder) for folder in folders]
    rows = summarize(runs, args.metric, args.goal)
    if all(row[f"best {args.metric}"] is None for row in rows):
        raise ConfigError(f"compare: no run logged {args.metric!r}; choose --metric from their metrics.csv columns")
    print(as_text(rows))
    plot_path = Path(args.plot or Path(args.sweep or ".") / "compare.png")
    plot(runs, rows, varied_keys(runs), args.metric, plot_path)
    print(f"\nPlot: {plot_path}")
    if args.csv:
        write_csv(rows, Path(args.csv))
    if args.markdown:
        Path(args.markdown).write_text(as_markdown(rows), encoding="utf-8")
    return rows
