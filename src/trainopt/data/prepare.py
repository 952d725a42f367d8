"""From a recipe's `data:` block to clean, split texts (TextData), then to token batches (DataBundle).

Two phases, because a model built from a config may first train its tokenizer on the training texts.
"""

from __future__ import annotations

import html
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .. import assets
from ..errors import DataError, RecipeError

from . import dedup, sft
from .batching import ClassificationSplit, LMSplit, SFTSplit
from .sources import RawData, read_source

BUILTIN_COLUMNS = {"builtin:fine_foods": ("review", "score"), "builtin:austen": ("text", None)}
_TAG = re.compile(r"<[^>]{0,200}>")
_WS = re.compile(r"\s+")
_PARA = re.compile(r"\n\s*\n")


@dataclass
class TextData:
    """Cleaned texts per split; labels as strings (classification) or None (language modelling)."""

    task: str
    train: list[str]
    validation: list[str] | None
    test: list[str] | None
    train_labels: list[str] | None = None
    validation_labels: list[str] | None = None
    test_labels: list[str] | None = None
    label_names: list[str] | None = None
    stats: dict = field(default_factory=dict)
    sft: bool = False  # train/validation/test hold conversations (lists of {role, content}, data/sft.py), not texts


@dataclass
class DataBundle:
    task: str
    train: ClassificationSplit | LMSplit | SFTSplit
    validation: ClassificationSplit | LMSplit | SFTSplit | None
    test: ClassificationSplit | LMSplit | SFTSplit | None
    label_names: list[str] | None
    stats: dict


# ------------------------------------------------------------------------------------------- reading
def read_raw(spec, task: str) -> RawData:
    def resolve(ref: str) -> Path:
        if ref == "builtin:fine_foods":
            return assets.asset_path("fine_foods")
        if ref == "builtin:austen":
            return assets.asset_path("austen")
        return Path(ref).expanduser()

    if spec.source == "builtin:definitions":
        from . import definitions

        splits, replaced = {"train": definitions.rows(assets.asset_path("wordnet"))}, 0
    else:
        splits, replaced = read_source(resolve(spec.source), spec.format, spec.encoding_errors)
    for _key, ref, name in (("data.validation_source", spec.validation_source, "validation"),
                           ("data.test_source", spec.test_source, "test")):
        if ref is not None:
            extra, bad = read_source(resolve(ref), spec.format if not Path(ref).is_dir() else "auto",
                                     spec.encoding_errors)
            splits[name] = [r for rows in extra.values() for r in rows]
            replaced += bad
    if spec.source == "builtin:austen" and "test" not in splits:
        held = [r for r in splits["train"] if r.get("document") == assets.AUSTEN_HELD_OUT]
        splits["train"] = [r for r in splits["train"] if r.get("document") != assets.AUSTEN_HELD_OUT]
        splits["test"] = held
    default_text, default_label = BUILTIN_COLUMNS.get(spec.source, ("text", "label"))
    if "train" not in splits:
        raise DataError(f"{spec.source} has no training split (found {sorted(splits)}); name a file train.*")
    return RawData(train=splits["train"], validation=splits.get("validation"), test=splits.get("test"),
                   text_column=spec.text_column or default_text,
                   label_column=(spec.label_column or default_label) if task == "classification" else None,
                   decode_replaced=replaced, description=spec.source)


def _column(rows: list[dict], col: str, key: str, split: str) -> list:
    if not rows:
        return []
    missing = [i for i, r in enumerate(rows) if col not in r]
    if missing:
        cols = sorted(rows[missing[0]].keys())
        raise RecipeError(key, f"column '{col}' is not in the {split} data (row {missing[0] + 1} has {cols})",
                          f"set {key} to one of {cols}")
    return [r[col] for r in rows]


def _label_text(v) -> str:
    """A label's class name: 1.0 (an integer column that pandas read as floats) is class "1", like 1."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def _not_empty(held: list, split: str, fraction: float, rows: int) -> None:
    """A split asked for by a fraction must hold rows: a 2-row file with test_fraction 0.2 gave 0 test rows, and a
    report with no test metrics."""
    if not held:
        raise RecipeError(f"data.{split}_fraction", f"{rows} rows are too few for a {split} split of {fraction:g} "
                          "(it would hold none)", f"give more data, or set data.{split}_fraction: 0")


def _one_label_type(labels: list, col: str, split: str) -> None:
    """Labels of one type: JSON's 1, 1.0, "1" and true would otherwise become distinct classes (or, spelled alike,
    merge by accident). Integers written as floats (1.0, as pandas reads an int column with gaps) count as ints."""
    def kind(v) -> str | None:
        if v is None or (isinstance(v, float) and v != v):
            return None
        if isinstance(v, bool):
            return "bool"
        if isinstance(v, (int, float)) or type(v).__module__ == "numpy":
            return "number"
        if isinstance(v, str):
            return "text"
        return type(v).__name__

    kinds: dict[str, object] = {}
    for v in labels:
        k = kind(v)
        if k is not None:
            kinds.setdefault(k, v)
    if len(kinds) > 1 or any(k not in ("bool", "number", "text") for k in kinds):
        shown = ", ".join(f"{k} {v!r}" for k, v in kinds.items())
        raise DataError(f"the label column '{col}' of the {split} data mixes kinds of values ({shown}); write every "
                        "label the same way (all numbers or all strings)")


# ------------------------------------------------------------------------------------------- cleaning
def clean_text(text, spec, task: str, counts: Counter) -> str:
    if text is None or (isinstance(text, float) and text != text):
        return ""
    text = str(text)
    if spec.clean.strip_html and ("<" in text or "&" in text):
        new = html.unescape(_TAG.sub(" ", text))
        counts["html_cleaned"] += new != text
        text = new
    if spec.clean.normalize_whitespace:
        if task == "causal_lm":  # keep paragraphs, unwrap hard-wrapped lines
            text = "\n\n".join(p for p in (_WS.sub(" ", q).strip() for q in _PARA.split(text)) if p)
        else:
            text = _WS.sub(" ", text).strip()
    return text


def _stratified_split(n: int, labels: list | None, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (keep, held_out): held_out takes `fraction` of each label (seeded)."""
    rng = random.Random(seed)
    groups: dict = {}
    for i in range(n):
        groups.setdefault(labels[i] if labels is not None else 0, []).append(i)
    held = []
    for key in sorted(groups, key=str):
        idx = groups[key]
        rng.shuffle(idx)
        k = round(len(idx) * fraction)
        held.extend(idx[:k])
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], sorted(held)


def load_texts(recipe) -> TextData:
    """Read, clean, label-map and split the recipe's data. Raises DataError/RecipeError with one line."""
    spec, task = recipe.data, recipe.task
    raw = read_raw(spec, task)
    if spec.sft is not None:
        return _sft_texts(raw, spec)
    if spec.source == "builtin:definitions":
        raise RecipeError("data.sft", "builtin:definitions holds prompt/response pairs for supervised fine-tuning",
                          "add `sft: {}` under data: (task: causal_lm)")
    counts: Counter = Counter()
    if raw.decode_replaced:
        counts["decode_replaced"] = raw.decode_replaced

    def texts_labels(rows, split):
        if rows is None:
            return None, None
        texts = _column(rows, raw.text_column, "data.text_column", split)
        labels = _column(rows, raw.label_column, "data.label_column", split) if raw.label_column else None
        bad = next((i for i, t in enumerate(texts) if isinstance(t, (list, dict, tuple))), None)
        if bad is not None:  # str() of a list would train on its Python spelling
            raise DataError(f"row {bad + 1} of the {split} data holds a {type(texts[bad]).__name__} in the text "
                            f"column '{raw.text_column}', not text; give one string per row")
        if labels is not None:
            _one_label_type(labels, raw.label_column, split)
        texts = [clean_text(t, spec, task, counts) for t in texts]
        keep = [i for i, t in enumerate(texts) if t]
        if labels is not None:
            keep = [i for i in keep if labels[i] is not None and str(labels[i]).strip() != ""
                    and not (isinstance(labels[i], float) and labels[i] != labels[i])]
        counts[f"empty_dropped_{split}"] += len(texts) - len(keep)
        texts = [texts[i] for i in keep]
        labels = [_label_text(labels[i]) for i in keep] if labels is not None else None
        return texts, labels

    train, train_y = texts_labels(raw.train, "train")
    val, val_y = texts_labels(raw.validation, "validation")
    test, test_y = texts_labels(raw.test, "test")
    rows_read = {"train": len(raw.train), "validation": len(raw.validation or []), "test": len(raw.test or [])}

    if spec.clean.dedup:
        train, train_y = dedup.drop_repeats(train, train_y, counts)

    if not train:
        raise DataError(f"no training texts left in {spec.source} after cleaning (empty file or empty texts)")

    label_names = None
    if task == "classification" and train_y is None:
        raise RecipeError("data.label_column", f"{spec.source} has no label column (it holds text only), and a "
                          "classification recipe needs labels", "name its label column in data.label_column, or "
                          "set task: causal_lm to train a language model on the text")
    if task == "classification":
        label_names = spec.labels or sorted(set(train_y))
        if len(set(train_y)) < 2:
            raise DataError(f"the label column '{raw.label_column}' has a single class ({train_y[0]!r}) in the "
                            "training data; classification needs at least two")
        unknown_train = sorted(set(train_y) - set(label_names))
        if unknown_train:
            raise RecipeError("data.labels", f"training labels {unknown_train[:5]} are not in data.labels",
                              "add them to data.labels or remove data.labels")

    # Splits: the source's own where it has them, a stratified seeded split otherwise.
    if test is None and spec.test_fraction > 0 and task == "classification":
        keep, held = _stratified_split(len(train), train_y, spec.test_fraction, spec.split_seed)
        test, test_y = [train[i] for i in held], [train_y[i] for i in held]
        train, train_y = [train[i] for i in keep], [train_y[i] for i in keep]
        counts["test_split_from_train"] = len(held)
        _not_empty(held, "test", spec.test_fraction, len(train) + len(held))
    if val is None and spec.validation_fraction > 0 and task == "classification":
        keep, held = _stratified_split(len(train), train_y, spec.validation_fraction, spec.split_seed + 1)
        val, val_y = [train[i] for i in held], [train_y[i] for i in held]
        train, train_y = [train[i] for i in keep], [train_y[i] for i in keep]
        counts["validation_split_from_train"] = len(held)
        _not_empty(held, "validation", spec.validation_fraction, len(train) + len(held))

    if task == "classification":
        for name, texts, ys in (("validation", val, val_y), ("test", test, test_y)):
            if ys is None:
                continue
            unseen = sorted(set(ys) - set(label_names))
            if unseen and spec.unseen_labels == "error":
                n = sum(y in unseen for y in ys)
                raise DataError(f"{n} {name} rows have labels never seen in training: {unseen[:5]}; "
                                "fix the data or set data.unseen_labels: drop")
            if unseen:
                keep = [i for i, y in enumerate(ys) if y in set(label_names)]
                counts[f"unseen_label_dropped_{name}"] = len(ys) - len(keep)
                if name == "validation":
                    val, val_y = [texts[i] for i in keep], [ys[i] for i in keep]
                else:
                    test, test_y = [texts[i] for i in keep], [ys[i] for i in keep]

    resolved = dedup.resolve_overlap(spec.clean.overlap, {"train": (train, train_y), "validation": (val, val_y),
                                                          "test": (test, test_y)}, counts)
    (train, train_y), (val, val_y), (test, test_y) = resolved["train"], resolved["validation"], resolved["test"]
    if not train:
        raise DataError(f"no training texts left in {spec.source}: every one also sits in a held-out split "
                        "(data.clean.overlap: drop_train); use drop_test or keep")

    def cap(texts, ys, n, seed):
        if n is None or texts is None or len(texts) <= n:
            return texts, ys
        idx = sorted(random.Random(seed).sample(range(len(texts)), n))
        return [texts[i] for i in idx], ([ys[i] for i in idx] if ys is not None else None)

    if task == "classification":
        train, train_y = cap(train, train_y, spec.max_train_examples, spec.split_seed + 2)
        val, val_y = cap(val, val_y, spec.max_validation_examples, spec.split_seed + 3)
        test, test_y = cap(test, test_y, spec.max_test_examples, spec.split_seed + 4)

    stats = {
        "source": raw.description, "text_column": raw.text_column, "label_column": raw.label_column,
        "rows_read": rows_read, "cleaning": {k: int(v) for k, v in sorted(counts.items()) if v},
        "rows": {"train": len(train), "validation": len(val or []), "test": len(test or [])},
    }
    if task == "classification":
        stats["labels"] = label_names
        stats["label_counts"] = {s: dict(sorted(Counter(y).items())) for s, y in
                                 (("train", train_y), ("validation", val_y), ("test", test_y)) if y}
    return TextData(task=task, train=train, validation=val, test=test, train_labels=train_y,
                    validation_labels=val_y, test_labels=test_y, label_names=label_names, stats=stats)


def _sft_texts(raw: RawData, spec) -> TextData:
    """SFT data: conversations per split (data/sft.py); the source's own splits, else seeded group-aware ones;
    repeated conversations and training conversations that also sit in a held-out split dropped (data.clean.dedup)."""
    counts: Counter = Counter()
    if raw.decode_replaced:
        counts["decode_replaced"] = raw.decode_replaced
    group_col = spec.sft.group_column or ("synset" if spec.source == "builtin:definitions" else None)
    rows = {"train": raw.train, "validation": raw.validation, "test": raw.test}
    rows_read = {k: len(v or []) for k, v in rows.items()}
    for name, fraction, seed in (("test", spec.test_fraction, spec.split_seed),
                                 ("validation", spec.validation_fraction, spec.split_seed + 1)):
        if rows[name] is None and fraction > 0:
            train = rows["train"]
            groups = _column(train, group_col, "data.sft.group_column", "train") if group_col else None
            keep, held = sft.split_groups(len(train), groups, fraction, seed)
            _not_empty(held, name, fraction, len(train))
            rows[name], rows["train"] = [train[i] for i in held], [train[i] for i in keep]
            counts[f"{name}_split_from_train"] = len(held)
    convs = {}
    for name, rs in rows.items():
        if rs is not None:
            convs[name] = sft.conversations(rs, spec, name)
            counts[f"no_response_dropped_{name}"] = len(rs) - len(convs[name])
    sft.check_texts(convs["train"], "train")
    if spec.clean.dedup:
        key = lambda c: tuple((m["role"], m["content"]) for m in c)  # noqa: E731
        held_out = {key(c) for name in ("validation", "test") for c in convs.get(name) or []}
        seen, kept = set(), []
        for c in convs["train"]:
            k = key(c)
            if k in held_out:
                counts["eval_overlap_dropped"] += 1
            elif k in seen:
                counts["duplicates_dropped"] += 1
            else:
                seen.add(k)
                kept.append(c)
        convs["train"] = kept
    for name, n, seed in (("train", spec.max_train_examples, 2), ("validation", spec.max_validation_examples, 3),
                          ("test", spec.max_test_examples, 4)):
        if n is not None and convs.get(name) and len(convs[name]) > n:
            idx = sorted(random.Random(spec.split_seed + seed).sample(range(len(convs[name])), n))
            convs[name] = [convs[name][i] for i in idx]
    stats = {"source": raw.description, "sft": spec.sft.model_dump(), "group_column": group_col,
             "rows_read": rows_read, "cleaning": {k: int(v) for k, v in sorted(counts.items()) if v},
             "rows": {k: len(convs.get(k) or []) for k in ("train", "validation", "test")}}
    return TextData(task="causal_lm", train=convs["train"], validation=convs.get("validation"),
                    test=convs.get("test"), stats=stats, sft=True)


def _tokenize_sft(texts: TextData, tokenizer, spec, stats: dict) -> DataBundle:
    chat = sft.uses_chat_template(tokenizer, spec.sft.template)
    counts: Counter = Counter()
    splits = {}
    for name, convs in (("train", texts.train), ("validation", texts.validation), ("test", texts.test)):
        if not convs:
            splits[name] = None
            continue
        c: Counter = Counter()
        rows = sft.pack(sft.encode(convs, tokenizer, chat, spec.sft.loss_on), spec.block_size, spec.sft.packing, c,
                        spec.split_seed + 5)
        for k, v in c.items():
            counts[f"{k}_{name}"] += v
        splits[name] = SFTSplit(rows, spec.block_size, _pad_id(tokenizer), spec.sft.packing) if rows else None
    if splits["train"] is None:
        raise DataError("no training example is left after tokenizing (each was cut to data.block_size with no "
                        "response token left); raise data.block_size")
    present = {n: s for n, s in splits.items() if s is not None}
    stats["template"] = "chat" if chat else "plain"
    stats["tokens"] = {n: s.n_tokens for n, s in present.items()}
    stats["target_tokens"] = {n: s.n_targets for n, s in present.items()}
    stats["examples"] = {n: s.examples for n, s in present.items()}
    stats["rows_packed" if spec.sft.packing else "rows_padded"] = {n: len(s) for n, s in present.items()}
    stats["row_fill"] = {n: round(s.n_tokens / (len(s) * spec.block_size), 4) for n, s in present.items()}
    stats["truncated"] = {k: v for k, v in sorted(counts.items()) if v}
    return DataBundle("causal_lm", splits["train"], splits["validation"], splits["test"], None, stats)


# ----------------------------------------------------------------------------------------- tokenizing
def tokenize(texts: TextData, tokenizer, recipe) -> DataBundle:
    spec = recipe.data
    stats = dict(texts.stats)
    if texts.sft:
        return _tokenize_sft(texts, tokenizer, spec, stats)
    if not getattr(tokenizer, "is_fast", False):
        stats["warning"] = "the tokenizer is not a fast (Rust) tokenizer; tokenization is slower"
    if texts.task == "classification":
        label_to_id = {name: i for i, name in enumerate(texts.label_names)}

        def enc(xs, ys):
            if xs is None or not xs:
                return None
            ids = tokenizer(xs, truncation=True, max_length=spec.max_length)["input_ids"]
            truncated = sum(len(f) > spec.max_length for f in tokenizer(xs, truncation=False)["input_ids"])
            split = ClassificationSplit(ids, [label_to_id[y] for y in ys], pad_id=_pad_id(tokenizer),
                                        pad_multiple=spec.pad_to_multiple_of, max_width=spec.max_length)
            split.truncated = truncated
            return split

        train = enc(texts.train, texts.train_labels)
        val = enc(texts.validation, texts.validation_labels)
        test = enc(texts.test, texts.test_labels)
        stats["tokens"] = {n: s.n_tokens for n, s in (("train", train), ("validation", val), ("test", test)) if s}
        stats["truncated"] = {n: s.truncated for n, s in (("train", train), ("validation", val), ("test", test))
                              if s}
        return DataBundle("classification", train, val, test, texts.label_names, stats)

    # Causal LM: concatenate documents (EOS between them) and pack into fixed blocks.
    eos = tokenizer.eos_token_id
    bs = spec.block_size

    def stream(docs):
        out: list[int] = []
        for doc in docs or []:
            out.extend(tokenizer(doc, truncation=False)["input_ids"])
            if eos is not None:
                out.append(eos)
        return out

    train_ids = stream(texts.train)
    val_ids = stream(texts.validation) if texts.validation else None
    test_ids = stream(texts.test) if texts.test else None
    # Held-out text where the source has none: contiguous tails of the training stream.
    if test_ids is None and spec.test_fraction > 0:
        k = int(len(train_ids) * spec.test_fraction)
        train_ids, test_ids = train_ids[:-k] if k else train_ids, train_ids[-k:] if k else None
    if val_ids is None and spec.validation_fraction > 0:
        k = int(len(train_ids) * spec.validation_fraction)
        train_ids, val_ids = train_ids[:-k] if k else train_ids, train_ids[-k:] if k else None
    train = LMSplit.from_stream(train_ids, bs, spec.max_train_examples)
    val = LMSplit.from_stream(val_ids, bs, spec.max_validation_examples) if val_ids else None
    test = LMSplit.from_stream(test_ids, bs, spec.max_test_examples) if test_ids else None
    if train is None or len(train) == 0:
        raise DataError(f"the training text has {len(train_ids)} tokens, fewer than one block of "
                        f"data.block_size={bs}; lower data.block_size or give more text")
    stats["tokens"] = {n: s.n_tokens for n, s in (("train", train), ("validation", val), ("test", test)) if s}
    stats["blocks"] = {n: len(s) for n, s in (("train", train), ("validation", val), ("test", test)) if s}
    return DataBundle("causal_lm", train, val, test, None, stats)


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
