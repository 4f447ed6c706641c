"""Sweep files: W&B's agent turns each into `lit-finetune fit ... --key=value`; every proposal must parse in our CLI."""

import pytest
import yaml
from helpers import REPO, write_rows
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

from lit_finetune.commands.fit import LitFinetuneCLI
from lit_finetune.data.tokenizer_training import train_tokenizer

SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))


def proposals(parameters: dict) -> list[dict]:
    """Parameter sets covering every listed value and both ends of every range (one knob varied at a time)."""
    def choices(spec: dict) -> list:
        if "values" in spec:
            return spec["values"]
        if "value" in spec:
            return [spec["value"]]
        return [spec["min"], spec["max"]]

    base = {key: choices(spec)[0] for key, spec in parameters.items()}
    return [{**base, key: value} for key, spec in parameters.items() for value in choices(spec)]


def agent_argv(command: list, proposal: dict) -> list[str]:
    """The argument list W&B's agent runs, built with W&B's own functions (as in wandb_agent.Agent)."""
    flags = create_sweep_command_args({"args": {k: {"value": v} for k, v in proposal.items()}})
    argv = []
    for chunk in create_sweep_command(list(command)):
        argv += flags.get(chunk[2:-1], []) if chunk.startswith("${") else [chunk]
    return argv


def test_the_sweeps_ship():
    assert {p.stem for p in SWEEPS} >= {"sst2_grid", "sst2_bayes", "sst2_finetuning_choices", "pretrain_objectives",
                                        "strategies"}


@pytest.fixture
def pretrain_objectives_tokenizer(tmp_path, monkeypatch):
    """pretrain_objectives.yaml reads runs/pretrain-objectives/tokenizer (the benchmark's): a small one, in a working
    folder that also sees the repo's configs."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    corpus = write_rows(tmp_path / "corpus.csv", [{"text": f"the film number {i} was good and long"} for i in range(50)])
    train_tokenizer(str(corpus), "runs/pretrain-objectives/tokenizer", vocab_size=120)


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.stem)
def test_every_proposal_is_accepted_by_the_cli(sweep, tmp_path, request):
    if sweep.stem == "pretrain_objectives":
        request.getfixturevalue("pretrain_objectives_tokenizer")
    spec = yaml.safe_load(sweep.read_text())
    assert spec["method"] in ("grid", "random", "bayes") and spec["metric"]["goal"] in ("maximize", "minimize")
    assert spec["metric"]["name"].startswith(("val/", "train/"))
    for i, proposal in enumerate(proposals(spec["parameters"])):
        argv = agent_argv(spec["command"], proposal)
        assert argv[:2] == ["lit-finetune", "fit"], argv  # ${env} is the agent's /usr/bin/env prefix
        cli = LitFinetuneCLI(args=[*argv[2:], f"--trainer.default_root_dir={tmp_path / str(i)}"], run=False)
        for key, value in proposal.items():
            if key == "config":  # a second --config: a strategy file composed with the task config
                assert [str(c) for c in cli.config["config"]][-1] == value
                continue
            group, _, name = key.partition(".")
            owner = {"model": cli.model.hparams, "data": cli.datamodule.hparams, "trainer": cli.config.trainer}
            actual = owner[group][name] if name else cli.config[key]  # e.g. seed_everything
            assert actual == value, (key, actual, value)
