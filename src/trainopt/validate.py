"""Everything `trainopt run` checks before work starts — the recipe, its paths, option compatibility on this
machine, and the data — in a module of its own, so that `trainopt check` and the `--nproc` launcher (which validates
once before starting torchrun) do not import the training stages (about 1.7 s less start-up on a 2-core CPU)."""

from __future__ import annotations

import json

import torch

from . import measure
from .data import load_texts
from .errors import RecipeError
from .evaluate import METRICS
from .models import resolve_model_ref
from .recipe import Recipe, check_paths, load_recipe


def check_compat(recipe: Recipe, device: torch.device) -> None:
    """Options that are each valid but not together, or not on this machine."""
    if recipe.run.device == "cuda" and not torch.cuda.is_available():
        raise RecipeError("run.device", "cuda was asked for but no CUDA device is available", "use auto or cpu")
    trainings = []  # (key prefix, TrainSettings) of every stage that trains
    for i, stage in enumerate(recipe.stages):
        if stage.kind == "train":
            trainings.append((f"stages.{i}", stage))
        elif stage.kind == "quantize":
            from .compress.quantize import check_supported

            check_supported(stage, i, device)
            if stage.qat is not None:
                trainings.append((f"stages.{i}.qat", stage.qat))
        elif stage.kind == "distill":
            trainings.append((f"stages.{i}.train", stage.train))
        elif stage.kind == "prune" and stage.train is not None:
            trainings.append((f"stages.{i}.train", stage.train))
        elif stage.kind == "augment":
            if recipe.task != "classification":
                raise RecipeError(f"stages.{i}.kind", "augment applies to labelled (classification) data",
                                  "remove the augment stage from a causal_lm recipe")
            from .assets import asset_path

            if stage.per_example:
                asset_path("wordnet")  # a missing asset fails here, before any work
            if stage.backtranslate is not None and stage.backtranslate.engine == "apertium":
                asset_path("apertium")
            if stage.contextual is not None and not (stage.contextual.model or recipe.model.path):
                raise RecipeError(f"stages.{i}.contextual.model", "a model built from model.config has no "
                                  "pretrained embeddings to take neighbours from", "name a local model folder")
    for key, settings in trainings:
        if settings.precision == "fp16" and device.type != "cuda":
            raise RecipeError(f"{key}.precision", "fp16 training needs a CUDA device (GradScaler)",
                              "use bf16 or fp32 on CPU")
        if settings.metric is not None and settings.metric not in METRICS[recipe.task]:
            raise RecipeError(f"{key}.metric", f"'{settings.metric}' is not a {recipe.task} metric",
                              f"use one of {list(METRICS[recipe.task])}")
        plain = key.count(".") == 1  # a train stage (not the training inside a prune/distill/quantize stage)
        for name, value, default in (("lm_loss", settings.lm_loss, "full"), ("parallel", settings.parallel, "ddp")):
            if value != default and not plain:  # those stages bring their own losses, masks and modules
                raise RecipeError(f"{key}.{name}", f"{name}: {value} applies to train stages only",
                                  f"remove it (or set {default}) here")
        if settings.lm_loss != "full" and recipe.task != "causal_lm":
            raise RecipeError(f"{key}.lm_loss", "the fused LM loss applies to causal_lm models", "set it to full")
        if settings.lm_loss_vocab_multiple != 1 and settings.lm_loss != "chunked":
            raise RecipeError(f"{key}.lm_loss_vocab_multiple", "vocabulary padding applies to lm_loss: chunked",
                              "set lm_loss: chunked (or remove lm_loss_vocab_multiple)")
        if settings.sdpa_backend in ("cudnn", "efficient") and device.type != "cuda":
            raise RecipeError(f"{key}.sdpa_backend", f"the {settings.sdpa_backend} attention kernel runs on CUDA only",
                              "use auto, flash or math on a CPU")
        if settings.sdpa_backend in ("flash", "cudnn") and device.type == "cuda" and settings.precision == "fp32":
            raise RecipeError(f"{key}.sdpa_backend", f"the {settings.sdpa_backend} kernel takes fp16/bf16 inputs on CUDA",
                              "set precision: bf16 (or sdpa_backend: efficient or math)")
        if settings.sdpa_backend != "auto" and settings.attention in ("eager", "flash_attention_2", "fa4"):
            raise RecipeError(f"{key}.sdpa_backend", f"sdpa_backend picks a kernel of attention: sdpa, not of "
                              f"attention: {settings.attention}", "set attention: sdpa (or remove sdpa_backend)")
        if settings.attention == "sdpa_causal" and recipe.task != "causal_lm":
            raise RecipeError(f"{key}.attention", "sdpa_causal applies to causal_lm models",
                              "use attention: sdpa")
        if settings.attention == "fa4":
            from .train.fa4 import why_unavailable

            why = why_unavailable(device)
            if why is None and recipe.task != "causal_lm":
                why = "it runs unpadded causal batches only (causal_lm)"
            if why is None and settings.precision == "fp32":
                why = "its kernels take fp16/bf16 activations"
            if why:
                raise RecipeError(f"{key}.attention", f"attention: fa4 cannot run here: {why}",
                                  "use attention: sdpa" + (" (or precision: bf16)" if "bf16" in why else ""))
        if settings.lm_loss == "liger" and device.type != "cuda":
            raise RecipeError(f"{key}.lm_loss", "liger (Triton) needs a CUDA device", "use chunked on CPU")
        if settings.parallel == "fsdp" and (settings.ddp_comm != "fp32" or settings.ddp_bucket_mb != 25.0):
            raise RecipeError(f"{key}.ddp_comm" if settings.ddp_comm != "fp32" else f"{key}.ddp_bucket_mb",
                              "DDP's gradient buckets and compression do not apply to parallel: fsdp",
                              "remove the ddp_ key (or use parallel: ddp)")
        if settings.parallel != "fsdp" and not settings.fsdp_reshard:
            raise RecipeError(f"{key}.fsdp_reshard", "fsdp_reshard applies to parallel: fsdp",
                              "remove it (or set parallel: fsdp)")
        if settings.parallel == "fsdp" and settings.precision == "fp16":
            raise RecipeError(f"{key}.precision", "fp16 (GradScaler) is not supported with parallel: fsdp",
                              "use bf16 (or parallel: ddp)")
        if settings.label_smoothing and recipe.task != "classification":
            raise RecipeError(f"{key}.label_smoothing", "label smoothing applies to classification only",
                              "remove it or set it to 0")
    if recipe.task == "causal_lm" and recipe.data.pad_to_multiple_of is not None:
        raise RecipeError("data.pad_to_multiple_of", "causal_lm data comes in fixed blocks of block_size tokens; "
                          "there is no padding to round", "remove it (or set task: classification)")
    if recipe.task == "causal_lm" and (recipe.data.labels or recipe.data.label_column):
        raise RecipeError("data.label_column" if recipe.data.label_column else "data.labels",
                          "causal_lm data has no labels", "remove it, or set task: classification")


def _check_validation(recipe: Recipe, texts) -> None:
    for i, stage in enumerate(recipe.stages):
        if getattr(stage, "early_stopping", None) and not texts.validation:
            raise RecipeError(f"stages.{i}.early_stopping", "early stopping needs a validation split",
                              "set data.validation_fraction > 0 or data.validation_source")


def _saved_labels(recipe: Recipe) -> list[str] | None:
    """Labels stored with a trainopt-saved model, so that a reloaded classifier keeps its label ids."""
    if recipe.model.path is None or recipe.data.labels is not None:
        return None
    meta = resolve_model_ref(recipe.model.path) / "trainopt.json"
    if meta.is_file():
        return json.loads(meta.read_text()).get("labels")
    return None


def validate(recipe=None, overrides: list[str] | None = None):
    """Everything checked before work starts: the recipe, its paths, option compatibility on this machine, and
    the data (read, cleaned, labelled, split). Returns (recipe, device, texts); raises a one-line TrainoptError."""
    recipe = load_recipe(recipe, overrides)
    check_paths(recipe)
    device = measure.pick_device(recipe.run.device)
    check_compat(recipe, device)
    labels = _saved_labels(recipe)
    if labels:
        recipe.data.labels = labels
    texts = load_texts(recipe)  # data errors surface here, before a run directory exists
    _check_validation(recipe, texts)
    return recipe, device, texts
