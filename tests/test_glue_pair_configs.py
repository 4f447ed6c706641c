"""The GLUE sentence-pair configs (MRPC, RTE, STS-B): each trains a few steps with the local override its header comment
documents, on tiny TSVs shaped like ../shared/data/{mrpc,rte,stsb} (BOM, column names, unquoted text)."""

import random
import shlex

import pytest
import torch
from helpers import REPO, logged_values

from lit_finetune.commands.fit import LitFinetuneCLI

WORDS = ["a", "man", "said", "the", "plane", '"quoted', "takes", "off", "company's", "growth"]


def documented_override(config: str) -> list[str]:
    """The ``--data...`` arguments of the `lit-finetune fit` command in the config's header comment, as a shell
    would split them."""
    lines = []
    for line in (REPO / "configs" / "classification" / config).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    comment = " ".join(lines).replace("\\ ", " ")  # shell line continuations
    command = comment[comment.index("lit-finetune fit"):]
    return [arg for arg in shlex.split(command) if arg.startswith("--data.")]


def glue_tsv(path, header: list[str], rows: list[list], bom: bool = False) -> None:
    """GLUE's TSV: tab-separated and unquoted (a `"` is text), optionally with MRPC's UTF-8 byte-order mark."""
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")


def write_task(folder, task: str, n: int, seed: int, split: str) -> None:
    rng = random.Random(seed)
    pairs = [(" ".join(rng.choices(WORDS, k=rng.randint(3, 9))), " ".join(rng.choices(WORDS, k=rng.randint(3, 9))))
             for _ in range(n)]
    if task == "mrpc":
        rows = [[i % 2, 1000 + i, 2000 + i, a, b] for i, (a, b) in enumerate(pairs)]
        glue_tsv(folder / f"{split}.tsv", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], rows, bom=True)
    elif task == "rte":
        rows = [[i, a, b, ("entailment", "not_entailment")[i % 2]] for i, (a, b) in enumerate(pairs)]
        glue_tsv(folder / f"{split}.tsv", ["index", "sentence1", "sentence2", "label"], rows)
    else:
        rows = [[i, "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", a, b, f"{(i % 11) / 2:.3f}"]
                for i, (a, b) in enumerate(pairs)]
        glue_tsv(folder / f"{split}.tsv", ["index", "genre", "filename", "year", "old_index", "source1", "source2",
                                           "sentence1", "sentence2", "score"], rows)


@pytest.mark.parametrize("task, metric, id2label", [
    ("mrpc", "val/f1", {0: "not_equivalent", 1: "equivalent"}),
    ("rte", "val/acc", {0: "entailment", 1: "not_entailment"}),
    ("stsb", "val/spearman", {0: "score"}),
])
def test_documented_local_override_trains(tmp_path, task, metric, id2label):
    data = tmp_path / task
    data.mkdir()
    write_task(data, task, 24, 0, "train")
    write_task(data, task, 12, 1, "dev")
    override = [arg.replace(f"../shared/data/{task}/", f"{data}/") for arg in documented_override(f"{task}.yaml")]
    assert sum(str(data) in arg for arg in override) == 2  # the train and dev files were both redirected
    run_dir = tmp_path / "run"
    cli = LitFinetuneCLI(args=[
        "fit", "--config", str(REPO / "configs" / "classification" / f"{task}.yaml"), *override,
        "--model.init_args.model_name_or_path=tiny:bert", "--data.init_args.batch_size=8", "--trainer.max_epochs=1",
        "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.logger=lit_finetune.training.loggers.RunCSVLogger", f"--trainer.default_root_dir={run_dir}"])
    dm = cli.datamodule
    assert (len(dm.splits["train"]), len(dm.splits["validation"])) == (24, 12)  # quotes did not merge rows
    assert cli.trainer.global_step == 3 and cli.model.model.config.id2label == id2label
    values = logged_values(run_dir, metric)
    assert len(values) == 1 and torch.isfinite(torch.tensor(values)).all()  # one validation, at the epoch's end
    monitor = "val/spearman" if task == "stsb" else "val/acc"
    assert cli.trainer.checkpoint_callback.monitor == monitor and f"{monitor}_best" in cli.trainer.callback_metrics
    if task == "stsb":
        assert dm.splits["train"]["labels"][:3] == [0.0, 0.5, 1.0]
