"""`lit-finetune compare` over real run folders: table sorted by the metric, varied hyperparameters, PNG, CSV."""

import csv

import pytest
from helpers import logged_values, run_cli, tiny_args, tiny_splits

from lit_finetune.commands import compare
from lit_finetune.commands.fit import LitFinetuneCLI
from lit_finetune.errors import ConfigError

# On one test worker: the three runs of the module's sweep folder are made once.
pytestmark = pytest.mark.xdist_group("compare")


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, offline_module):
    """Three short runs differing in learning rate and schedule; only 3e-3 learns the task in 8 epochs (read, not
    changed, by the tests)."""
    folder = tmp_path_factory.mktemp("compare")
    tiny_data, sweep = tiny_splits(folder / "data"), folder / "sweep"
    for i, (lr, schedule) in enumerate([(1e-5, "linear"), (3e-3, "cosine"), (1e-2, "linear")]):
        LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, sweep / f"trial-{i}", "--trainer.max_epochs=8",
                                               f"--model.learning_rate={lr}", f"--model.lr_scheduler={schedule}")])
    return sweep


def test_table_plot_and_files(sweep_dir, tmp_path, capsys):
    rows = compare.main(["--sweep", str(sweep_dir), "--csv", str(tmp_path / "t.csv"),
                         "--markdown", str(tmp_path / "t.md")])
    bests = [row["best val/acc"] for row in rows]
    assert bests == sorted(bests, reverse=True) and len(rows) == 3 and bests[0] > bests[-1]
    assert rows[0]["model.learning_rate"] == 3e-3  # the one that learned
    assert list(rows[0])[:3] == ["run", "model.learning_rate", "model.lr_scheduler"]  # only what differs
    assert {row["model.learning_rate"] for row in rows} == {1e-5, 3e-3, 1e-2}
    assert all(row["status"] == "finished" and row["wall s"] > 0 and 0 <= row["best epoch"] < 8 for row in rows)
    for row in rows:
        history = logged_values(sweep_dir / row["run"], "val/acc")
        assert row["best val/acc"] == max(history) and row["last val/acc"] == history[-1]
    png = (sweep_dir / "compare.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert list(csv.DictReader((tmp_path / "t.csv").open()))[0]["run"] == rows[0]["run"]
    assert (tmp_path / "t.md").read_text().startswith("| run | model.learning_rate | model.lr_scheduler |")
    assert rows[0]["run"] in capsys.readouterr().out


def test_unknown_metric_and_non_run_folder_are_explained(sweep_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"no run logged 'val/nope'"):
        compare.main(["--sweep", str(sweep_dir), "--metric", "val/nope", "--plot", str(tmp_path / "x.png")])
    with pytest.raises(ConfigError, match=r"is not a run folder \(no config.yaml\)"):
        compare.main([str(tmp_path)])


def test_compare_command_runs(sweep_dir, tmp_path):
    result = run_cli("compare", str(sweep_dir / "trial-0"), str(sweep_dir / "trial-2"),
                     "--plot", str(tmp_path / "two.png"))
    assert "trial-0" in result.stdout and "trial-2" in result.stdout and (tmp_path / "two.png").is_file()


def test_runs_that_differ_by_strategy_show_it(tmp_path, tiny_data):
    """A freezing callback is no hyperparameter key: the table names it, with the trainable parameters."""
    from helpers import REPO

    for name, extra in (("full", ()), ("frozen", ("--config", str(REPO / "configs/strategies/feature_extraction.yaml")))):
        LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, tmp_path / "runs" / name, "--trainer.max_epochs=1", *extra)])
    rows = {row["run"]: row for row in compare.main(["--sweep", str(tmp_path / "runs"),
                                                     "--plot", str(tmp_path / "c.png")])}
    assert rows["frozen"]["callbacks"] == "FreezeLayers(policy=feature_extraction, layers=0)"
    assert rows["full"]["callbacks"] is None
    assert rows["frozen"]["model.learning_rate"] == 1e-2 and rows["full"]["model.learning_rate"] == 3e-3
    assert rows["frozen"]["trainable params"] < rows["full"]["trainable params"]
