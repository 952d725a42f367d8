"""The spike guard on real loss curves (issue 27): how often each rule fires on clean runs (false positives), and
whether it still catches injected faults.

Input: the run directories of fine-tunes logged with log_every=1 (benchmarks/quality_defaults.py runs so): every step
loss they computed, including the steps their own guard rejected. Each clean curve is replayed through trainopt's SpikeGuard with the
rule as shipped (median + k·MAD, the window's tail, `tail: 1.0`, and a rise of half the starting loss,
`min_rise: 0.5`), without the rise, and with the median + k·MAD rule alone (the rule before issue 27): every firing on a clean curve is a false positive. Then, at 20 positions per
curve, the step's loss is replaced by x1000 (the fault the tests inject) and by x3: a caught fault is one the guard
fires on.

    python benchmarks/spike_guard_replay.py runs/quality/*/ runs/quality_spike/*/
"""

from __future__ import annotations

import argparse
import json
import random

from trainopt.recipe import RecoverySpec
from trainopt.train.recovery import SpikeGuard


def computed_losses(run_dir: str, stage: str = "finetune") -> list[float]:
    """Every step loss the run computed, in the order it computed them: the logged steps and the losses of steps
    its own guard rejected (rollback / skip events), which a clean curve must include."""
    rows = [json.loads(x) for x in open(f"{run_dir}/metrics.jsonl") if x.strip()]
    rows = [r for r in rows if r.get("stage") == stage and "loss" in r
            and ("event" not in r or str(r["event"]).startswith(("rollback", "spike")))]
    return [r["loss"] for r in sorted(rows, key=lambda r: r["time"])]


def replay(losses: list[float], spec: RecoverySpec, inject: dict[int, float] | None = None) -> list[int]:
    """Steps at which the guard fires (a firing step is not added to the window, as in training)."""
    guard, fired = SpikeGuard(spec), []
    for i, loss in enumerate(losses):
        loss = loss * inject[i] if inject and i in inject else loss
        if guard.is_spike(loss):
            fired.append(i)
        else:
            guard.add(loss)
    return fired


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories of fine-tunes logged with log_every=1")
    args = ap.parse_args()
    rules = {"shipped (tail 1.0, min_rise 1.0)": RecoverySpec(), "min_rise 0.5": RecoverySpec(min_rise=0.5),
             "tail only (min_rise 0)": RecoverySpec(min_rise=0.0),
             "median + k·MAD only (the rule before issue 27)": RecoverySpec(tail=0.0, min_rise=0.0)}
    curves = [(str(path), computed_losses(path)) for path in args.runs]
    print(f"{len(curves)} clean curves, {sum(len(c) for _, c in curves):,} steps")
    for name, spec in rules.items():
        rng = random.Random(0)  # the same injection positions for every rule
        false_pos, runs_hit, caught = 0, 0, {1000.0: [0, 0], 3.0: [0, 0]}
        for label, losses in curves:
            fired = replay(losses, spec)
            false_pos += len(fired)
            runs_hit += bool(fired)
            if fired:
                print(f"  {name}: {label}: fired at steps {fired[:8]}{' …' if len(fired) > 8 else ''}")
            for factor in caught:
                for _ in range(20):
                    at = rng.randrange(spec.min_history + 1, len(losses))
                    caught[factor][0] += at in replay(losses[: at + 1], spec, {at: factor})
                    caught[factor][1] += 1
        print(f"{name}: false positives {false_pos} on {runs_hit} of {len(curves)} clean runs; "
              + "; ".join(f"x{f:g} caught {c}/{n}" for f, (c, n) in caught.items()))


if __name__ == "__main__":
    main()
