"""Batch inference with any stage's saved model: labels with probabilities, or generated text."""

from __future__ import annotations

from pathlib import Path

import torch

from . import measure
from .artifacts import load_saved
from .errors import TrainoptError


def _clean_like_training(texts: list[str], meta: dict) -> list[str]:
    """Apply the cleaning the model was trained with (HTML tags, whitespace), as saved in trainopt.json."""
    from collections import Counter

    from pydantic import ValidationError

    from .data.prepare import clean_text
    from .recipe import CleanSpec, DataSpec

    if "clean" not in meta:
        return texts
    try:
        spec = DataSpec(clean=CleanSpec(**meta["clean"]))
    except ValidationError as e:
        raise TrainoptError(f"trainopt.json's clean settings are damaged ({str(e).splitlines()[0][:100]}); restore "
                            "the folder or save it again") from None
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
    if not hasattr(model, "generate"):
        raise TrainoptError(f"{model_dir} is an ONNX export of a language model: it scores text (logits, no KV cache) "
                            "but does not generate; run `trainopt eval` on it, or predict with the folder it came from")
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


def command(args) -> int:
    """`trainopt predict`: texts from --text or --file, one result per line (or JSON lines)."""
    import json
    import sys

    if args.text:
        texts = args.text
    else:
        if args.file != "-" and not Path(args.file).is_file():
            raise TrainoptError(f"--file {args.file} does not exist")
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8", errors="replace")
        with stream:
            texts = [line.rstrip("\n") for line in stream if line.strip()]
    results = predict(args.model_dir, texts, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, device=args.device)
    for r in results:
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
        elif "label" in r:
            probs = ", ".join(f"{k} {v:.3f}" for k, v in r["probabilities"].items())
            print(f"{r['label']}\t[{probs}]\t{r['text'][:80]}")
        else:
            print(f"{r['prompt']}{r['generated']}")
    return 0
