"""Batch inference with any stage's saved model: labels with probabilities, or generated text."""

from __future__ import annotations

from pathlib import Path

import torch

from . import measure
from .artifacts import load_saved


def _clean_like_training(texts: list[str], meta: dict) -> list[str]:
    """Apply the cleaning the model was trained with (HTML tags, whitespace), as saved in trainopt.json."""
    from collections import Counter

    from .data.prepare import clean_text
    from .recipe import CleanSpec, DataSpec

    if "clean" not in meta:
        return texts
    spec = DataSpec(clean=CleanSpec(**meta["clean"]))
    return [clean_text(t, spec, "classification", Counter()) or t for t in texts]


@torch.inference_mode()
def predict(model_dir: str | Path, texts: list[str], batch_size: int = 32, max_new_tokens: int = 40,
            temperature: float = 0.0, device: str = "auto", seed: int = 0) -> list[dict]:
    """Classify texts (label + probability per label) or continue prompts (causal LM)."""
    dev = measure.pick_device(device)
    model, tokenizer, meta = load_saved(Path(model_dir))
    model.to(dev)
    out: list[dict] = []
    if meta["task"] == "classification":
        cleaned = _clean_like_training(texts, meta)
        labels = meta["labels"]
        max_length = meta.get("max_length", 512)
        for i in range(0, len(texts), batch_size):
            chunk = texts[i: i + batch_size]
            enc = tokenizer(cleaned[i: i + batch_size], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt")
            probs = model(**{k: v.to(dev) for k, v in enc.items()}).logits.float().softmax(-1).cpu()
            for text, p in zip(chunk, probs):
                out.append({"text": text, "label": labels[int(p.argmax())],
                            "probabilities": {labels[j]: round(float(p[j]), 5) for j in range(len(labels))}})
        return out
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"  # decoder-only generation pads on the left
    prompts, special = texts, True
    if meta.get("sft"):  # an instruction-tuned model: each text is a user turn, rendered as in training
        from .data.sft import prompt_text

        chat = meta["sft"]["template"] == "chat"
        system = [{"role": "system", "content": meta["sft"]["system"]}] if meta["sft"].get("system") else []
        prompts = [prompt_text(system + [{"role": "user", "content": t}, {"role": "assistant", "content": ""}],
                               tokenizer, chat) for t in texts]
        special = not chat
    for i in range(0, len(texts), batch_size):
        chunk = texts[i: i + batch_size]
        enc = tokenizer(prompts[i: i + batch_size], return_tensors="pt", padding=True,
                        add_special_tokens=special).to(dev)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                             temperature=temperature if temperature > 0 else None, top_p=None, top_k=None,
                             pad_token_id=tokenizer.pad_token_id)
        for text, row in zip(chunk, gen[:, enc["input_ids"].shape[1]:]):
            out.append({"prompt": text, "generated": tokenizer.decode(row, skip_special_tokens=True)})
    return out
