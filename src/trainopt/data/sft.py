"""Supervised fine-tuning data: prompt/response pairs or chat conversations → token rows whose labels cover only the
responses, packed several examples to a row without attention across them.

Reading: each row is a conversation — `data.sft.messages_column` (a list of {role, content}) or one turn made from
`prompt_column` / `response_column` (with `data.sft.system` put first when set). Rendering: the tokenizer's chat
template when it has one (`template: auto | chat`), else the plain template below (`template: plain`, or auto with
no chat template). Masking: the characters of every assistant message as the template renders it (its content and
the end-of-turn marker the template puts after it) are the response; a token is trained on when any of its characters
lies in a response (`loss_on: response`: a byte-level BPE token " tea" that joins the space before an answer to its
first word is part of the answer), or every token is (`loss_on: all`). The token that starts an example
is never a target (in a packed row it would be predicted from the previous example).

Packing (`packing: true`): examples are laid one after another into rows of `data.block_size` tokens; positions
restart at 0 at each example and no attention mask is passed, from which transformers' mask builder makes a
block-diagonal causal mask (sdpa, eager, flex; flash_attention_2 reads the positions as sequence boundaries): a token
never attends to another example. tests/data/test_sft.py checks that packed logits equal the examples run one by
one. `packing: false`: one example per row, padded per batch, batches grouped by length (`data.bucket`).
"""

from __future__ import annotations

import random
from collections import Counter

from ..errors import DataError, RecipeError

# The documented fallback for tokenizers without a chat template: one line per turn, `Role: content`, the assistant's
# turns ending with the end-of-sequence token (so that a fine-tuned model learns to stop).
PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


def conversations(rows: list[dict], spec, split: str) -> list[list[dict]]:
    """The split's rows as conversations (lists of {role, content}), checked: every conversation has an assistant
    turn, every content is text."""
    sft = spec.sft
    out = []
    for i, row in enumerate(rows):
        where = f"row {i + 1} of the {split} data"
        if sft.messages_column is not None:
            if sft.messages_column not in row:
                raise RecipeError("data.sft.messages_column", f"column '{sft.messages_column}' is not in the {split} "
                                  f"data (row {i + 1} has {sorted(row)})", f"set it to one of {sorted(row)}")
            msgs = row[sft.messages_column]
            if hasattr(msgs, "tolist"):  # parquet / datasets give arrays of dicts
                msgs = msgs.tolist()
            if not isinstance(msgs, (list, tuple)) or not all(isinstance(m, dict) for m in msgs):
                raise DataError(f"{where}: '{sft.messages_column}' must be a list of {{role, content}} messages")
            msgs = [{"role": str(m.get("role", "")).strip(), "content": m.get("content")} for m in msgs]
        else:
            for key, col in (("prompt_column", sft.prompt_column), ("response_column", sft.response_column)):
                if col not in row:
                    raise RecipeError(f"data.sft.{key}", f"column '{col}' is not in the {split} data (row {i + 1} "
                                      f"has {sorted(row)})", f"set data.sft.{key} to one of {sorted(row)}, or name "
                                      "a messages column in data.sft.messages_column")
            msgs = ([{"role": "system", "content": sft.system}] if sft.system else []) + \
                [{"role": "user", "content": row[sft.prompt_column]},
                 {"role": "assistant", "content": row[sft.response_column]}]
        for m in msgs:
            if m["role"] not in PLAIN_ROLES:
                raise DataError(f"{where}: message role {m['role']!r} is not one of {sorted(PLAIN_ROLES)}")
            if not isinstance(m["content"], str):
                raise DataError(f"{where}: a {m['role']} message holds {type(m['content']).__name__}, not text")
            m["content"] = m["content"].encode("utf-8", "replace").decode("utf-8").strip()
        if not any(m["role"] == "assistant" and m["content"] for m in msgs):
            continue  # nothing to learn from: counted as dropped by the caller
        out.append(msgs)
    return out


def split_groups(n: int, groups: list | None, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(keep, held): about `fraction` of the rows held out, whole groups at a time (rows sharing a group value
    never straddle the split), seeded."""
    keys = groups if groups is not None else list(range(n))
    order = sorted(set(keys), key=str)
    random.Random(seed).shuffle(order)
    members: dict = {}
    for i, k in enumerate(keys):
        members.setdefault(k, []).append(i)
    held, target = [], round(n * fraction)
    for k in order:
        if len(held) >= target:
            break
        held.extend(members[k])
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], sorted(held)


def uses_chat_template(tokenizer, template: str) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has:
        raise RecipeError("data.sft.template", "the tokenizer has no chat template",
                          "set data.sft.template: plain (or auto), or use a tokenizer with a chat template")
    return has and template != "plain"


def render(msgs: list[dict], tokenizer, chat: bool) -> tuple[str, list[tuple[int, int]]]:
    """The conversation's text and the character spans of its assistant turns (what the model is trained to say)."""
    if chat:
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        spans = []
        for j, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            before = tokenizer.apply_chat_template(msgs[:j], tokenize=False, add_generation_prompt=True) if j else ""
            through = text if j == len(msgs) - 1 else tokenizer.apply_chat_template(msgs[: j + 1], tokenize=False)
            if not (through.startswith(before) and text.startswith(through)):
                raise DataError("the tokenizer's chat template does not render the start of a conversation as the "
                                "start of the whole (the response masks need that); set data.sft.template: plain")
            spans.append((len(before), len(through)))
        return text, spans
    eos = tokenizer.eos_token or ""
    text, spans = "", []
    for m in msgs:
        text += f"{PLAIN_ROLES[m['role']]}: "
        if m["role"] == "assistant":
            start = len(text)
            text += m["content"] + eos
            spans.append((start, len(text)))
            text += "\n"
        else:
            text += m["content"] + "\n"
    return text, spans


def prompt_text(msgs: list[dict], tokenizer, chat: bool) -> str:
    """What a model is given to answer the conversation's last assistant turn (generation samples, predict)."""
    last = max(j for j, m in enumerate(msgs) if m["role"] == "assistant")
    if chat:
        return tokenizer.apply_chat_template(msgs[:last], tokenize=False, add_generation_prompt=True)
    text, _ = render(msgs[:last], tokenizer, chat=False)
    return text + f"{PLAIN_ROLES['assistant']}: "


def encode(convs: list[list[dict]], tokenizer, chat: bool, loss_on: str) -> list[tuple[list[int], list[int]]]:
    """Each conversation as (token ids, labels): labels are the ids where trained on, -100 elsewhere."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("SFT data needs a fast (Rust) tokenizer: the response masks come from its character offsets")
    rendered = [render(c, tokenizer, chat) for c in convs]
    enc = tokenizer([t for t, _ in rendered], add_special_tokens=not chat, return_offsets_mapping=True,
                    truncation=False)
    out = []
    for (_, spans), ids, offsets in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
        if loss_on == "all":
            labels = list(ids)
        else:
            labels = [t if any(a < e and b > s for s, e in spans) else -100 for t, (a, b) in zip(ids, offsets)]
        if labels:
            labels[0] = -100
        out.append((list(ids), labels))
    return out


def pack(examples: list[tuple[list[int], list[int]]], width: int, packing: bool, counts: Counter,
         seed: int) -> list[list[tuple[list[int], list[int]]]]:
    """Rows of examples: examples longer than `width` cut to it (counted; one left with nothing to learn dropped);
    packed greedily in a seeded order, or one per row."""
    kept = []
    for ids, labels in examples:
        if len(ids) > width:
            counts["truncated"] += 1
            ids, labels = ids[:width], labels[:width]
        if all(x == -100 for x in labels):
            counts["no_target_left_dropped"] += 1
            continue
        kept.append((ids, labels))
    if not packing:
        return [[e] for e in kept]
    order = list(range(len(kept)))
    random.Random(seed).shuffle(order)
    rows, row, used = [], [], 0
    for i in order:
        n = len(kept[i][0])
        if row and used + n > width:
            rows.append(row)
            row, used = [], 0
        row.append(kept[i])
        used += n
    if row:
        rows.append(row)
    return rows


def check_texts(convs: list[list[dict]], split: str) -> None:
    if not convs:
        raise DataError(f"the {split} data has no conversation with an assistant response")


def sample_prompts(convs: list[list[dict]], tokenizer, template: str, n: int = 3) -> list[dict]:
    """The first `n` held-out conversations as generation prompts (the same ones for every stage of a run)."""
    chat = uses_chat_template(tokenizer, template)
    out = []
    for c in convs[:n]:
        last = max(j for j, m in enumerate(c) if m["role"] == "assistant")
        question = next((m["content"] for m in reversed(c[:last]) if m["role"] == "user"), "")
        out.append({"prompt": prompt_text(c, tokenizer, chat), "chat": chat, "question": question,
                    "reference": c[last]["content"]})
    return out
