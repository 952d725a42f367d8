"""Measurement shared by every stage and the report: latency, throughput, size, FLOPs, MFU, memory, hardware.

Latency is measured on fixed inputs (the first examples of the test split, identical for every stage), with warm-up
and repeats, reporting p50, p95 and the interquartile range in milliseconds; the timing itself (interleaved rounds,
spread, ratio intervals, the machine's load) is timing.py's.
"""

from __future__ import annotations

import os
import platform
import resource
import time

import torch

from .results import Speed
from .timing import percentile, sync, time_models  # noqa: F401 — sync: measure.sync for the loop and monitor

# Dense peak FLOP/s per device kind and precision (vendor datasheets, no sparsity).
# Override with run.peak_flops for any other device, including CPUs.
PEAK_FLOPS = {
    ("H200", "bf16"): 989e12, ("H200", "fp16"): 989e12, ("H200", "fp32"): 494e12,
    ("H100", "bf16"): 989e12, ("H100", "fp16"): 989e12, ("H100", "fp32"): 494e12,  # fp32 via TF32
    ("A100", "bf16"): 312e12, ("A100", "fp16"): 312e12, ("A100", "fp32"): 156e12,
    ("L40S", "bf16"): 362e12, ("L40S", "fp16"): 362e12, ("L40S", "fp32"): 183e12,
    ("A10", "bf16"): 125e12, ("A10", "fp16"): 125e12, ("A10", "fp32"): 62.5e12,
}


def pick_device(want: str) -> torch.device:
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def hardware_info(device: torch.device) -> dict:
    info = {"device": device.type, "threads": torch.get_num_threads(), "torch": torch.__version__.split("+")[0],
            "python": platform.python_version()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["gpus"] = torch.cuda.device_count()
    else:
        info["name"] = _cpu_name()
        info["cpus"] = os.cpu_count()
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def cpu_int8_dot() -> list[str]:
    """The CPU's one-instruction int8 dot-product extensions (AVX512-VNNI, AVX-VNNI, AMX-INT8) from /proc/cpuinfo:
    what makes dynamic int8 ~2x faster than fp32 on x86; without them fbgemm's int8 GEMMs run ~1.4x (measured)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted({f for f in flags if f in ("avx512_vnni", "avx_vnni", "amx_int8")})


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_flops(device: torch.device, precision: str, override: float | None = None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for (kind, prec), value in PEAK_FLOPS.items():
        if kind in name and prec == precision:
            return value
    return None


def matmul_params(model: torch.nn.Module, frozen_only: bool = False) -> int:
    """Weights that take part in matrix multiplies (Linear / GPT-2 Conv1D), the LM head included; `frozen_only`:
    those that do not train (requires_grad false)."""
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            if not frozen_only or not module.weight.requires_grad:
                total += module.weight.numel()
    return total


def flops_per_token(model: torch.nn.Module, seq_len: int, training: bool = True) -> float:
    """Model FLOPs per token (PaLM appendix B): 6·N_matmul + 12·layers·hidden·seq for training, a third of it
    for a forward pass. A frozen weight (LoRA's base model) computes no weight gradient: 4 FLOPs per weight, not 6.
    Padding is not counted: callers pass real (non-pad) tokens."""
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 0)
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 0)
    fwd = 2 * matmul_params(model) + 4 * layers * hidden * seq_len
    return 3 * fwd - 2 * matmul_params(model, frozen_only=True) if training else fwd


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: peak allocated by torch since the last reset. CPU: the process's peak resident set (ru_maxrss)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024



def time_call(fn, device: torch.device, warmup: int, repeats: int, max_seconds: float) -> list[float]:
    """Milliseconds per call: `warmup` untimed calls, then up to `repeats` timed calls (at least 3,
    and no more than fit in max_seconds)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1000.0)
        if len(times) >= 3 and time.perf_counter() - start > max_seconds:
            break
    return times


def fixed_inputs(split, task: str, batch_sizes: list[int], seq_len: int | None) -> dict[int, dict]:
    """The same inputs for every stage: the first examples of the split (batch 1: the median-length one)."""
    out = {}
    n_max = min(max(batch_sizes), len(split))
    if task == "classification":
        first = list(range(n_max))
        median = sorted(first, key=lambda i: len(split.input_ids[i]))[len(first) // 2]
        for b in batch_sizes:
            idx = [median] if b == 1 else [first[i % n_max] for i in range(b)]
            batch = split.collate(idx)
            out[b] = {k: batch[k] for k in ("input_ids", "attention_mask")}
    else:
        width = min(seq_len or 128, split.blocks.shape[1])
        for b in batch_sizes:
            idx = [i % len(split) for i in range(b)]
            out[b] = {"input_ids": split.blocks[idx, :width]}
    return out


def measure_latency(model, inputs: dict[int, dict], device: torch.device, warmup: int, repeats: int,
                    max_seconds: float, autocast_dtype: torch.dtype | None = None) -> Speed:
    """One model's forward latency per batch size (p50, p95, interquartile range, repeats), the throughput at the
    largest batch and the machine's record (timing.py); to compare models, time them together (timing.time_models)."""
    timing = time_models({"model": model}, inputs, device, warmup, repeats, max_seconds, autocast_dtype)
    return timing.speed("model", device)


@torch.inference_mode()
def measure_compiled_latency(model, inputs: dict[int, dict], device: torch.device, warmup: int, repeats: int,
                             max_seconds: float) -> dict:
    """Each batch size's forward through `torch.compile(mode="reduce-overhead", dynamic=False)`: compiled once per
    shape and, on CUDA, replayed from CUDA graphs (PyTorch's graph trees). Unlike a hand capture
    (measure_graphed_latency), where transformers keeps its padding mask and SDPA then found no fused kernel (session
    7, H200), the model's host-side decisions are taken at trace time and inductor lowers the attention itself;
    which attention kernel then runs on a GPU is not yet measured. On a CPU it times the compiled model without
    graphs."""
    model.eval()
    compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)
    result = {}
    for b, batch in sorted(inputs.items()):
        batch = {k: v.to(device) for k, v in batch.items()}

        def call(batch=batch):
            torch.compiler.cudagraph_mark_step_begin()
            compiled(**batch)

        for _ in range(3):  # compile, record the graph, first replays
            call()
        times = time_call(call, device, warmup, repeats, max_seconds)
        result[f"compiled_latency_ms_b{b}_p50"] = round(percentile(times, 0.5), 3)
    return result


@torch.inference_mode()
def measure_graphed_latency(model, inputs: dict[int, dict], device: torch.device, warmup: int, repeats: int,
                            max_seconds: float, same_stream: bool = True) -> dict:
    """CUDA only: each batch size's forward captured once in a CUDA graph and timed by replaying it, so that
    per-call host work (kernel launches, library plan set-up) drops out. An all-ones attention mask is left out
    (HF builds masks with host-side checks that a capture cannot contain)."""
    model.eval()
    result = {}
    for b, batch in sorted(inputs.items()):
        static = {k: v.to(device) for k, v in batch.items()
                  if not (k == "attention_mask" and bool(torch.all(v == 1)))}
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm up outside the capture (lazy init, workspace allocation)
                model(**static)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # Captured on the stream that was warmed up: the libraries' per-stream state (e.g. cuBLAS workspaces) then
        # exists before the capture instead of being set up, or done without, inside it.
        with torch.cuda.graph(graph, stream=side if same_stream else None):
            model(**static)
        times = time_call(graph.replay, device, warmup, repeats, max_seconds)
        result[f"graph_latency_ms_b{b}_p50"] = round(percentile(times, 0.5), 3)
        del graph
    return result


@torch.inference_mode()
def measure_generation(model, prompt: torch.Tensor, new_tokens: int, device: torch.device, repeats: int,
                       max_seconds: float) -> dict:
    """Greedy decoding at batch 1 from a fixed prompt: exactly `new_tokens` tokens per call (EOS ignored)."""
    model.eval()
    ids = prompt.to(device)
    mask = torch.ones_like(ids)

    def call():
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, temperature=None, top_p=None, top_k=None,
                       pad_token_id=model.config.eos_token_id)

    times = time_call(call, device, warmup=1, repeats=max(repeats, 3), max_seconds=max_seconds)
    p50 = percentile(times, 0.5)
    return {"generate_tokens_per_s_b1": round(new_tokens / (p50 / 1000.0), 2), "generate_new_tokens": new_tokens,
            "generate_prompt_tokens": int(ids.shape[1]), "generate_ms_p50": round(p50, 2)}
