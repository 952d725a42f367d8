"""Multi-GPU scaling of GPT-2 124M (recipes/gpt2-124m.yaml): DDP and FSDP2 on N GPUs vs one GPU (issue 3).

Each configuration is a real `trainopt run` (torchrun for N > 1) of the recipe's pretraining stage for --steps steps
at micro-batch --batch per GPU (weak scaling: the global batch grows with N). Reported: tokens/s over all GPUs
(median of the per-step log after --warmup steps), tokens/s per GPU, scaling efficiency = per-GPU tokens/s ÷ the
one-GPU run's, peak memory, and how far each N-GPU loss curve is from one GPU with the same global batch
(micro-batch × N accumulation steps).

    python benchmarks/scaling_gpu.py --gpus 2 --steps 60 --out runs/scaling
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def run(name: str, out: Path, nproc: int, accum: int, parallel: str, args, extra: dict | None = None) -> dict:
    sets = {"stages.pretrain.max_steps": args.steps, "stages.pretrain.batch_size": args.batch,
            "stages.pretrain.grad_accum": accum, "stages.pretrain.parallel": parallel,
            "stages.pretrain.checkpoint_every": 0, "stages.pretrain.log_every": 1,
            "stages.pretrain.eval_every": args.steps, "stages.pretrain.recovery.enabled": "false",
            "stages.pretrain.lm_loss": args.lm_loss, "measure.latency": "false", "run.progress": "false",
            "run.tensorboard": "false", **({"stages.pretrain.compile": "false"} if args.no_compile else {}),
            **({"stages.pretrain.profile": f"{{start: {args.profile}, steps: 3}}"} if args.profile else {}),
            **(extra or {})}
    cmd = [sys.executable, "-m", "trainopt", "run", "gpt2-124m", "--out", str(out / name), "--overwrite"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    (out / f"{name}.stderr.txt").write_text(p.stderr)
    if p.returncode != 0:
        lines = [line for line in p.stderr.splitlines() if "Error" in line or "error" in line]
        return {"name": name, "error": " / ".join(lines[:6])[:1500]}
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("stage") == "pretrain" and "loss" in r]
    timed = [r["tokens_per_s"] for r in steps if r["step"] > args.warmup and r.get("tokens_per_s")]
    report = json.loads((out / name / "report.json").read_text())
    t = report["stages"][0]["training"]
    return {"name": name, "gpus": nproc, "grad_accum": accum, "parallel": parallel,
            "tokens_per_s": statistics.median(timed), "per_gpu": statistics.median(timed) / nproc,
            "peak_mem_bytes": t.get("peak_mem_bytes"), "first_step_s": t.get("first_step_s"),
            "losses": {r["step"]: r["loss"] for r in steps},
            "val_perplexity": report["stages"][0]["quality"].get("perplexity")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lm-loss", default="full", choices=["full", "chunked", "liger"])
    ap.add_argument("--only", default="one,one_accum,ddp,fsdp")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--profile", type=int, default=0, help="profile 3 steps from this step (rank 0; the tables land "
                    "in each run's stages/pretrain/profile/)")
    ap.add_argument("--out", default="runs/scaling")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = args.gpus
    plan = {"one": ("1gpu", 1, 1, "ddp", {}), "one_accum": (f"1gpu_accum{n}", 1, n, "ddp", {}),
            "ddp": (f"ddp_{n}gpu", n, 1, "ddp", {}), "fsdp": (f"fsdp_{n}gpu", n, 1, "fsdp", {}),
            # DDP's knobs: gradients all-reduced in bf16 (half the bytes), bigger buckets (fewer calls)
            "ddp_bf16": (f"ddp_{n}gpu_bf16comm", n, 1, "ddp", {"stages.pretrain.ddp_comm": "bf16"}),
            # FSDP2 keeping each block's gathered parameters from its forward to its backward (one all-gather a step)
            "fsdp_keep": (f"fsdp_{n}gpu_keep", n, 1, "fsdp", {"stages.pretrain.fsdp_reshard": "false"}),
            # the same runs with plain pageable host→GPU copies (run.pin_memory: false), for an A/B of pinning
            "one_nopin": ("1gpu_nopin", 1, 1, "ddp", {"run.pin_memory": "false"}),
            "ddp_nopin": (f"ddp_{n}gpu_nopin", n, 1, "ddp", {"run.pin_memory": "false"}),
            "ddp_bucket100": (f"ddp_{n}gpu_bucket100", n, 1, "ddp", {"stages.pretrain.ddp_bucket_mb": 100}),
            "ddp_bf16_bucket100": (f"ddp_{n}gpu_bf16comm_bucket100", n, 1, "ddp",
                                   {"stages.pretrain.ddp_comm": "bf16", "stages.pretrain.ddp_bucket_mb": 100})}
    results = []
    for key in args.only.split(","):
        name, nproc, accum, parallel, extra = plan[key]
        results.append(run(name, out, nproc, accum, parallel, args, extra))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "losses"}), flush=True)
    base = next((r for r in results if r["name"] == "1gpu" and "error" not in r), None)
    ref = next((r for r in results if r["name"].startswith("1gpu_accum") and "error" not in r), None)
    print(f"\nGPT-2 124M, micro-batch {args.batch} per GPU, {args.steps} steps ({args.warmup} warm-up), "
          f"lm_loss {args.lm_loss}")
    print("| run | GPUs | tokens/s | per GPU | scaling efficiency | peak mem GB | max loss Δ vs 1 GPU same global batch |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['name']} | error: {r['error'][-300:]!r} |")
            continue
        eff = f"{r['per_gpu'] / base['per_gpu']:.1%}" if base else "—"
        delta = "—"
        if ref and r["gpus"] > 1:
            common = [s for s in ref["losses"] if s in r["losses"]]
            delta = f"{max(abs(r['losses'][s] - ref['losses'][s]) / ref['losses'][s] for s in common):.2%}"
        mem = f"{r['peak_mem_bytes'] / 1e9:.1f}" if r.get("peak_mem_bytes") else "—"
        print(f"| {r['name']} | {r['gpus']} | {r['tokens_per_s']:,.0f} | {r['per_gpu']:,.0f} | {eff} | {mem} | {delta} |")
    (out / "scaling.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
