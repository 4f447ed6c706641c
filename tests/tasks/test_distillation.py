"""Knowledge distillation (tasks/distillation.py) through the real CLI, in-process, on tiny models: the loss against
an independent computation, a teacher kept out of the optimizer, checkpoints and export, classification and NER,
folder and .ckpt teachers, regression, the errors for a teacher that does not fit, and the config fragment."""

from argparse import ArgumentError

import pytest
import torch
from helpers import OFFLINE_ENV, REPO, entity_sentences, metrics_rows, tiny_args, tiny_splits, write_conll, write_rows
from lightning.pytorch import Callback
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

from lit_finetune import backbones
from lit_finetune.commands.fit import LitFinetuneCLI
from lit_finetune.errors import ConfigError
from lit_finetune.tasks import SequenceClassificationModule, TaskModule, TokenClassificationModule

pytestmark = pytest.mark.xdist_group("distillation")  # its module-scoped fixture is built once, on one worker
FRAGMENT = str(REPO / "configs" / "strategies" / "distillation.yaml")
NER_CONFIG = str(REPO / "configs" / "ner" / "conll2003.yaml")
QUIET = ("--trainer.logger=null", "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1")
# One layer and no dropout: a student whose first step can be recomputed exactly outside the Trainer.
STUDENT = "--model.init_args.config_overrides={num_hidden_layers: 1, hidden_dropout_prob: 0.0, " \
          "attention_probs_dropout_prob: 0.0}"


def ner_args(files: dict, run_dir, *extra: str) -> list[str]:
    return ["--config", NER_CONFIG, "--data.init_args.dataset_name=null",
            "--model.init_args.model_name_or_path=tiny:bert", "--model.init_args.learning_rate=5e-3",
            "--model.init_args.warmup=0", "--data.init_args.batch_size=8",
            f"--trainer.default_root_dir={run_dir}", "--trainer.max_epochs=1", "--trainer.accelerator=cpu",
            "--trainer.enable_model_summary=false", *QUIET,
            *[f"--data.init_args.{split}_file={path}" for split, path in files.items()], *extra]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Data, and teachers for the module: a classifier trained one epoch (for its checkpoint), a confident random one
    (an export with the data's labels, whose soft labels are far from uniform), and a trained CRF tagger."""
    root = tmp_path_factory.mktemp("distillation")
    with pytest.MonkeyPatch.context() as env:  # conftest's offline settings are per test; these runs come first
        for key, value in {**OFFLINE_ENV, "WANDB_MODE": "offline",
                           "LIT_FINETUNE_CACHE": str(root / "token-cache")}.items():
            env.setenv(key, value)
        data = tiny_splits(root / "data")
        LitFinetuneCLI(args=["fit", *tiny_args(data, root / "classifier", "--trainer.max_epochs=1", *QUIET)])
        confident = save_teacher(root / "confident", AutoModelForSequenceClassification, {0: "bad", 1: "good"},
                                 logit_scale=100.0)
        ner = {split: write_conll(root / f"{split}.txt", entity_sentences(n, seed))
               for split, n, seed in (("train", 48, 0), ("validation", 16, 1))}
        LitFinetuneCLI(args=["fit", *ner_args(ner, root / "tagger", "--model.init_args.use_crf=true",
                                              "--trainer.max_epochs=2")])
    return {"data": data, "ner": ner, "classifier": root / "classifier", "confident": confident,
            "tagger": root / "tagger"}


class FirstStep(Callback):
    """Recomputes the first step's KL from the teacher's export, before the optimizer changes the student, and
    records what the optimizer holds and the projection's gradient."""

    def __init__(self, teacher_folder, auto_class):
        self.teacher_folder, self.auto_class = teacher_folder, auto_class
        self.kl = self.optimized = self.projection_grad = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0:
            self.batch = batch

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step:
            return
        teacher = self.auto_class.from_pretrained(self.teacher_folder).eval()
        inputs = {k: self.batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        temperature = pl_module.hparams.distillation["temperature"]
        with torch.no_grad():
            t = teacher(**inputs).logits / temperature
            s = pl_module.model(**inputs).logits / temperature
        kl = (t.softmax(-1) * (t.log_softmax(-1) - s.log_softmax(-1))).sum(-1)
        if kl.dim() == 2:  # tokens: only the labelled ones count (not padding, special tokens or later sub-tokens)
            kl = kl[self.batch["labels"] != -100]
        self.kl = float(kl.mean())
        self.optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if pl_module.distiller.projection is not None:
            self.projection_grad = float(pl_module.distiller.projection.weight.grad.abs().sum())


def first_step_row(run_dir) -> dict:
    return {k: float(v) for k, v in next(r for r in metrics_rows(run_dir) if r.get("train/task_loss_step")).items()
            if v and k.startswith("train/") and k.endswith("_step")}


def fit_with(callback: Callback, args: list[str]) -> LitFinetuneCLI:
    cli = LitFinetuneCLI(args=args, run=False)
    cli.trainer.callbacks.append(callback)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli


def test_classifier_student_loss_teacher_frozen_outside_checkpoint_and_export(tmp_path, teachers):
    export, run_dir = teachers["confident"], tmp_path / "student"
    first = FirstStep(export, AutoModelForSequenceClassification)
    cli = fit_with(first, [*tiny_args(teachers["data"], run_dir, *QUIET, STUDENT, "--trainer.max_epochs=1",
                                      f"--model.init_args.distillation.teacher={export}",
                                      "--model.init_args.distillation.alpha=0.3",
                                      "--model.init_args.distillation.temperature=3",
                                      "--model.init_args.distillation.hidden_weight=0.5")])
    row = first_step_row(run_dir)
    assert row["train/distill_kl_step"] == pytest.approx(first.kl, rel=1e-4) and first.kl > 1e-3
    expected = (0.3 * row["train/task_loss_step"] + 0.7 * 3 ** 2 * row["train/distill_kl_step"]
                + 0.5 * row["train/hidden_mse_step"])
    assert row["train/loss_step"] == pytest.approx(expected, rel=1e-5)

    student, teacher = cli.model, cli.model.distiller.teacher.model
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not {id(p) for p in teacher.parameters()} & first.optimized
    assert {id(p) for p in student.distiller.projection.parameters()} <= first.optimized and first.projection_grad > 0
    original = AutoModelForSequenceClassification.from_pretrained(export).state_dict()
    assert all(torch.equal(v, original[k]) for k, v in teacher.state_dict().items())

    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert set(saved) == {f"model.{k}" for k in student.model.state_dict()} | {"distiller.projection.weight",
                                                                                "distiller.projection.bias"}
    reloaded = TaskModule.load_checkpoint(run_dir / "checkpoints" / "last.ckpt")  # without reading the teacher
    assert reloaded.distiller.teacher is None
    assert torch.equal(reloaded.distiller.projection.weight, saved["distiller.projection.weight"])
    exported = AutoModelForSequenceClassification.from_pretrained(run_dir / "export")
    assert exported.config.num_hidden_layers == 1 and exported.config.id2label == {0: "bad", 1: "good"}
    assert not [k for k in load_file(run_dir / "export" / "model.safetensors") if "projection" in k]


def test_checkpoint_teacher_and_alpha_one_is_exactly_the_task_loss(tmp_path, teachers):
    run_dir = tmp_path / "student"
    LitFinetuneCLI(args=["fit", *tiny_args(teachers["data"], run_dir, *QUIET, STUDENT, "--trainer.max_epochs=1",
                                           "--trainer.limit_train_batches=3",
                                           "--model.init_args.distillation.teacher="
                                           f"{teachers['classifier']}/checkpoints/last.ckpt",
                                           "--model.init_args.distillation.alpha=1.0")])
    rows = [r for r in metrics_rows(run_dir) if r.get("train/loss_step")]
    assert len(rows) == 3 and all(r["train/loss_step"] == r["train/task_loss_step"] for r in rows)
    assert all(float(r["train/distill_kl_step"]) > 0 for r in rows)  # the teacher ran


@pytest.mark.parametrize("use_crf", [False, True])
def test_tagger_student_kl_over_labelled_tokens_with_the_fragment(use_crf, tmp_path, teachers):
    """The teacher has a CRF; its emissions are distilled, into a student with or without one."""
    export, run_dir = teachers["tagger"] / "export", tmp_path / "student"
    first = FirstStep(export, AutoModelForTokenClassification)
    args = ner_args(teachers["ner"], run_dir, STUDENT, f"--model.init_args.use_crf={use_crf}",
                    f"--model.init_args.distillation.teacher={export}")
    cli = fit_with(first, [*args[:2], "--config", FRAGMENT, *args[2:]])
    row = first_step_row(run_dir)
    assert row["train/distill_kl_step"] == pytest.approx(first.kl, rel=1e-4) and first.kl > 1e-3
    assert row["train/loss_step"] == pytest.approx(0.5 * row["train/task_loss_step"]
                                                   + 0.5 * 2 ** 2 * row["train/distill_kl_step"], rel=1e-5)
    assert "train/hidden_mse_step" not in row and cli.model.distiller.projection is None
    assert (cli.model.crf is not None) == use_crf and "val/f1" in metrics_rows(run_dir)[-1]
    assert AutoModelForTokenClassification.from_pretrained(run_dir / "export").config.num_hidden_layers == 1


def save_teacher(folder, auto_class, id2label: dict, extra_token: str | None = None, logit_scale: float = 1.0):
    """A random tiny model with these labels and the tiny models' tokenizer, as an export folder."""
    model = backbones.load_model("tiny:bert", auto_class, num_labels=len(id2label), id2label=id2label,
                                 label2id={v: k for k, v in id2label.items()})
    with torch.no_grad():
        model.classifier.weight.mul_(logit_scale)
    tokenizer = backbones.load_tokenizer("tiny:bert")
    if extra_token:
        tokenizer.add_tokens([extra_token])
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_regression_student_matches_the_teacher_score(tmp_path):
    rows = [{"id": str(i), "text": "good " * (i % 5 + 1), "label": float(i % 5)} for i in range(24)]
    data = {"train": write_rows(tmp_path / "train.csv", rows), "validation": write_rows(tmp_path / "val.csv", rows[:8])}
    teacher = save_teacher(tmp_path / "teacher", AutoModelForSequenceClassification, {0: "score"})
    checkpoint = '[{"class_path": "ModelCheckpoint", "init_args": {"monitor": "val/spearman", "mode": "max"}}]'
    run_dir = tmp_path / "student"
    LitFinetuneCLI(args=["fit", *tiny_args(data, run_dir, *QUIET, "--data.init_args.num_labels=1",
                                           "--trainer.max_steps=2", f"--trainer.callbacks={checkpoint}",
                                           f"--model.init_args.distillation.teacher={teacher}")])
    row = first_step_row(run_dir)
    assert "train/distill_kl_step" not in row  # a score has no distribution: no temperature, no T^2
    assert row["train/loss_step"] == pytest.approx(0.5 * row["train/task_loss_step"]
                                                   + 0.5 * row["train/distill_mse_step"], rel=1e-5)


@pytest.mark.parametrize("case, match", [
    ("missing folder", r"model.distillation.teacher: folder '.*/nowhere/export' does not exist"),
    ("missing checkpoint", r"model.distillation.teacher: checkpoint .*nope.ckpt does not exist"),
    ("other labels", r"model.distillation.teacher: the teacher predicts labels \{0: 'neg', 1: 'pos'\}, the student's data has "
                     r"\{0: 'bad', 1: 'good'\}"),
    ("other vocabulary", r"model.distillation.teacher: the teacher's tokenizer vocabulary \(30523 tokens\) differs from the "
                         r"student's \(30522"),
    ("other task", r"model.distillation.teacher: .* is BertForTokenClassification; the student needs a \*ForSequenceClassification"),
    ("hidden loss alone", r"(?s)distillation.*teacher"),
    ("alpha out of range", r'(?s)Parser key "alpha".*1.5 does not conform to restriction v>=0 and v<=1'),
])
def test_a_teacher_that_cannot_teach_is_refused_before_training(case, match, tmp_path, tiny_data):
    folder = tmp_path / "teacher"
    teacher = {
        "missing folder": f"{tmp_path}/nowhere/export",
        "missing checkpoint": f"{tmp_path}/nope.ckpt",
        "other labels": lambda: save_teacher(folder, AutoModelForSequenceClassification, {0: "neg", 1: "pos"}),
        "other vocabulary": lambda: save_teacher(folder, AutoModelForSequenceClassification, {0: "bad", 1: "good"},
                                                 extra_token="<distill>"),
        "other task": lambda: save_teacher(folder, AutoModelForTokenClassification, {0: "bad", 1: "good"}),
        "hidden loss alone": None,
        "alpha out of range": f"{tmp_path}/unread/export",  # settings are checked before the teacher is read
    }[case]
    teacher = teacher() if callable(teacher) else teacher
    extra = [f"--model.init_args.distillation.teacher={teacher}"] if teacher else \
        ["--model.init_args.distillation.hidden_weight=1"]
    if case == "alpha out of range":
        extra.append("--model.init_args.distillation.alpha=1.5")
    with pytest.raises((ConfigError, ArgumentError), match=match):  # bounds are checked when the config is parsed
        LitFinetuneCLI(args=["fit", *tiny_args(tiny_data, tmp_path / "run", *QUIET, *extra)])
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("config, task_class", [("classification/sst2.yaml", SequenceClassificationModule),
                                                ("ner/conll2003.yaml", TokenClassificationModule)])
def test_fragment_merges_into_either_task_config(config, task_class, tmp_path):
    cli = LitFinetuneCLI(args=["--config", str(REPO / "configs" / config), "--config", FRAGMENT,
                               "--model.init_args.distillation.teacher=runs/sst2/export",
                               f"--trainer.default_root_dir={tmp_path}"], run=False)
    h = cli.model.hparams
    assert type(cli.model) is task_class and h.learning_rate == 1e-4  # the task config's settings stay
    assert (h.config_overrides, h.distillation) == ({"num_hidden_layers": 2}, {
        "teacher": "runs/sst2/export", "alpha": 0.5, "temperature": 2.0, "hidden_weight": 0.0})
