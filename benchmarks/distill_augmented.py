"""Distillation with and without augmented data (TinyBERT's recipe): a 3-layer MiniLM student of the quickstart
teacher, trained on the original 3,575 reviews or on them plus EDA and Apertium back-translations.

    # 1. on this machine (needs WordNet + Apertium): augment, write the splits, and a float16 copy of the teacher
    python benchmarks/distill_augmented.py prepare --teacher runs/quickstart/stages/finetune/model --dir .gpuwork
    # 2. anywhere (a GPU makes it minutes): the students, side by side
    python benchmarks/distill_augmented.py run --dir .gpuwork [--device cuda] [--cases plain-3ep,aug-6ep,...]

`prepare` writes DIR/plain/{train,validation,test}.jsonl (the quickstart splits), DIR/aug/ (the same validation
and test, train = originals + 1 back-translation + 2 EDA variants per review) and DIR/teacher16 (the teacher in
float16 so that the folder travels under 64 MiB; it is trained in float32). `run` prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import trainopt

CASES = {  # name: (data folder, epochs, hidden-state loss weight, lr, seed[, KD weight: 0 = labels only])
    "plain-3ep": ("plain", 3, 1.0, 1e-4, 0), "plain-3ep-kdonly": ("plain", 3, 0.0, 1e-4, 0),
    "plain-12ep": ("plain", 12, 1.0, 1e-4, 0), "plain-24ep": ("plain", 24, 1.0, 1e-4, 0),
    "aug-3ep": ("aug", 3, 1.0, 1e-4, 0), "aug-3ep-kdonly": ("aug", 3, 0.0, 1e-4, 0),
    "aug-3ep-lr2e-4": ("aug", 3, 1.0, 2e-4, 0), "aug-3ep-seed1": ("aug", 3, 1.0, 1e-4, 1),
    "aug-6ep": ("aug", 6, 1.0, 1e-4, 0), "aug-6ep-seed1": ("aug", 6, 1.0, 1e-4, 1),
    "aug-6ep-seed2": ("aug", 6, 1.0, 1e-4, 2),
    # The ablation: the same student, data and steps, trained on the labels alone (no teacher signal).
    "aug-6ep-labels": ("aug", 6, 0.0, 1e-4, 0, 0.0), "aug-6ep-labels-seed1": ("aug", 6, 0.0, 1e-4, 1, 0.0),
    "aug-6ep-labels-seed2": ("aug", 6, 0.0, 1e-4, 2, 0.0),
    "plain-3ep-labels": ("plain", 3, 0.0, 1e-4, 0, 0.0),
}


def prepare(teacher: Path, root: Path) -> None:
    from trainopt.data.prepare import load_texts
    from trainopt.data.augment import augment_texts, synonym_source
    from trainopt.data.augment.backtranslate import make_engine
    from trainopt.artifacts import load_saved
    from trainopt.recipe import AugmentStage

    texts = load_texts(trainopt.load_recipe("quickstart"))
    stage = AugmentStage(kind="augment", per_example=2, backtranslate={})
    new, labels, _, stats = augment_texts(texts.train, texts.train_labels, stage, synonym_source(stage), 0,
                                          make_engine(stage.backtranslate))
    print("augmentation:", json.dumps({k: stats[k] for k in ("added", "per_operation", "mean_word_edit_distance")}))
    splits = {"validation": (texts.validation, texts.validation_labels), "test": (texts.test, texts.test_labels)}
    for name, train in (("plain", (texts.train, texts.train_labels)),
                        ("aug", (texts.train + new, texts.train_labels + labels))):
        (root / name).mkdir(parents=True, exist_ok=True)
        for split, (xs, ys) in {"train": train, **splits}.items():
            with open(root / name / f"{split}.jsonl", "w", encoding="utf-8") as f:
                for x, y in zip(xs, ys):
                    f.write(json.dumps({"review": x, "score": y}, ensure_ascii=False) + "\n")
    model, tok, meta = load_saved(teacher)
    model.half().save_pretrained(root / "teacher16")
    tok.save_pretrained(root / "teacher16")
    (root / "teacher16" / "trainopt.json").write_text(json.dumps({"task": "classification",
                                                                  "labels": meta["labels"]}))


def run_cases(root: Path, names: list[str], device: str, out: str) -> None:
    for name in names:
        data, epochs, hidden, lr, seed, kd = (*CASES[name], 1.0)[:6]
        raw = {"name": name, "task": "classification", "model": {"path": str(root / "teacher16")},
               "data": {"source": str(root / data), "text_column": "review", "label_column": "score"},
               "stages": [{"kind": "eval", "name": "teacher"},
                          {"kind": "distill", "name": "student", "student": {"layers": [1, 3, 5]},
                           "loss": {"kd": kd, "ce": 1.0, "hidden": hidden, "temperature": 2.0},
                           "train": {"epochs": epochs, "batch_size": 32, "optimizer": {"lr": lr},
                                     "precision": "auto", "eval_every": 50, "checkpoint_every": 0,
                                     "schedule": {"warmup_ratio": 0.1}}}],
               "run": {"device": device, "progress": False, "seed": seed}, "measure": {"latency": False}}
        report = trainopt.run(raw, out=f"{out}/{name}", overwrite=True)
        t, s = report["stages"]
        print(json.dumps({"name": name, "teacher": t["quality"]["accuracy"], "student": s["quality"]["accuracy"],
                          "ratio": round(s["quality"]["accuracy"] / t["quality"]["accuracy"], 4),
                          "train_rows": s["training"]["train_examples"], "steps": s["training"]["steps"],
                          "train_s": s["cost"]["wall_s"]}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["prepare", "run"])
    ap.add_argument("--teacher", default="runs/quickstart/stages/finetune/model")
    ap.add_argument("--dir", default=".gpuwork")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--out", default="runs/distill-aug")
    args = ap.parse_args()
    if args.phase == "prepare":
        prepare(Path(args.teacher), Path(args.dir))
    else:
        run_cases(Path(args.dir), args.cases.split(","), args.device, args.out)


if __name__ == "__main__":
    main()
