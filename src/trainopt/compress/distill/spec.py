"""Recipe schema of the `distill` stage (docs/methods/distill.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from ...specbase import BUILTIN_MODELS, NAME, Doc, StageBase, Strict
from ...train.spec import TrainSettings


class StudentSpec(Strict):
    """The student: teacher layers to keep (layer dropping), or a smaller config (fresh initialisation)."""

    layers: list[int] | None = None
    """blocks of the stage's input model the student keeps, in order (layer dropping; the student starts as a copy of
    them — with no `teacher`/`teacher_stage`, the input model is the teacher)"""
    num_layers: Annotated[int | None, Doc(default="half the teacher's")] = Field(None, ge=1)
    """keep this many evenly spaced teacher blocks, ending with the last (6 → 3 keeps 1, 3, 5)"""
    config: dict[str, Any] | None = None
    """instead: a smaller config (teacher config keys overridden, e.g. `num_hidden_layers`, `hidden_size`), freshly
    initialised"""

    @model_validator(mode="after")
    def _one_way(self):
        if self.config is not None and (self.layers is not None or self.num_layers is not None):
            raise ValueError("student.config (a smaller model) excludes student.layers / student.num_layers "
                             "(layer dropping)")
        if self.layers is not None and self.num_layers is not None and len(self.layers) != self.num_layers:
            raise ValueError("student.layers and student.num_layers disagree; set one of them")
        if self.layers is not None and not self.layers:
            raise ValueError("student.layers must list at least one teacher layer")
        return self


class DistillLossSpec(Strict):
    kd: float = Field(1.0, ge=0.0)
    """weight of the soft-target KL(teacher ‖ student) at `temperature`, scaled by T²"""
    temperature: float = Field(2.0, gt=0.0, le=100.0)
    """softmax temperature of the soft targets"""
    ce: float = Field(1.0, ge=0.0)
    """weight of the hard-label (or next-token) cross-entropy; `kd: 0, ce: 1` is the labels-only ablation"""
    hidden: float = Field(0.0, ge=0.0)
    """weight of the hidden-state MSE over the layer map (embeddings included; a learned projection where widths
    differ)"""
    attention: float = Field(0.0, ge=0.0)
    """weight of the attention-distribution KL over the layer map (same head count; runs eager attention)"""

    @model_validator(mode="after")
    def _some_term(self):
        if not (self.kd or self.ce or self.hidden or self.attention):
            raise ValueError("the distillation loss needs a positive weight (kd, ce, hidden or attention)")
        return self


class DistillStage(StageBase):
    """Train a smaller student to imitate a teacher. See [methods/distill.md](methods/distill.md)."""

    kind: Literal["distill"]
    name: str = Field("distill", pattern=NAME)
    """stage name"""
    teacher: str | None = None
    """a model folder; default: the stage's input model (the previous stage's, or `from_stage`'s)"""
    teacher_stage: str | None = None
    """instead: an earlier stage's model as the teacher (e.g. `finetune` when the input is a pruned model); exclusive
    with `teacher`"""
    student: StudentSpec = StudentSpec()
    loss: DistillLossSpec = DistillLossSpec()
    train: Annotated[TrainSettings, Doc(type="train settings", default="as a train stage", expand=False)] = \
        TrainSettings()
    """epochs, batch size, optimizer, schedule, precision, evaluation and checkpoints of the student's training"""
    cache_teacher: bool = True
    """compute the teacher's logits once (classification, kd/ce terms only) instead of every epoch"""


    def paths(self):
        return [("teacher", self.teacher, BUILTIN_MODELS)] if self.teacher else []

    def weaker(self, trial, info: dict) -> DistillStage:
        """A setting no weaker a student than this one, drawn by an Optuna trial (budget_search.py): as many or
        more teacher layers kept (up to all but one), and 1x, 1.5x or 2x the training epochs."""
        if self.student.config is not None or (self.student.layers is None and self.student.num_layers is None):
            raise ValueError("only a layer-dropped student (student.num_layers or student.layers) is searched")
        now = self.student.num_layers or len(self.student.layers)
        top = max(now, info["num_layers"] - 1)
        layers = trial.suggest_int("num_layers", now, top)
        times = trial.suggest_categorical("epochs_x", [1.0, 1.5, 2.0])
        train = self.train.model_copy(update={"epochs": self.train.epochs * times})
        return self.model_copy(update={"student": StudentSpec(num_layers=layers), "train": train})

    def trainings(self):
        return [("train", self.train)]
