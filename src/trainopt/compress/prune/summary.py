"""The report's words for a prune stage (no torch: the report imports it)."""

from __future__ import annotations


def describe(info: dict) -> str:
    """One line for the Markdown report."""
    if info["method"] == "structured":
        heads = f"heads kept per layer {info['heads_kept']}, " if info.get("heads_kept") else ""
        return (f"structured ({info['importance']}): {heads}FFN neurons kept per layer {info['ffn_kept']}; "
                f"parameters {info['params_before']:,} → {info['params_after']:,}")
    line = (f"{info['method']} {info['pattern']}: target sparsity {info['target_sparsity']:.0%}, achieved "
            f"{info['achieved_sparsity']:.2%} over {info['pruned_modules']} modules "
            f"(per layer {min(info['per_layer'].values()):.1%}–{max(info['per_layer'].values()):.1%})")
    k = info.get("sparse_kernels")
    if k and k.get("measured"):
        speed = ", ".join(f"{key.replace('speedup_', '')} {v:.2f}x" for key, v in k.items() if "speedup_" in key)
        line += (f"; CUDA 2:4 sparse kernels ({k.get('kernel', 'semi_structured_tensor')}) vs dense bf16, same mode "
                 f"(eager, graph_ replayed, compiled_) and fastest vs fastest (best_vs_best_): {speed}")
    elif k:
        line += f"; {k['reason']}"
    return line
