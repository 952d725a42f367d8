"""The classical baseline row of every report: what a model that trains in seconds reaches on the same split.

- classification: TF-IDF over word 1-2-grams and character 2-5-grams (within word boundaries) + logistic regression,
  scikit-learn's. Its inverse regularisation strength C and whether the classes are weighted by their inverse
  frequency are chosen on the validation split by macro-F1 (on the training split's last 10% when the recipe has
  none); the chosen model is refit on the training split only. Test accuracy and macro-F1 come from the same metric
  code as every stage's (evaluate.classification_metrics); latency is timed on raw test texts at the report's batch
  sizes (vectorising included, the transformer's timing starts at token ids); size is the pickled pipeline.
- causal_lm: an interpolated bigram/unigram model over the run's own token ids (add-one unigram, the bigram weight
  chosen on the validation blocks): its test perplexity on the same blocks, per next token, as the stages'.

Each stage's report entry then says whether it beats this row (`vs_classical`). Not a stage: nothing is saved but the
figures (a pickle is not an artifact trainopt hands out)."""

from __future__ import annotations

import math
import pickle
import random
import statistics
import time
from collections import Counter

from .evaluate import classification_metrics

C_GRID = (0.5, 2.0, 8.0, 32.0)
MAX_ROWS = 50_000  # the classical fit reads at most this many training rows (8 fits of a sparse logistic regression)
MAX_TOKENS = 2_000_000  # the bigram counts read at most this many training tokens (pure Python: ~1 s per million)
NAME = {"classification": "tf-idf + logistic regression", "causal_lm": "bigram (interpolated, add-one)"}


def classical_baseline(texts, data, recipe) -> dict | None:
    """The baseline's report entry, or None where the task has none (supervised fine-tuning conversations)."""
    if texts.sft:
        return None
    t0 = time.perf_counter()
    if recipe.task == "classification":
        entry = _tfidf_logreg(texts, recipe)
    else:
        entry = _bigram(data)
    if entry is not None:
        entry["cost"] = {"wall_s": round(time.perf_counter() - t0, 2)}
    return entry


# ------------------------------------------------------------------------------------------------ classification
def _features():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_union

    return make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                      TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2))


def _classifier(c: float, class_weight: str | None):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000, class_weight=class_weight)


def _tfidf_logreg(texts, recipe) -> dict | None:
    from sklearn.pipeline import make_pipeline

    names = texts.label_names
    index = {n: i for i, n in enumerate(names)}
    train_x, train_y = texts.train, [index[y] for y in texts.train_labels]
    if len(train_x) > MAX_ROWS:  # a baseline, not a second training run: a seeded sample of a large split
        keep = sorted(random.Random(recipe.run.seed).sample(range(len(train_x)), MAX_ROWS))
        train_x, train_y = [train_x[i] for i in keep], [train_y[i] for i in keep]
    if texts.validation:
        fit_x, fit_y = train_x, train_y
        val_x, val_y = texts.validation, [index[y] for y in texts.validation_labels]
    else:  # no validation split: choose on the training split's last tenth
        cut = max(1, len(train_x) * 9 // 10)
        fit_x, fit_y, val_x, val_y = train_x[:cut], train_y[:cut], train_x[cut:], train_y[cut:]
    if len(set(fit_y)) < 2 or not val_x:
        return None
    t_fit = time.perf_counter()
    features = _features()
    fit_m, val_m = features.fit_transform(fit_x), None
    val_m = features.transform(val_x)
    tried, fitted = [], {}
    for class_weight in (None, "balanced"):  # the features do not depend on these: vectorised once
        for c in C_GRID:
            clf = fitted[(c, class_weight)] = _classifier(c, class_weight).fit(fit_m, fit_y)
            f1 = classification_metrics(list(clf.predict(val_m)), val_y, len(names))["f1_macro"]
            tried.append({"C": c, "class_weight": class_weight, "validation_f1_macro": f1})
    best = max(tried, key=lambda t: t["validation_f1_macro"])
    if texts.validation:
        model = make_pipeline(features, fitted[(best["C"], best["class_weight"])])
    else:  # chosen on a held-back tenth: refit on the whole training split
        model = make_pipeline(_features(), _classifier(best["C"], best["class_weight"])).fit(train_x, train_y)
    fit_s = time.perf_counter() - t_fit
    quality: dict = {"accuracy": None, "f1_macro": None, "loss": None, "perplexity": None}
    if texts.test:
        golds = [index[y] for y in texts.test_labels]
        m = classification_metrics(list(model.predict(texts.test)), golds, len(names))
        quality.update(accuracy=m["accuracy"], f1_macro=m["f1_macro"])
    clf = model.steps[-1][1]
    vocab = sum(len(v.vocabulary_) for _, v in model.steps[0][1].transformer_list)
    speed = _time_predict(model, texts.test or texts.validation or texts.train, recipe.measure) \
        if recipe.measure.latency else {}
    return {"name": NAME["classification"], "kind": "classical", "quality": quality,
            "size": {"params": int(clf.coef_.size + clf.intercept_.size),
                     "nonzero_params": int((clf.coef_ != 0).sum() + (clf.intercept_ != 0).sum()),
                     "disk_bytes": len(pickle.dumps(model)), "features": vocab},
            "speed": speed, "fit_s": round(fit_s, 2),
            "settings": {"features": "tf-idf word 1-2-grams + char_wb 2-5-grams (sublinear tf)",
                         "chosen_on": "validation macro-F1" if texts.validation else "last 10% of train, macro-F1",
                         "training_rows": len(train_x),
                         **best, "tried": tried}}


def _time_predict(model, pool: list[str], m) -> dict:
    """p50 latency of predict() on raw texts per batch size, after warm-up; the same repeats/time cap as the stages."""
    out = {}
    for b in m.batch_sizes:
        batch = (pool * (b // max(1, len(pool)) + 1))[:b]
        for _ in range(m.warmup):
            model.predict(batch)
        times, start = [], time.perf_counter()
        while len(times) < m.repeats and (time.perf_counter() - start < m.max_seconds or len(times) < 3):
            t = time.perf_counter()
            model.predict(batch)
            times.append((time.perf_counter() - t) * 1000)
        out[f"latency_ms_b{b}_p50"] = round(statistics.median(times), 3)
        out[f"latency_repeats_b{b}"] = len(times)
    largest = max(m.batch_sizes)
    out["throughput_items_per_s"] = round(largest / (out[f"latency_ms_b{largest}_p50"] / 1000), 1)
    out["includes"] = "vectorising the raw text"
    return out


# ------------------------------------------------------------------------------------------------ language models
def _bigram(data) -> dict | None:
    if data.train is None or data.test is None:
        return None
    train = data.train.blocks[: max(1, MAX_TOKENS // data.train.blocks.shape[1])].tolist()
    uni, bi = Counter(), Counter()
    for row in train:
        uni.update(row)
        bi.update(zip(row, row[1:]))
    vocab = max(max(uni) + 1, int(data.test.blocks.max()) + 1, int(data.validation.blocks.max()) + 1
                if data.validation is not None else 0)
    total = sum(uni.values())

    def perplexity(blocks, lam: float) -> float:
        nll, n = 0.0, 0
        for row in blocks.tolist():
            for a, b in zip(row, row[1:]):
                p_uni = (uni[b] + 1) / (total + vocab)
                p = lam * (bi[(a, b)] / uni[a] if uni[a] else 0.0) + (1 - lam) * p_uni
                nll -= math.log(p)
                n += 1
        return math.exp(nll / max(n, 1))

    tune = data.validation.blocks if data.validation is not None else data.train.blocks[-max(1, len(train) // 10):]
    lam = min((0.0, 0.3, 0.5, 0.7, 0.9), key=lambda x: perplexity(tune, x))
    ppl = perplexity(data.test.blocks, lam)
    return {"name": NAME["causal_lm"], "kind": "classical",
            "quality": {"accuracy": None, "f1_macro": None, "loss": round(math.log(ppl), 5),
                        "perplexity": round(ppl, 3)},
            "size": {"params": len(uni) + len(bi), "nonzero_params": len(uni) + len(bi), "disk_bytes": None},
            "speed": {}, "settings": {"bigram_weight": lam, "chosen_on": "validation perplexity"}}


# ------------------------------------------------------------------------------------------------ the comparison
def versus(quality: dict, classical: dict | None, task: str) -> dict | None:
    """A stage against the classical row: macro-F1 (classification) or perplexity (LM), the difference and whether
    the stage is better."""
    if classical is None:
        return None
    metric = "f1_macro" if task == "classification" else "perplexity"
    mine, theirs = quality.get(metric), classical["quality"].get(metric)
    if mine is None or theirs is None:
        return None
    beats = mine > theirs if metric == "f1_macro" else mine < theirs
    return {"metric": metric, "stage": mine, "classical": theirs, "delta": round(mine - theirs, 4), "beats": beats}
