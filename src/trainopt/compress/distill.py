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

import copy
import time

import torch
import torch.nn.functional as F

from ..errors import RecipeError
from ..evaluate import model_inputs
from ..models import _auto_class, load_saved, resolve_model_ref
from ..recipe import DistillLossSpec, DistillStage, TrainStage
from ..stages import RunContext, register
from .blocks import find_blocks
from ..train.loop import train


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
        student = _auto_class(task).from_config(config)
        n_student = config.num_hidden_layers
        return student, default_layers(n_teacher, n_student)
    keep = spec.layers or default_layers(n_teacher, spec.num_layers or max(1, n_teacher // 2))
    if any(i < 0 or i >= n_teacher for i in keep) or sorted(set(keep)) != list(keep):
        raise RecipeError("stages.student.layers", f"{keep} are not increasing teacher layers in 0..{n_teacher - 1}",
                          "list distinct teacher layer indices in order")
    return drop_layers(teacher, keep), list(keep)


class Projections(torch.nn.Module):
    """Learned maps from student to teacher hidden width, one per mapped layer (identity when equal)."""

    def __init__(self, n: int, d_student: int, d_teacher: int):
        super().__init__()
        self.maps = torch.nn.ModuleList(
            [torch.nn.Linear(d_student, d_teacher) if d_student != d_teacher else torch.nn.Identity()
             for _ in range(n + 1)])  # + the embedding output


def _heads(model) -> list[int]:
    from .blocks import detect_structure

    structure = detect_structure(model) or {}
    return structure.get("heads") or [model.config.num_attention_heads] * model.config.num_hidden_layers


def _hidden_size(model) -> int:
    return getattr(model.config, "hidden_size", None) or model.config.n_embd


def make_loss(teacher, w: DistillLossSpec, task: str, layer_map: list[int], projections: Projections | None,
              cache: torch.Tensor | None):
    """loss_fn(student, batch, denom) for train(): the weighted distillation terms of `w`."""
    T = w.temperature
    need_hidden, need_attn = w.hidden > 0, w.attention > 0

    def loss_fn(student, batch: dict, denom: int) -> torch.Tensor:
        inputs = model_inputs(batch)
        s_out = student(**inputs, output_hidden_states=need_hidden, output_attentions=need_attn)
        s_logits = s_out.logits.float()
        if cache is not None:
            t_logits, t_out = cache[batch["index"].cpu()].to(s_logits.device), None
        else:
            with torch.no_grad():
                t_out = teacher(**inputs, output_hidden_states=need_hidden, output_attentions=need_attn)
            t_logits = t_out.logits.float()
        total = s_logits.new_zeros(())
        if task == "causal_lm":  # position t predicts token t+1
            s_pred, t_pred = s_logits[:, :-1], t_logits[:, :-1]
            mask = torch.ones(s_pred.shape[:2], device=s_pred.device)
        else:
            s_pred, t_pred = s_logits, t_logits
            mask = None
        if w.ce:
            labels = batch["labels"][:, 1:] if task == "causal_lm" else batch["labels"]
            total = total + w.ce * F.cross_entropy(s_pred.reshape(-1, s_pred.shape[-1]), labels.reshape(-1),
                                                   reduction="sum") / denom
        if w.kd:
            kl = F.kl_div(F.log_softmax(s_pred / T, -1), F.log_softmax(t_pred / T, -1), log_target=True,
                          reduction="none").sum(-1)
            total = total + w.kd * (T * T) * kl.sum() / denom
        items = batch["input_ids"].shape[0] if mask is None else mask.sum()
        share = items / denom  # this micro-batch's share of the accumulated batch
        if need_hidden:
            tok = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).unsqueeze(-1).float()
            pairs = [(0, 0)] + [(i + 1, t + 1) for i, t in enumerate(layer_map)]
            mse = 0.0
            for k, (si, ti) in enumerate(pairs):
                diff = projections.maps[k](s_out.hidden_states[si].float()) - t_out.hidden_states[ti].float()
                mse = mse + ((diff ** 2).mean(-1, keepdim=True) * tok).sum() / tok.sum()
            total = total + w.hidden * share * mse / len(pairs)
        if need_attn:
            kl_att = 0.0
            for si, ti in enumerate(layer_map):
                s_att = s_out.attentions[si].float().clamp_min(1e-9)
                t_att = t_out.attentions[ti].float().clamp_min(1e-9)
                rows = (t_att * (t_att.log() - s_att.log())).sum(-1)  # KL per (batch, head, query)
                kl_att = kl_att + rows.mean()
            total = total + w.attention * share * kl_att / len(layer_map)
        return total

    return loss_fn


@torch.inference_mode()
def teacher_logits(teacher, split, device, batch_size: int, autocast_dtype) -> torch.Tensor:
    """Teacher logits for every training example, in index order (classification)."""
    out = None
    for idx in split.batches(batch_size, shuffle=False):
        batch = {k: v.to(device) for k, v in split.collate(idx).items()}
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = teacher(**model_inputs(batch)).logits.float().cpu()
        if out is None:
            out = torch.zeros(len(split), logits.shape[-1])
        out[batch["index"].cpu()] = logits
    return out


@register("distill")
def distill_stage(model, data, stage: DistillStage, ctx: RunContext, stage_dir):
    from ..train.loop import AUTOCAST, resolve_precision

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
    if stage.loss.attention > 0 and any(_heads(student)[si] != _heads(teacher)[ti] for si, ti in enumerate(layer_map)):
        raise RecipeError("stages.loss.attention", "student and teacher attention heads differ (pruned heads?)",
                          "set loss.attention: 0")
    for p in student.parameters():
        p.requires_grad_(True)
    if stage.loss.attention > 0:
        student.set_attn_implementation("eager")
    projections = Projections(len(layer_map), _hidden_size(student), _hidden_size(teacher)) \
        if stage.loss.hidden > 0 else None
    settings = TrainStage(kind="train", name=stage.name, **stage.train.model_dump())
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
    return student, {
        "effect": "compressed", "claims": "shape", "training": summary,
        "distillation": {"student_layers": student.config.num_hidden_layers,
                         "teacher_layers": teacher.config.num_hidden_layers,
                         "init": init,
                         "layer_map": layer_map, "loss": stage.loss.model_dump(),
                         "teacher_logits_cached": cache is not None},
        "cost": {"wall_s": round(summary["train_wall_s"] + cache_s, 2), "tokens_per_s": summary["tokens_per_s"],
                 "mfu": summary["mfu"], "peak_mem_bytes": summary["peak_mem_bytes"]}}
