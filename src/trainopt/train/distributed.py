"""Data-parallel training on torch.distributed: one process per device, started by torchrun.

`trainopt run --nproc N` starts N processes on this machine through torchrun (`--standalone`); for several machines
run torchrun yourself with its usual flags (`--nnodes`, `--rdzv-endpoint`, …) and `-m trainopt run RECIPE`. Every
rank runs the recipe; rank 0 alone writes the run directory (checkpoints, models, metrics, reports) and the others
wait for it at barriers. In training, an optimizer step takes `grad_accum × world` micro-batches of the epoch's
batch list and rank r computes every world-th of them (DistributedDataParallel averages the gradients), so a run on
N processes takes the same steps as one process with `grad_accum × N` — the same loss curve, up to float summation
order (tested on CPU with gloo). `parallel: fsdp` shards the model's parameters, gradients and optimizer state over
the ranks with FSDP2 (`fully_shard`) instead of replicating them; checkpoints are gathered to full state dicts (resume
with the same `parallel` setting), and the trained model is the same plain model as after DDP.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def from_env(device_pref: str) -> tuple[Dist, torch.device | None]:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU); (SINGLE, None) outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE, None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_pref != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if not dist.is_initialized():
        # A key prefix per restart attempt: after `--max-restarts` the agent's store still holds the previous
        # attempt's addresses, which a fresh process group must not read (gloo then connects to dead ranks).
        store, _, _ = next(dist.rendezvous("env://"))
        store = dist.PrefixStore(f"trainopt/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
        dist.init_process_group("nccl" if cuda else "gloo", store=store, rank=rank, world_size=world,
                                device_id=device if cuda else None)
    if not cuda:  # CPU ranks of one machine share its cores
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return Dist(rank, world, local), device


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def all_sum(d: Dist, t: torch.Tensor) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(d: Dist, obj):
    """Rank 0's object on every rank."""
    if not d.enabled:
        return obj
    box = [obj if d.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(d: Dist, model: torch.nn.Module, device: torch.device, bucket_mb: float = 25.0,
         comm_dtype: str = "fp32") -> torch.nn.Module:
    """DistributedDataParallel around the model (identity on one process). Gradients are all-reduced in buckets of
    `bucket_mb` while the backward runs; the gradients are views into those buckets (no copy). With `comm_dtype`
    bf16 they travel in bf16 (half the bytes; DDP's bf16 compression hook) and are averaged back into fp32."""
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                  bucket_cap_mb=bucket_mb, gradient_as_bucket_view=True)
    if comm_dtype == "bf16":
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        on_nccl = device.type == "cuda"
        ddp.register_comm_hook(None, default_hooks.bf16_compress_hook if on_nccl else _bf16_allreduce_hook)
    return ddp


def _bf16_allreduce_hook(_state, bucket):
    """The bf16 gradient all-reduce for gloo (CPU). PyTorch's bf16_compress_hook refuses any backend but NCCL/XCCL,
    though gloo reduces bf16 tensors; this is the same computation (cast, average, cast back into the bucket)."""
    compressed = bucket.buffer().to(torch.bfloat16).div_(dist.get_world_size())
    fut = dist.all_reduce(compressed, async_op=True).get_future()

    def decompress(f):
        out = bucket.buffer()
        out.copy_(f.value()[0])
        return out

    return fut.then(decompress)


def no_sync(d: Dist, wrapped, last: bool):
    """Skip the gradient all-reduce (DDP) / reduce-scatter (FSDP2) on all but the last micro-batch of a step."""
    if hasattr(wrapped, "set_requires_gradient_sync"):  # an FSDP2 module
        wrapped.set_requires_gradient_sync(last)
        return nullcontext()
    return wrapped.no_sync() if d.enabled and not last else nullcontext()


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks: the module classes a Hugging Face model lists in `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    # by any class in the MRO: once sharded, a block's class is FSDP2's subclass of it (FSDPGPT2Block)
    return [m for m in model.modules() if any(c.__name__ in names for c in type(m).__mro__)]


def compile_blocks(model: torch.nn.Module, mode: str | None, dynamic: bool | None = None) -> int:
    """torch.compile each transformer block's forward (torchtitan's way under FSDP): FSDP2's per-block hooks (all-gather
    before, reshard and reduce-scatter after) then run around compiled code instead of breaking one whole-model graph
    into pieces, and the module tree and state-dict keys stay as they are. Returns the number of blocks compiled."""
    blocks = transformer_blocks(model)
    # Each block is its own compiled frame (its layer index, for one, is a constant of its graph): dynamo's default of
    # 8 recompilations per code object would send blocks 9+ back to eager.
    limit = 2 * len(blocks) + 8
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    for block in blocks:
        block.forward = torch.compile(block.forward, mode=mode, dynamic=dynamic)
    return len(blocks)


def shard_model(root: torch.nn.Module, blocks_of: torch.nn.Module, param_dtype: torch.dtype | None,
                reshard: bool = True) -> torch.nn.Module:
    """FSDP2 (`fully_shard`): every transformer block (the classes a Hugging Face model lists in
    `_no_split_modules`) is its own unit, the rest (embeddings, final norm, head) goes with `root`. Parameters,
    gradients and optimizer state are sharded over the ranks; each unit's parameters are all-gathered for its forward
    and backward (in `param_dtype` when training in bf16; gradients reduced in fp32). `reshard`: free a block's
    gathered parameters after its forward (gathered again for its backward), or keep them until the backward (one
    all-gather per block per step). The root keeps its parameters either way (FSDP2's own rule: they are needed first
    in the backward)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    blocks = transformer_blocks(blocks_of)
    if not blocks:
        from ..errors import TrainoptError

        raise TrainoptError(f"parallel: fsdp found no transformer blocks in {type(blocks_of).__name__} "
                            "(_no_split_modules is empty); use parallel: ddp")
    for block in blocks:
        fully_shard(block, mp_policy=policy, reshard_after_forward=reshard)
    fully_shard(root, mp_policy=policy, reshard_after_forward=reshard)
    return root


def is_sharded(module: torch.nn.Module) -> bool:
    return hasattr(module, "set_requires_gradient_sync")


def full_state(module: torch.nn.Module, optimizer=None, everywhere: bool = False) -> tuple[dict, dict | None]:
    """Full (unsharded) model and optimizer state dicts of an FSDP2 module: a collective, every rank calls it; keys as
    in the unsharded module (whole tensors, so a checkpoint does not depend on the number of ranks). Rank 0 gets them on the CPU (the
    others get empty dicts), or, `everywhere`, every rank gets them on its device."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=not everywhere)
    if optimizer is None:
        return get_model_state_dict(module, options=options), None
    return get_state_dict(module, optimizer, options=options)


def load_full_state(module: torch.nn.Module, model_state: dict, optimizer=None, optim_state: dict | None = None):
    """Load full state dicts (as full_state returns them) into an FSDP2 module and its optimizer, on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

    options = StateDictOptions(full_state_dict=True)
    if optimizer is None:
        set_model_state_dict(module, model_state, options=options)
    else:
        set_state_dict(module, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=options)


def sync_extra(d: Dist, module: torch.nn.Module | None) -> None:
    """Average the gradients of trainable modules outside the DDP-wrapped model (e.g. distillation projections)."""
    if not d.enabled or module is None:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= d.world


def shard(d: Dist, group: list, per_rank: int) -> list[tuple[object, float]]:
    """This rank's micro-batches of one step's group: every world-th one, padded to `per_rank` with weight-0 copies
    (a rank with nothing left at an epoch's end still joins the gradient all-reduce, contributing zero)."""
    mine = [(g, 1.0) for g in group[d.rank::d.world]]
    while len(mine) < per_rank:
        mine.append((group[0], 0.0))
    return mine


def restarted() -> bool:
    """True in a worker that torchrun restarted after a failure (`--max-restarts`): the run resumes."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
