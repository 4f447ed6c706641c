"""Every fine-tuning strategy in configs/strategies composes with two different task configs (SST-2 classification and
CoNLL-2003 NER) by a second --config, and trains a few steps that way, with tiny models and local data."""

import pytest
from helpers import REPO, entity_sentences, pretrained_tiny_bert, tiny_args, tiny_splits, write_conll

from lit_finetune.commands.fit import LitFinetuneCLI
from lit_finetune.training.layers import parameter_counts

pytestmark = pytest.mark.xdist_group("strategy_configs")  # its module-scoped fixture is built once, on one worker
# Fine-tuning strategies; the distributed ones (ddp, fsdp2: trainer.strategy) are tested in tests/training/test_sharding.py
STRATEGIES = sorted(p for p in (REPO / "configs" / "strategies").glob("*.yaml") if "strategy:" not in p.read_text())


def sst2_args(folder, run_dir, *extra):
    return tiny_args(tiny_splits(folder), run_dir, "--data.init_args.dataset_name=null",
                     "--data.init_args.dataset_config=null", "--data.init_args.id_column=id", *extra,
                     config=REPO / "configs" / "classification" / "sst2.yaml")


def ner_args(folder, run_dir, *extra):
    files = {split: write_conll(folder / f"{split}.txt", entity_sentences(n, seed))
             for split, n, seed in (("train", 48, 0), ("validation", 16, 1))}
    return ["--config", str(REPO / "configs" / "ner" / "conll2003.yaml"), "--data.init_args.dataset_name=null",
            "--model.init_args.model_name_or_path=tiny:bert", "--data.init_args.batch_size=8",
            f"--trainer.default_root_dir={run_dir}", "--trainer.accelerator=cpu",
            "--trainer.enable_model_summary=false", *[f"--data.init_args.{s}_file={p}" for s, p in files.items()],
            *extra]


TASKS = {"sst2": sst2_args, "conll2003": ner_args}
SHORT_RUN = ("--trainer.max_epochs=1", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2", "--trainer.enable_progress_bar=false",
             "--trainer.log_every_n_steps=1")


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A short plain run of each task, whose export is the teacher of the distillation strategy."""
    folders = {}
    for task, task_args in TASKS.items():
        root = tmp_path_factory.mktemp(f"teacher-{task}")
        LitFinetuneCLI(args=["fit", *task_args(root / "data", root / "run", *SHORT_RUN)])
        folders[task] = root / "run" / "export"
    return folders


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """QLoRA quantizes pretrained weights as it reads them: the tiny preset saved as a folder."""
    return pretrained_tiny_bert(tmp_path_factory.mktemp("pretrained"))


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda p: p.stem)
def test_strategy_composes_with_task_config_and_trains(strategy, task, tmp_path, request):
    extra = [f"--model.init_args.distillation.teacher={request.getfixturevalue('teachers')[task]}"] \
        if strategy.stem == "distillation" else []
    if strategy.stem == "qlora":  # SST-2 over a pooled head, whose 4-bit part is the backbone it wraps
        extra = [f"--model.init_args.model_name_or_path={request.getfixturevalue('pretrained')}",
                 *(["--model.init_args.pooling=mean"] if task == "sst2" else [])]
    run_dir = tmp_path / "run"
    cli = LitFinetuneCLI(args=["fit", *TASKS[task](tmp_path / "data", run_dir, *SHORT_RUN, "--config", str(strategy),
                                                   *extra)])
    assert cli.trainer.global_step == 4
    assert (run_dir / "export" / "config.json").is_file()
    trainable, total = parameter_counts(cli.model)
    frozen_by_design = {"feature_extraction", "top2_layers", "freeze_bottom", "lora", "qlora"}  # gradual: all by step 4
    assert (trainable < total) == (strategy.stem in frozen_by_design)
    assert cli.model.quantized == (strategy.stem == "qlora")
