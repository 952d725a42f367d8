"""Task metrics. Classification: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix, loss.
Causal LM: mean token loss and perplexity (SFT: over the response tokens)."""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F

METRICS = {"classification": {"accuracy": "max", "f1_macro": "max", "loss": "min"},
           "causal_lm": {"loss": "min", "perplexity": "min"}}
DEFAULT_METRIC = {"classification": "accuracy", "causal_lm": "loss"}
IMBALANCED = 1.5  # the largest training class at least this many times the smallest: select by macro-F1


def default_metric(task: str, train_labels: list[int] | None = None) -> str:
    """What "best" means when a stage does not say (`metric:`): the validation loss for language models; for
    classification macro-F1 when the training classes are imbalanced (accuracy rewards predicting the majority),
    accuracy when they are balanced."""
    if task == "classification" and train_labels:
        counts = Counter(train_labels)
        if len(counts) > 1 and max(counts.values()) >= IMBALANCED * min(counts.values()):
            return "f1_macro"
    return DEFAULT_METRIC[task]


def lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy (position t predicts token t+1); labels of -100 (SFT prompts) count none."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                           reduction="sum")


def classification_loss_sum(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0):
    return F.cross_entropy(logits.float(), labels, reduction="sum", label_smoothing=label_smoothing)


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def model_inputs(batch: dict) -> dict:
    """The keys of a batch that the model takes (batches also carry labels and example indices). Packed SFT rows
    carry position ids that restart at each example: with no KV cache (use_cache=False), transformers builds the
    block-diagonal mask from them; a cache would make it ignore them and attend across examples."""
    inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
    if "position_ids" in inputs:
        inputs["use_cache"] = False
    return inputs


def forward_logits(model, batch: dict) -> torch.Tensor:
    return model(**model_inputs(batch)).logits


@torch.inference_mode()
def evaluate(model, split, task: str, batch_size: int, device: torch.device,
             autocast_dtype: torch.dtype | None = None) -> dict:
    was_training = model.training
    model.eval()
    total_loss, count = 0.0, 0
    preds, golds = [], []
    for idx in split.batches(batch_size, shuffle=False):
        batch = {k: v.to(device) for k, v in split.collate(idx).items()}
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = forward_logits(model, batch)
        if task == "classification":
            total_loss += classification_loss_sum(logits, batch["labels"]).item()
            count += batch["labels"].numel()
            preds.extend(logits.argmax(-1).tolist())
            golds.extend(batch["labels"].tolist())
        else:
            total_loss += lm_loss_sum(logits, batch["labels"]).item()
            count += int((batch["labels"][:, 1:] != -100).sum())  # SFT: the response tokens only
    model.train(was_training)
    loss = total_loss / max(count, 1)
    if task == "causal_lm":
        return {"accuracy": None, "f1_macro": None, "loss": round(loss, 5),
                "perplexity": round(math.exp(min(loss, 50.0)), 4), "tokens": count}
    return {**classification_metrics(preds, golds, getattr(model.config, "num_labels", max(golds) + 1)),
            "loss": round(loss, 5), "perplexity": None}


def classification_metrics(preds: list[int], golds: list[int], num_labels: int) -> dict:
    cm = [[0] * num_labels for _ in range(num_labels)]
    for p, g in zip(preds, golds):
        cm[g][p] += 1
    per_class, f1s = {}, []
    for c in range(num_labels):
        tp = cm[c][c]
        pred_c = sum(cm[g][c] for g in range(num_labels))
        gold_c = sum(cm[c])
        precision = tp / pred_c if pred_c else 0.0
        recall = tp / gold_c if gold_c else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                        "support": gold_c}
        f1s.append(f1)
    n = max(len(golds), 1)
    return {"accuracy": round(sum(cm[c][c] for c in range(num_labels)) / n, 4),
            "f1_macro": round(sum(f1s) / len(f1s), 4), "per_class": per_class, "confusion_matrix": cm,
            "examples": len(golds)}


def is_better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


@torch.inference_mode()
def generate_samples(model, tokenizer, prompts: list[dict], device: torch.device, new_tokens: int = 48) -> list[dict]:
    """Greedy answers to fixed held-out prompts (SFT data): [{question, reference, answer}], shown in the report so
    that a reader sees what the numbers mean. Stops at the end-of-turn / end-of-sequence token."""
    was_training = model.training
    model.eval()
    out = []
    for p in prompts:
        ids = tokenizer(p["prompt"], add_special_tokens=not p["chat"], return_tensors="pt")["input_ids"].to(device)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             do_sample=False, temperature=None, top_p=None, top_k=None,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        out.append({"question": p["question"], "reference": p["reference"],
                    "answer": tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip()})
    model.train(was_training)
    return out
