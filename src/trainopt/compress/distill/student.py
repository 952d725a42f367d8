"""The student: a copy of the teacher keeping chosen blocks (layer dropping), or a smaller config, freshly
initialised."""

from __future__ import annotations

import copy

import torch

from ...errors import RecipeError
from ...hf import auto_class
from ..blocks import find_blocks
from .spec import DistillStage


def default_layers(n_teacher: int, n_student: int) -> list[int]:
    """Evenly spaced teacher layers, ending with the last one (6 → 3 keeps 1, 3, 5)."""
    return [round((i + 1) * n_teacher / n_student) - 1 for i in range(n_student)]


def drop_layers(teacher: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    """A copy of the teacher with only the `keep` blocks, in order: the student starts from the teacher."""
    student = copy.deepcopy(teacher)
    parent, attr, blocks = find_blocks(student, "stages.student")
    setattr(parent, attr, torch.nn.ModuleList([blocks[i] for i in keep]))
    student.config.num_hidden_layers = len(keep)
    if isinstance(getattr(student.config, "layer_types", None), list):
        student.config.layer_types = [student.config.layer_types[i] for i in keep]
    for new_idx, block in enumerate(getattr(parent, attr)):  # decoder KV caches index layers by position
        for m in block.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new_idx
    return student


def build_student(teacher: torch.nn.Module, stage: DistillStage, task: str, seed: int):
    """(student, layer map student→teacher) from the stage's `student:` block."""
    spec = stage.student
    n_teacher = teacher.config.num_hidden_layers
    if spec.config:
        cfg = teacher.config.to_dict()
        cfg.update(spec.config)
        for key in ("_name_or_path", "architectures", "transformers_version"):
            cfg.pop(key, None)
        config = type(teacher.config).from_dict(cfg)
        torch.manual_seed(seed)
        student = auto_class(task).from_config(config)
        n_student = config.num_hidden_layers
        return student, default_layers(n_teacher, n_student)
    keep = spec.layers or default_layers(n_teacher, spec.num_layers or max(1, n_teacher // 2))
    if any(i < 0 or i >= n_teacher for i in keep) or sorted(set(keep)) != list(keep):
        raise RecipeError("stages.student.layers", f"{keep} are not increasing teacher layers in 0..{n_teacher - 1}",
                          "list distinct teacher layer indices in order")
    return drop_layers(teacher, keep), list(keep)
