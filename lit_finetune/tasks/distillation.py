"""Knowledge distillation for classification and token classification: the student learns from a fine-tuned teacher's
softened predictions (and optionally its last hidden states) as well as from the labels.

The teacher is held outside the student's modules, so it is in neither the student's checkpoints (they keep the
student's size and load, export and resume without the teacher) nor its optimizer or DDP wrapper. It is loaded only
when fitting, and moved to the student's device and dtype on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig

from lit_finetune import backbones
from lit_finetune.bounds import NonNegativeFloat, PositiveFloat, Probability
from lit_finetune.errors import ConfigError
from lit_finetune.tasks.base import TaskModule

KEY = "model.distillation.teacher"


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

    Raises: ConfigError naming the teacher's key when it does not exist or is a model of another task.
    """
    task = auto_class.__name__.removeprefix("AutoModel")  # e.g. ForSequenceClassification
    if path.endswith(".ckpt") or Path(path).is_file():
        if not Path(path).is_file():
            raise ConfigError(f"{KEY}: checkpoint {path} does not exist")
        module = TaskModule.load_checkpoint(path)
        model, tokenizer, architecture = module.model, module.tokenizer, type(module.model).__name__
    else:
        source = backbones.resolve(path, KEY)
        # Checked before loading: an Auto class loads another task's weights under a fresh, untrained head.
        architecture = (AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code).architectures
                        or ["a model without a task head"])[0]
        model = backbones.load_model(source, auto_class, trust_remote_code) if architecture.endswith(task) else None
        tokenizer = backbones.load_tokenizer(source, trust_remote_code)
    if not architecture.endswith(task):
        raise ConfigError(f"{KEY}: {path} is {architecture}; the student needs a *{task} teacher "
                          "(fine-tuned on the same task)")
    return model, tokenizer


@dataclass
class DistillationSettings:
    """Knowledge distillation: the student learns from a fine-tuned teacher's softened predictions too.

    The training loss is ``alpha * task + (1 - alpha) * T^2 * KL(teacher/T || student/T) + hidden_weight *
    MSE(projected student hidden, teacher hidden)``; regression (one label) uses the MSE to the teacher's score in
    place of the KL. Validation and test losses stay the task loss, comparable with runs without a teacher.

    Args:
        teacher: A fine-tuned model of the same task, labels and vocabulary: an exported folder (a run's export/), a
            hub id or a lit_finetune .ckpt. Read in training only; never saved with the student.
        alpha: Weight of the task loss; the teacher's soft-label loss gets 1 - alpha.
        temperature: Softens both models' distributions before their KL (scaled back by T^2); for token
            classification the KL is averaged over the labelled tokens.
        hidden_weight: Weight of an MSE between the student's last hidden states, through a trained projection, and
            the teacher's (0 = off).
    """

    teacher: str
    alpha: Probability = 0.5
    temperature: PositiveFloat = 2.0
    hidden_weight: NonNegativeFloat = 0.0


class Distiller(nn.Module):
    """A task module's teacher and the projection of the hidden-state loss (the only trained part: it is in the
    student task module's checkpoints, not in its export).

    Raises: ConfigError, before training, naming ``model.distillation.teacher`` when the teacher is missing, of
    another task, or has other labels or another vocabulary than the student.
    """

    def __init__(self, settings: dict):
        super().__init__()
        self.settings = DistillationSettings(**settings)
        self.teacher: FrozenTeacher | None = None  # loaded when fitting only
        self.projection: nn.Linear | None = None
        # Without the teacher (export, predict, resume) the projection's size comes from its saved weights.
        self.register_load_state_dict_pre_hook(self.make_room_for_projection)

    @staticmethod
    def make_room_for_projection(module, state_dict, prefix, *args) -> None:
        weight = state_dict.get(f"{prefix}projection.weight")
        if weight is not None and module.projection is None:
            module.projection = nn.Linear(weight.shape[1], weight.shape[0])

    def attach(self, student) -> None:
        """Load and check the teacher of `student` (a built task module), and build the projection."""
        model, tokenizer = read_teacher(self.settings.teacher, student.auto_class, student.hparams.trust_remote_code)
        if tokenizer.get_vocab() != student.tokenizer.get_vocab():
            raise ConfigError(f"{KEY}: the teacher's tokenizer vocabulary ({len(tokenizer)} tokens) differs from the "
                              f"student's ({len(student.tokenizer)} tokens, from model.model_name_or_path / "
                              "model.tokenizer_name_or_path); the teacher reads the student's input ids, so they "
                              "must match")
        teacher_labels = {int(k): v for k, v in model.config.id2label.items()}
        if teacher_labels != student.labels:
            raise ConfigError(f"{KEY}: the teacher predicts labels {teacher_labels}, the student's data has "
                              f"{student.labels}; distillation needs the same labels in the same order")
        self.teacher = FrozenTeacher(model, list(tokenizer.model_input_names))
        if self.settings.hidden_weight and self.projection is None:
            self.projection = nn.Linear(student.model.config.hidden_size, model.config.hidden_size)


def student_outputs(module, batch: dict, split: str):
    """The student model's outputs (``.logits``), with hidden states when the hidden-state loss needs them."""
    distiller = module.distiller
    hidden = split == "train" and distiller is not None and distiller.teacher is not None \
        and distiller.projection is not None
    return module.model(**module.model_inputs(batch), output_hidden_states=hidden)


def blended_loss(module, task_loss: torch.Tensor, student, batch: dict, split: str,
                 positions: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss of `module`: `task_loss` blended with the teacher's terms, each logged
    (``train/task_loss``, ``train/distill_kl`` or ``train/distill_mse``, ``train/hidden_mse``); `task_loss` itself in
    evaluation or without a teacher. `positions` marks the tokens that count (token classification)."""
    distiller = module.distiller
    if split != "train" or distiller is None or distiller.teacher is None:
        return task_loss
    settings = distiller.settings
    weight = next(module.model.parameters())
    teacher = distiller.teacher(batch, like=weight, hidden_states=distiller.projection is not None)
    if module.num_labels == 1:  # a score has no distribution to soften: match it
        soft = F.mse_loss(student.logits.float(), teacher.logits.float())
        parts = {"train/distill_mse": soft}
    else:
        soft = soft_target_kl(student.logits, teacher.logits, settings.temperature, positions)
        parts = {"train/distill_kl": soft}
        soft = soft * settings.temperature ** 2  # keeps its gradients' scale as T changes (Hinton et al.)
    loss = settings.alpha * task_loss + (1 - settings.alpha) * soft
    if distiller.projection is not None:
        hidden = masked_mse(distiller.projection(student.hidden_states[-1]), teacher.hidden_states[-1],
                            batch["attention_mask"])
        parts["train/hidden_mse"] = hidden
        loss = loss + settings.hidden_weight * hidden
    module.log_dict({"train/task_loss": task_loss, **parts}, on_step=True, on_epoch=True,
                    batch_size=len(batch["input_ids"]))
    return loss
