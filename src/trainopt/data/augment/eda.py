"""EDA (Wei & Zou 2019): synonym replacement, random insertion, random swap, random deletion.

Each operation touches n = max(1, round(rate · words)) words of a text (deletion: each word with probability
`rate`). Stop words are never replaced and never serve as insertion sources. Words keep their surrounding
punctuation and capitalisation; case and punctuation elsewhere are left as they are (EDA's reference code
lower-cases and strips them, which a cased tokenizer would notice). Everything is driven by one
`random.Random`, so a seed gives the same augmented set.
"""

from __future__ import annotations

import random
import re

# A compact English stop-word list (the usual function words); these are kept as they are.
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
once only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves
""".split())

_WORD = re.compile(r"^(\W*)([A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z])(\W*)$")
OPERATIONS = ("synonym", "insert", "swap", "delete")


def _core(token: str) -> tuple[str, str, str] | None:
    m = _WORD.match(token)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _candidates(tokens: list[str]) -> list[int]:
    out = []
    for i, t in enumerate(tokens):
        c = _core(t)
        if c is not None and c[1].lower() not in STOP_WORDS and len(c[1]) > 2:
            out.append(i)
    return out


def synonym_replacement(tokens: list[str], n: int, synonyms, rng: random.Random) -> list[str]:
    out = list(tokens)
    idx = _candidates(out)
    rng.shuffle(idx)
    done = 0
    for i in idx:
        pre, word, post = _core(out[i])
        syns = synonyms(word)
        if syns:
            out[i] = pre + _match_case(rng.choice(syns), word) + post
            done += 1
            if done >= n:
                break
    return out


def random_insertion(tokens: list[str], n: int, synonyms, rng: random.Random) -> list[str]:
    out = list(tokens)
    idx = _candidates(out)
    for _ in range(n):
        rng.shuffle(idx)
        for i in idx:
            syns = synonyms(_core(out[i])[1]) if i < len(out) and _core(out[i]) else []
            if syns:
                out.insert(rng.randrange(len(out) + 1), rng.choice(syns))
                break
    return out


def random_swap(tokens: list[str], n: int, rng: random.Random) -> list[str]:
    out = list(tokens)
    if len(out) < 2:
        return out
    for _ in range(n):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(tokens: list[str], p: float, rng: random.Random) -> list[str]:
    if len(tokens) <= 1:
        return list(tokens)
    out = [t for t in tokens if rng.random() >= p]
    return out or [rng.choice(tokens)]


def apply(op: str, text: str, rate: float, synonyms, rng: random.Random) -> str:
    tokens = text.split()
    n = max(1, round(rate * len(tokens)))
    if op == "synonym":
        tokens = synonym_replacement(tokens, n, synonyms, rng)
    elif op == "insert":
        tokens = random_insertion(tokens, n, synonyms, rng)
    elif op == "swap":
        tokens = random_swap(tokens, n, rng)
    elif op == "delete":
        tokens = random_deletion(tokens, rate, rng)
    else:
        raise ValueError(op)
    return " ".join(tokens)
