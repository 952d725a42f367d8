"""Knowledge distillation: train a smaller student to imitate a teacher (any earlier stage's model).

Students are built by layer dropping — a copy of the teacher keeping chosen transformer blocks (DistilBERT:
every other layer) — or from a smaller config (fewer layers / narrower), freshly initialised.
The loss is a weighted sum, each term normalised like the task loss (per item, or per predicted token):
  kd        soft-target KL(teacher ‖ student) at temperature T, scaled by T²
  ce        hard-label cross-entropy (classification) / next-token cross-entropy (LM)
  hidden    MSE between mapped hidden states (a learned projection where the widths differ)
  attention KL between teacher and student attention distributions of mapped layers (same head count)
The teacher runs without gradients in eval mode; its logits are computed once and cached when only the kd/ce
terms are used and the training set does not change between epochs.
"""

from __future__ import annotations

import time

from ...artifacts import load_saved
from ...errors import RecipeError
from ...models import resolve_model_ref
from ...results import Outcome
from ...specbase import stage_key
from ...train.loop import train
from ...train.setup import AUTOCAST, resolve_precision
from ...train.spec import as_train_stage
from .losses import Projections, heads_per_layer, hidden_size, make_loss, teacher_logits
from .spec import DistillStage
from .student import build_student, default_layers


def run(model, data, stage: DistillStage, ctx, stage_dir):
    """Build the student from the stage's input model and train it against the teacher."""
    task, device = ctx.recipe.task, ctx.device
    if stage.teacher is not None:
        teacher, _, _ = load_saved(resolve_model_ref(stage.teacher), task)
    elif stage.teacher_stage is not None:
        teacher, _, _ = load_saved(ctx.run_dir / "stages" / stage.teacher_stage / "model", task)
    else:
        teacher = model  # the stage's input model (the previous stage's, or from_stage's)
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if stage.loss.attention > 0:  # SDPA kernels do not return attention probabilities
        teacher.set_attn_implementation("eager")
    # The student comes from the stage's input model (e.g. a pruned one), which may differ from the teacher.
    student, layer_map = build_student(model, stage, task, ctx.recipe.run.seed)
    init = "config" if stage.student.config else f"input-model layers {layer_map}"
    if model.config.num_hidden_layers != teacher.config.num_hidden_layers:
        layer_map = default_layers(teacher.config.num_hidden_layers, student.config.num_hidden_layers)
    heads_differ = any(heads_per_layer(student)[si] != heads_per_layer(teacher)[ti] for si, ti in enumerate(layer_map))
    if stage.loss.attention > 0 and heads_differ:  # a teacher folder; an earlier stage's is refused by checks.py
        raise RecipeError(stage_key(ctx.recipe.stage_index(stage.name), "loss.attention"),
                          "student and teacher attention heads differ (pruned heads?)", "set loss.attention: 0")
    for p in student.parameters():
        p.requires_grad_(True)
    if stage.loss.attention > 0:
        student.set_attn_implementation("eager")
    projections = Projections(len(layer_map), hidden_size(student), hidden_size(teacher)) \
        if stage.loss.hidden > 0 else None
    settings = as_train_stage(stage.train, stage.name)
    precision = resolve_precision(settings.precision, device)
    cache, cache_s = None, 0.0
    if stage.cache_teacher and task == "classification" and stage.loss.hidden == 0 and stage.loss.attention == 0 \
            and stage.loss.kd > 0:
        t0 = time.perf_counter()
        cache = teacher_logits(teacher, data.train, device, settings.eval_batch_size, AUTOCAST[precision])
        cache_s = time.perf_counter() - t0
    loss_fn = make_loss(teacher, stage.loss, task, layer_map, projections, cache)
    summary = train(student, data, settings, ctx, stage_dir, loss_fn=loss_fn, extra=projections)
    student.eval()
    if stage.loss.attention > 0:
        student.set_attn_implementation("sdpa")
    summary["teacher_cache_s"] = round(cache_s, 2)
    return student, Outcome.trained(summary, effect="compressed", extra_wall_s=cache_s, claims="shape", details={
        "distillation": {"student_layers": student.config.num_hidden_layers,
                         "teacher_layers": teacher.config.num_hidden_layers,
                         "init": init,
                         "layer_map": layer_map, "loss": stage.loss.model_dump(),
                         "teacher_logits_cached": cache is not None}})
