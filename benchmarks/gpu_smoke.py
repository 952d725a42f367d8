"""GPU smoke test of the core loop (no CI has a GPU): every precision on CUDA, MFU, and a resumed run.

    python benchmarks/gpu_smoke.py [--out DIR]

Builds a small BERT classifier and a small GPT-2 from configs (BPE tokenizers trained on the fly), so it needs
no downloaded assets. Prints one line per run (precision, loss, quality, tokens/s, MFU) and exits non-zero if
a run fails or a number is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import trainopt

WORDS_POS = "great delicious love excellent tasty perfect wonderful fresh".split()
WORDS_NEG = "awful stale bad terrible bland broken disgusting waste".split()
FILL = "the coffee tea snack was really very box price taste this it".split()


def write_data(root: Path) -> tuple[Path, Path]:
    rng = random.Random(0)
    cls = root / "reviews.jsonl"
    with open(cls, "w") as f:
        for i in range(2000):
            label = "great" if i % 3 else "other"
            words = rng.sample(FILL, 6) + rng.sample(WORDS_POS if label == "great" else WORDS_NEG, 2)
            rng.shuffle(words)
            f.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")
    lm = root / "story.txt"
    lm.write_text(" ".join(rng.choice(FILL + WORDS_POS) for _ in range(200_000)))
    return cls, lm


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=tempfile.mkdtemp(prefix="trainopt-gpu-"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cls, lm = write_data(out)
    common = {"run": {"device": "cuda", "progress": False},
              "measure": {"batch_sizes": [1, 32], "repeats": 10, "max_seconds": 2}}
    bert = {"model_type": "bert", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
            "intermediate_size": 1024, "max_position_embeddings": 128}
    gpt = {"model_type": "gpt2", "n_layer": 4, "n_head": 4, "n_embd": 256, "n_positions": 256}
    failures = 0
    for task, cfg, source in (("classification", bert, cls), ("causal_lm", gpt, lm)):
        for precision in ("fp32", "bf16", "fp16", "auto"):
            recipe = {"name": f"{task}-{precision}", "task": task,
                      "model": {"config": cfg, "train_tokenizer": {"vocab_size": 2000}},
                      "data": {"source": str(source), "block_size": 128, "max_length": 64},
                      "stages": [{"kind": "train", "name": "train", "max_steps": 150, "batch_size": 32,
                                  "precision": precision, "optimizer": {"lr": 1e-3}, "eval_every": 50,
                                  "checkpoint_every": 50, "log_every": 25}], **common}
            try:
                report = trainopt.run(recipe, out=out / recipe["name"], overwrite=True)
                st = report["stages"][0]
                q = st["quality"]
                line = (f"{recipe['name']:<24} resolved={st['training']['precision']:<5} "
                        f"acc={q['accuracy']} ppl={q['perplexity']} tok/s={st['cost']['tokens_per_s']} "
                        f"mfu={st['cost']['mfu']} peak_mem={st['cost']['peak_mem_bytes']} "
                        f"b32_ms={st['speed']['latency_ms_b32_p50']} skipped={st['training']['skipped_nonfinite_steps']}")
                print(line, flush=True)
                if st["cost"]["mfu"] is None or st["training"]["skipped_nonfinite_steps"] > 5:
                    failures += 1
            except Exception as e:  # report and go on: this is a smoke test
                failures += 1
                print(f"{recipe['name']}: FAILED {type(e).__name__}: {e}", flush=True)
    # Kill mid-run and resume on CUDA.
    rfile = out / "resume.json"
    rfile.write_text(json.dumps({**recipe, "name": "resume"}))
    import yaml

    ryaml = out / "resume.yaml"
    ryaml.write_text(yaml.safe_dump(json.loads(rfile.read_text())))
    env = dict(os.environ, TRAINOPT_FAULT_KILL_AT_STEP="100")
    k = subprocess.run([sys.executable, "-m", "trainopt", "run", str(ryaml), "--out", str(out / "resume"),
                        "--overwrite"], env=env, capture_output=True, text=True)
    r = subprocess.run([sys.executable, "-m", "trainopt", "run", str(ryaml), "--out", str(out / "resume"),
                        "--resume"], capture_output=True, text=True)
    ok = k.returncode == -9 and r.returncode == 0 and "resuming train from step 100" in r.stderr
    print(f"kill+resume on CUDA: killed rc={k.returncode} resumed rc={r.returncode} ok={ok}")
    if not ok:
        print(r.stderr[-3000:])
        failures += 1
    print(f"failures: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
