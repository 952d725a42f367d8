"""trainopt: make transformer language models cheaper to train and smaller to serve, and prove it."""

import logging

from .version import __version__

# transformers imports torchao when it is installed (for weight-only quantization); torchao 0.18 on torch 2.13 then
# logs two deprecation warnings from torch's pytree registry on every model import. Nothing a user can act on.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
# peft imports bitsandbytes when it is installed; on a CPU with AVX512-bf16 bitsandbytes then tries to fetch a kernel
# from the Hugging Face hub (offline here: it falls back to its own) and warns about it on every run.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# torchao 0.18 logs "Failed to load …/_C_mxfp8…so" / "_C_cutlass_90a" on a CPU-only torch: its CUDA kernels, absent
# by design there. Only those lines are dropped.
logging.getLogger("torchao").addFilter(
    lambda r: not (r.getMessage().startswith("Failed to load ") and "/torchao/_C" in r.getMessage()))


def run(recipe=None, out=None, overrides=None, resume=False, overwrite=False) -> dict:
    """Run a recipe (YAML path, built-in name, dict or Recipe); returns the report (see DESIGN.md)."""
    from .runner import run as _run

    return _run(recipe, out=out, overrides=overrides, resume=resume, overwrite=overwrite)


def load_recipe(spec=None, overrides=None):
    """Load and validate a recipe without running it."""
    from .recipe import load_recipe as _load

    return _load(spec, overrides)


def predict(model_dir, texts, **kwargs):
    """Batch inference with a saved stage model."""
    from .predict import predict as _predict

    return _predict(model_dir, texts, **kwargs)


__all__ = ["__version__", "run", "load_recipe", "predict"]
