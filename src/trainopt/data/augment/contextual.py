"""Contextual word replacement: words swapped for what a model thinks fits.

- `mlm`: a masked language model the user supplies (a local HF folder with an MLM head): the chosen words of a
  text are masked together and each is replaced by one of the model's top-k predictions for its position
  (whole words only, never the original word) — Kobayashi 2018 / TinyBERT's contextual augmentation.
- `embedding`: no MLM at hand (MiniLM ships without its MLM head): neighbours by cosine similarity in a model's
  own input-embedding space (TinyBERT used GloVe neighbours); not contextual, but it needs nothing beyond the
  model being fine-tuned.
Only words that the tokenizer keeps as one whole-word token are replaced, so a replacement is a real word.
"""

from __future__ import annotations

import random
import re

import torch

from .eda import STOP_WORDS, _core, _match_case

_ALPHA = re.compile(r"^[a-z]{3,}$")


class Replacer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()
        # Whole-word, lower-case alphabetic tokens: the candidates a replacement may be.
        self.word_ids = {w: i for w, i in vocab.items() if _ALPHA.match(w) and w not in STOP_WORDS}
        self.id_words = {i: w for w, i in self.word_ids.items()}

    def choose(self, tokens: list[str], rate: float, rng: random.Random) -> list[int]:
        idx = [i for i, t in enumerate(tokens) if (c := _core(t)) is not None and c[1].lower() in self.word_ids]
        rng.shuffle(idx)
        return sorted(idx[: max(1, round(rate * len(tokens)))]) if idx else []


class EmbeddingNeighbours(Replacer):
    """Nearest whole-word tokens in an input-embedding matrix (cosine), computed per word on demand."""

    def __init__(self, tokenizer, embeddings: torch.Tensor, top_k: int):
        super().__init__(tokenizer)
        ids = torch.tensor(sorted(self.id_words))
        self.candidate_ids = ids
        emb = embeddings.detach().float()[ids]
        self.normed = emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-8)
        self.index = {int(i): k for k, i in enumerate(ids)}
        self.top_k = top_k
        self.cache: dict[str, list[str]] = {}

    def neighbours(self, word: str) -> list[str]:
        w = word.lower()
        if w not in self.cache:
            row = self.normed[self.index[self.word_ids[w]]]
            sims = self.normed @ row
            best = sims.topk(self.top_k + 1).indices.tolist()
            self.cache[w] = [self.id_words[int(self.candidate_ids[b])] for b in best
                             if self.id_words[int(self.candidate_ids[b])] != w][: self.top_k]
        return self.cache[w]

    def augment(self, texts: list[str], rate: float, rngs: list[random.Random]) -> list[str]:
        out = []
        for text, rng in zip(texts, rngs):
            tokens = text.split()
            for i in self.choose(tokens, rate, rng):
                pre, word, post = _core(tokens[i])
                options = self.neighbours(word)
                if options:
                    tokens[i] = pre + _match_case(rng.choice(options), word) + post
            out.append(" ".join(tokens))
        return out


class MaskedLM(Replacer):
    """Replacements predicted by a masked language model, all chosen words of a text masked at once."""

    def __init__(self, tokenizer, model, top_k: int, batch_size: int = 32, device: str = "cpu"):
        super().__init__(tokenizer)
        if tokenizer.mask_token_id is None:
            from ...errors import RecipeError

            raise RecipeError("stages.contextual.model", "the tokenizer has no mask token", "give a masked-LM folder")
        self.model = model.eval().to(device)
        self.top_k, self.batch_size, self.device = top_k, batch_size, device
        self.allowed = torch.zeros(model.get_output_embeddings().weight.shape[0], dtype=torch.bool)
        self.allowed[list(self.id_words)] = True

    @torch.inference_mode()
    def augment(self, texts: list[str], rate: float, rngs: list[random.Random]) -> list[str]:
        jobs = []  # (tokens, chosen word positions, rng)
        for text, rng in zip(texts, rngs):
            tokens = text.split()
            jobs.append((tokens, self.choose(tokens, rate, rng), rng))
        out = []
        for start in range(0, len(jobs), self.batch_size):
            batch = jobs[start: start + self.batch_size]
            masked = []
            for tokens, chosen, _ in batch:
                words = list(tokens)
                for i in chosen:
                    pre, _, post = _core(words[i])
                    words[i] = pre + self.tokenizer.mask_token + post
                masked.append(" ".join(words))
            enc = self.tokenizer(masked, return_tensors="pt", padding=True, truncation=True, max_length=256)
            logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits.float().cpu()
            logits[..., ~self.allowed] = float("-inf")
            for row, (tokens, chosen, rng) in enumerate(batch):
                positions = (enc["input_ids"][row] == self.tokenizer.mask_token_id).nonzero().flatten().tolist()
                words = list(tokens)
                for i, pos in zip(chosen, positions):  # truncation may have cut the last masks: zip stops there
                    pre, word, post = _core(words[i])
                    top = [self.id_words[t] for t in logits[row, pos].topk(self.top_k + 1).indices.tolist()
                           if t in self.id_words and self.id_words[t] != word.lower()][: self.top_k]
                    if top:
                        words[i] = pre + _match_case(rng.choice(top), word) + post
                out.append(" ".join(words))
        return out


def make_replacer(spec, model_ref: str | None):
    """The replacer a `contextual:` block asks for; `model_ref` is the run's model when spec.model is unset."""
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    from ...hf import quiet_transformers
    from ...models import resolve_model_ref

    quiet_transformers()
    ref = spec.model or model_ref
    path = str(resolve_model_ref(ref))
    tokenizer = AutoTokenizer.from_pretrained(path)
    if spec.source == "mlm":
        return MaskedLM(tokenizer, AutoModelForMaskedLM.from_pretrained(path, dtype=torch.float32), spec.top_k)
    embeddings = AutoModel.from_pretrained(path, dtype=torch.float32).get_input_embeddings().weight
    return EmbeddingNeighbours(tokenizer, embeddings, spec.top_k)
