"""Auto micro-batch: the largest micro-batch that fits in memory, the global batch kept.

The global batch per optimizer step is `batch_size × grad_accum × world` as the recipe sets it. Candidates are the
divisors of `batch_size × grad_accum` from the largest down (halving); each is probed with one forward and backward
pass on the worst-case batch (the longest examples of the training split, or full blocks for a causal LM) under the
stage's precision and loss. An out-of-memory error backs off to the next candidate. Every rank takes the smallest
choice of all ranks, so they all run the same number of micro-batches. Hand-written: a short try/except loop; the
libraries that do this (Accelerate's find_executable_batch_size, Lightning's tuner) restart a whole training function
or own the loop, which this readable loop does not hand over.
"""

from __future__ import annotations

import torch

from . import distributed


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def candidates(total: int) -> list[int]:
    """Divisors of `total` obtained by halving, largest first (e.g. 32 → 32, 16, 8, 4, 2, 1; 24 → 24, 12, 6, 3)."""
    out = [total]
    while out[-1] % 2 == 0:
        out.append(out[-1] // 2)
    if out[-1] != 1:
        out.append(1)
    return out


def worst_case_indices(split, n: int) -> list[int]:
    """The n examples that cost the most memory: the longest ones (all LM blocks are the same length)."""
    ids = getattr(split, "input_ids", None)
    order = sorted(range(len(split)), key=lambda i: -len(ids[i])) if ids is not None else list(range(len(split)))
    picked = order[:n]
    while len(picked) < n:  # a split smaller than the candidate: repeat examples
        picked += order[: n - len(picked)]
    return picked


def probe(model, split, m: int, loss_fn, device, autocast_dtype) -> bool:
    """One forward + backward at micro-batch m; False on out-of-memory."""
    batch = {k: v.to(device) for k, v in split.collate(worst_case_indices(split, m)).items()}
    try:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = loss_fn(model, batch, m)
        loss.backward()
        return True
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not _is_oom(e):
            raise
        return False
    finally:
        model.zero_grad(set_to_none=True)
        del batch
        if device.type == "cuda":
            torch.cuda.empty_cache()


def choose(model, split, stage, loss_fn, device, autocast_dtype, dd) -> tuple[int, int, list[int]]:
    """(micro_batch, grad_accum, sizes tried): the largest candidate that fits, agreed over all ranks."""
    total = stage.batch_size * stage.grad_accum
    tried, chosen = [], None
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    for m in candidates(total):
        tried.append(m)
        if probe(model, split, m, loss_fn, device, autocast_dtype):
            chosen = m
            break
    torch.set_rng_state(rng)  # the probes must not change what training draws (dropout)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    if chosen is None:
        from ..errors import TrainoptError

        raise TrainoptError(f"stage {stage.name}: even a micro-batch of 1 does not fit in memory; use a smaller model, "
                            "shorter sequences, activation_checkpointing: true or bf16")
    if dd.enabled:  # every rank runs the same micro-batches: the smallest choice wins
        import torch.distributed as dist

        t = torch.tensor([chosen], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        chosen = int(t.item())
    distributed.barrier(dd)
    return chosen, total // chosen, tried
