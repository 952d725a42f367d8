"""The distillation loss (kd, ce, hidden, attention terms, each normalised like the task loss) and the teacher's
cached logits. Shared with pruning's recovery (compress/prune/stage.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...evaluate import model_inputs
from ..blocks import detect_structure
from .spec import DistillLossSpec


class Projections(torch.nn.Module):
    """Learned maps from student to teacher hidden width, one per mapped layer (identity when equal)."""

    def __init__(self, n: int, d_student: int, d_teacher: int):
        super().__init__()
        self.maps = torch.nn.ModuleList(
            [torch.nn.Linear(d_student, d_teacher) if d_student != d_teacher else torch.nn.Identity()
             for _ in range(n + 1)])  # + the embedding output


def heads_per_layer(model) -> list[int]:
    structure = detect_structure(model) or {}
    return structure.get("heads") or [model.config.num_attention_heads] * model.config.num_hidden_layers


def hidden_size(model) -> int:
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
            mask = (batch["labels"][:, 1:] != -100).float()  # SFT data: the response tokens only
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
            if mask is not None:
                kl = kl * mask
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
