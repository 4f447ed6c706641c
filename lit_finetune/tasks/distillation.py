"""Knowledge distillation for classification and token classification: the student learns from a fine-tuned teacher's
softened predictions (and optionally its last hidden states) as well as from the labels.

The teacher is held outside the student's modules, so it is in neither the student's checkpoints (they keep the
student's size and load, export and resume without the teacher) nor its optimizer or DDP wrapper. It is loaded only
when fitting, and moved to the student's device and dtype on first use.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig

from lit_finetune import backbones
from lit_finetune.errors import ConfigError
from lit_finetune.tasks.base import TaskModule


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                   positions: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) between the temperature-softened class distributions, averaged over the examples (or
    over the `positions` of a token mask: labelled tokens, not padding or special tokens)."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="none").sum(-1)
    if positions is None:
        return kl.mean()
    return kl[positions].sum() / positions.sum().clamp(min=1)


def masked_mse(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error per hidden unit over the tokens of `mask` (not padding)."""
    per_token = (predicted.float() - target.float()).pow(2).mean(-1)
    return per_token[mask.bool()].sum() / mask.sum().clamp(min=1)


class FrozenTeacher:
    """The teacher's Hugging Face model, in eval mode without gradients; deliberately not an nn.Module, so assigning
    it to the student registers nothing (no state_dict entries, no optimizer parameters)."""

    def __init__(self, model: nn.Module, input_names: list[str]):
        self.model = model.eval().requires_grad_(False)
        self.input_names = input_names  # the teacher's own (DistilBERT takes no token_type_ids, BERT does)

    @torch.no_grad()
    def __call__(self, batch: dict, like: torch.Tensor, hidden_states: bool):
        """Outputs on `batch`, after moving to the device and dtype of `like` (a student weight), so it follows the
        student to the GPU and to true half precision (mixed precision autocasts it as it does the student)."""
        weight = next(self.model.parameters())
        if (weight.device, weight.dtype) != (like.device, like.dtype):
            self.model.to(device=like.device, dtype=like.dtype)
        inputs = {k: batch[k] for k in self.input_names if k in batch}
        return self.model(**inputs, output_hidden_states=hidden_states)


def read_teacher(path: str, auto_class, trust_remote_code: bool) -> tuple[nn.Module, object]:
    """The model and tokenizer of an exported folder, a hub id or a lit_finetune .ckpt, as `auto_class`'s task.

    Raises: ConfigError naming ``model.teacher`` when it does not exist or is a model of another task.
    """
    task = auto_class.__name__.removeprefix("AutoModel")  # e.g. ForSequenceClassification
    if path.endswith(".ckpt") or Path(path).is_file():
        if not Path(path).is_file():
            raise ConfigError(f"model.teacher: checkpoint {path} does not exist")
        module = TaskModule.load_checkpoint(path)
        model, tokenizer, architecture = module.model, module.tokenizer, type(module.model).__name__
    else:
        source = backbones.resolve(path, "model.teacher")
        # Checked before loading: an Auto class loads another task's weights under a fresh, untrained head.
        architecture = (AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code).architectures
                        or ["a model without a task head"])[0]
        model = backbones.load_model(source, auto_class, trust_remote_code) if architecture.endswith(task) else None
        tokenizer = backbones.load_tokenizer(source, trust_remote_code)
    if not architecture.endswith(task):
        raise ConfigError(f"model.teacher: {path} is {architecture}; the student needs a *{task} teacher "
                          "(fine-tuned on the same task)")
    return model, tokenizer


class DistillationMixin:
    """Adds a teacher to a labelled task module (put it before LabeledTaskModule in the bases).

    The module defines ``auto_class`` (its Hugging Face Auto class) and takes the init args ``teacher``,
    ``distill_alpha``, ``distill_temperature`` and ``hidden_distill_weight``; its ``shared_step`` gets outputs from
    `student_outputs` and passes its task loss through `with_distillation`. The training loss is
    ``alpha * task + (1 - alpha) * T^2 * KL(teacher/T || student/T) + hidden_weight * MSE(projected student hidden,
    teacher hidden)``; regression (one label) uses the MSE to the teacher's score in place of the KL. Validation and
    test losses stay the task loss, comparable with runs without a teacher.

    Raises: ConfigError, before training, naming ``model.teacher`` when the teacher is missing, of another task, or
    has other labels or another vocabulary than the student (or naming the distillation setting that is out of
    range).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher: FrozenTeacher | None = None
        # A trained part of the student task module (in its checkpoints) but not of the exported model.
        self.hidden_projection: nn.Linear | None = None

    def configure_model(self) -> None:
        super().configure_model()
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if fitting and self.teacher is None and (self.hparams.teacher or self.hparams.hidden_distill_weight):
            self.attach_teacher()

    def attach_teacher(self) -> None:
        """Load and check the teacher, and build the hidden-state projection; the student must be built first."""
        h = self.hparams
        if not h.teacher:
            raise ConfigError("model.hidden_distill_weight: a hidden-state loss needs a teacher (model.teacher)")
        if not 0.0 <= h.distill_alpha <= 1.0:
            raise ConfigError(f"model.distill_alpha: {h.distill_alpha} is not a weight between 0 and 1")
        if h.distill_temperature <= 0:
            raise ConfigError(f"model.distill_temperature: {h.distill_temperature} must be positive")
        model, tokenizer = read_teacher(str(h.teacher), self.auto_class, h.trust_remote_code)
        if tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ConfigError(f"model.teacher: the teacher's tokenizer vocabulary ({len(tokenizer)} tokens) differs "
                              f"from the student's ({len(self.tokenizer)} tokens, from model.model_name_or_path / "
                              "model.tokenizer_name_or_path); the teacher reads the student's input ids, so they "
                              "must match")
        teacher_labels = {int(k): v for k, v in model.config.id2label.items()}
        student_labels = self.label_overrides()["id2label"]
        if teacher_labels != student_labels:
            raise ConfigError(f"model.teacher: the teacher predicts labels {teacher_labels}, the student's data has "
                              f"{student_labels}; distillation needs the same labels in the same order")
        self.teacher = FrozenTeacher(model, list(tokenizer.model_input_names))
        if h.hidden_distill_weight and self.hidden_projection is None:
            self.hidden_projection = nn.Linear(self.model.config.hidden_size, model.config.hidden_size)

    def student_outputs(self, batch: dict, split: str):
        """The student model's outputs (``.logits``), with hidden states when the hidden-state loss needs them."""
        hidden = split == "train" and self.teacher is not None and self.hidden_projection is not None
        return self.model(**self.model_inputs(batch), output_hidden_states=hidden)

    def with_distillation(self, task_loss: torch.Tensor, student, batch: dict, split: str,
                          positions: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss: `task_loss` blended with the teacher's terms, each logged (``train/task_loss``,
        ``train/distill_kl`` or ``train/distill_mse``, ``train/hidden_mse``); `task_loss` itself in evaluation or
        without a teacher. `positions` marks the tokens that count (token classification)."""
        if split != "train" or self.teacher is None:
            return task_loss
        h = self.hparams
        weight = next(self.model.parameters())
        teacher = self.teacher(batch, like=weight, hidden_states=self.hidden_projection is not None)
        if self.num_labels == 1:  # a score has no distribution to soften: match it
            soft = F.mse_loss(student.logits.float(), teacher.logits.float())
            parts = {"train/distill_mse": soft}
        else:
            soft = soft_target_kl(student.logits, teacher.logits, h.distill_temperature, positions)
            parts = {"train/distill_kl": soft}
            soft = soft * h.distill_temperature ** 2  # keeps its gradients' scale as T changes (Hinton et al.)
        loss = h.distill_alpha * task_loss + (1 - h.distill_alpha) * soft
        if self.hidden_projection is not None:
            hidden = masked_mse(self.hidden_projection(student.hidden_states[-1]), teacher.hidden_states[-1],
                                batch["attention_mask"])
            parts["train/hidden_mse"] = hidden
            loss = loss + h.hidden_distill_weight * hidden
        self.log_dict({"train/task_loss": task_loss, **parts}, on_step=True, on_epoch=True,
                      batch_size=len(batch["input_ids"]))
        return loss

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        # Without the teacher (export, predict) the projection's size comes from its own saved weights.
        weight = checkpoint["state_dict"].get("hidden_projection.weight")
        if weight is not None and self.hidden_projection is None:
            self.hidden_projection = nn.Linear(weight.shape[1], weight.shape[0])
