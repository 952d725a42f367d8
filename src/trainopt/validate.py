"""Everything `trainopt run` checks before work starts — the recipe, its paths, option compatibility on this
machine, the model's class and shapes (on the meta device), and the data — in a module of its own, so that
`trainopt check` and the `--nproc` launcher (which validates once before starting torchrun) do not import the
training stages. The model check does import transformers' model classes: `trainopt check quickstart` /
`gpt2-124m` take 9.1–10.9 s / 10.1–10.2 s against 3.5–4.3 s / 3.8–3.9 s before it (2-core AMD EPYC, 3 interleaved
runs each); `trainopt run` imports them anyway, so a run's total is unchanged."""

from __future__ import annotations

import torch

from . import measure
from .data.prepare import load_texts
from .errors import RecipeError, first_line
from .meta import read_meta
from .models import folder_problem, meta_model, model_config, resolve_model_ref, size_problem
from .recipe import Recipe, check_paths, load_recipe
from .specbase import stage_key
from .techniques import checks_module
from .train.checks import check_training


def check_compat(recipe: Recipe, device: torch.device) -> None:
    """Options that are each valid but not together, or not on this machine: the run's, each training's
    (train/checks.py) and each technique's own (its `checks` module in trainopt/techniques.py)."""
    if recipe.run.device == "cuda" and not torch.cuda.is_available():
        raise RecipeError("run.device", "cuda was asked for but no CUDA device is available", "use auto or cpu")
    for i, stage in enumerate(recipe.stages):
        checks = checks_module(stage.kind)
        if checks is not None:
            checks.check(stage, i, recipe, device)
        for key, settings in stage.trainings():
            check_training(stage_key(i, key), settings, recipe.task, device, plain=stage.kind in ("train", "lora"))
    if recipe.task == "causal_lm" and recipe.data.pad_to_multiple_of is not None:
        raise RecipeError("data.pad_to_multiple_of", "causal_lm data comes in fixed blocks of block_size tokens; "
                          "there is no padding to round", "remove it (or set task: classification)")
    _check_sft(recipe)
    if recipe.task == "causal_lm" and (recipe.data.labels or recipe.data.label_column):
        raise RecipeError("data.label_column" if recipe.data.label_column else "data.labels",
                          "causal_lm data has no labels", "remove it, or set task: classification")


def _check_sft(recipe: Recipe) -> None:
    """SFT data (data/sft.py) is causal-LM data; packed rows need the mask transformers builds from their positions."""
    sft = recipe.data.sft
    if sft is None:
        return
    if recipe.task != "causal_lm":
        raise RecipeError("data.sft", "prompt/response data trains a causal LM", "set task: causal_lm")
    for i, stage in enumerate(recipe.stages):
        if stage.kind == "augment":
            raise RecipeError(stage_key(i, "kind"), "augmentation rewrites plain texts, not conversations",
                              "remove the augment stage")
        for key, settings in stage.trainings():
            if sft.packing and settings.attention in ("sdpa_causal", "fa4"):
                raise RecipeError(stage_key(i, key, "attention"), f"attention: {settings.attention} runs one causal "
                                  "sequence per row and would attend across the examples packed into a row",
                                  "use attention: auto or sdpa (or data.sft.packing: false)")


def check_model(recipe: Recipe, device: torch.device) -> None:
    """What depends on the model itself, checked on the recipe's model class built from its config on the meta device
    (no weights read, no memory) before any run directory exists: its config loads; every training's attention choice,
    fused LM head, activation checkpointing and fp8 apply to it; and each technique's own `check_model` (its checks
    module in techniques.py: e.g. an architecture structured pruning cannot shrink, 2:4 widths). The loop and the
    stages check again once the model is loaded. Checks stop at a distillation to a student of another config (later
    stages see another class); width checks stop at the first stage that changes shapes. A folder only trainopt's
    loader rebuilds (pruned shapes, quantized weights) and remote code are not built here."""
    config = _config(recipe)  # a model folder whose config.json cannot be read is refused here, whatever it trains
    if config is None:
        return
    _check_size(recipe, config)
    for i, stage in enumerate(recipe.stages):
        shapes_kept = all(s.kind not in ("prune", "distill") for s in recipe.stages[:i])
        checks = checks_module(stage.kind)
        if checks is not None and hasattr(checks, "check_model"):
            checks.check_model(stage, i, _meta_model(recipe, config), shapes_kept)
        for _, settings in stage.trainings():
            if settings.attention == "auto" and settings.lm_loss == "full" and settings.fp8 == "off" \
                    and not settings.activation_checkpointing:
                continue
            _check_on_model(_meta_model(recipe, config), settings, recipe.task, device, shapes_kept)
        if stage.kind == "distill" and stage.student.config:
            return  # later stages train a model of another config


def _check_on_model(model, settings, task: str, device: torch.device, shapes_kept: bool) -> None:
    from .train import attention
    from .train.linear_ce import check_supported

    if settings.lm_loss != "full" and task == "causal_lm":
        why = check_supported(model, settings.lm_loss, device)
        if why:
            raise RecipeError(settings.key_of("lm_loss"), why, "set lm_loss: full")
    if settings.activation_checkpointing and not getattr(model, "supports_gradient_checkpointing", False):
        raise RecipeError(settings.key_of("activation_checkpointing"),
                          f"{type(model).__name__} does not support activation checkpointing", "set it to false")
    if settings.fp8 != "off" and shapes_kept:
        from .train import fp8

        if not fp8.eligible(model):
            raise RecipeError(settings.key_of("fp8"), "no Linear of this model qualifies (widths must be multiples "
                              "of 16; the output head stays in high precision)", "set fp8: off")
    if settings.attention != "auto":
        attention.switch(model, settings)


def _config(recipe: Recipe):
    """The starting model's transformers config (models.model_config); None where only trainopt's loader rebuilds
    the model (pruned shapes, quantized weights: their own checks run when they load) or remote code would run."""
    spec = recipe.model
    path = resolve_model_ref(spec.path) if spec.path is not None else None
    problem = folder_problem(path) if path is not None and path.is_dir() else None  # headers only: no code runs
    if problem:
        raise RecipeError("model.path", problem, "restore or re-copy the model folder")
    if path is not None and (path / "model.onnx").is_file():  # an ONNX export: onnxruntime scores it, nothing trains it
        others = sorted({s.kind for s in recipe.stages} - {"eval"})
        if others:
            raise RecipeError("model.path", f"{path} is an ONNX export, which onnxruntime runs but stages of kind "
                              f"{', '.join(others)} cannot change", "evaluate it (kind: eval, `trainopt eval`), or "
                              "point model.path at the folder it was exported from")
        return None
    if spec.trust_remote_code:
        return None
    if path is not None:
        if {"structure", "quantization"} & set(read_meta(path)):
            return None
    config = model_config(spec)
    if spec.config is not None:
        _known_config_keys(config, spec.config)
    return config


def _known_config_keys(config, given: dict) -> None:
    """A key of model.config that the config class does not know would be kept as a stray attribute and do nothing
    (`n_layers` for GPT-2's `n_layer`): refused, with the nearest known key."""
    import difflib
    import inspect

    from transformers import PretrainedConfig

    cls = type(config)
    default = cls()
    known = set(default.to_dict()) | set(getattr(cls, "attribute_map", {}))
    for c in (cls, PretrainedConfig):
        known |= set(inspect.signature(c.__init__).parameters) - {"self", "kwargs"}
    for key in given:
        if key == "model_type" or key in known or hasattr(default, key):
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1)
        raise RecipeError(f"model.config.{key}", f"{cls.__name__} has no setting '{key}'",
                          f"did you mean '{close[0]}'?" if close else f"see {cls.__name__}'s documentation")


def _check_size(recipe: Recipe, config) -> None:
    """The model builds from its config, and its fp32 weights fit in this machine's memory (a config.json with a
    vocabulary of 10^12 would otherwise be found out by the out-of-memory killer, after the run directory exists)."""
    problem = size_problem(config, lambda: _meta_model(recipe, config))
    if problem:
        raise RecipeError("model.path" if recipe.model.path else "model.config", problem,
                          "use a smaller model (or check the config's sizes)")


def _meta_model(recipe: Recipe, config):
    """The recipe's model class with its config's shapes on the meta device: no weights read, no memory."""
    try:
        return meta_model(recipe.task, config)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RuntimeError, ZeroDivisionError,
            OverflowError) as e:  # whatever transformers raises on a config it cannot build
        raise RecipeError("model.path" if recipe.model.path else "model.config",
                          f"transformers cannot build a {recipe.task} model from this config ({first_line(e)})",
                          "use a model of a supported architecture, or fix its config") from None


def _check_validation(recipe: Recipe, texts) -> None:
    for i, stage in enumerate(recipe.stages):
        if getattr(stage, "early_stopping", None) and not texts.validation:
            raise RecipeError(stage_key(i, "early_stopping"), "early stopping needs a validation split",
                              "set data.validation_fraction > 0 or data.validation_source")


def _saved_labels(recipe: Recipe) -> list[str] | None:
    """Labels stored with a trainopt-saved model, so that a reloaded classifier keeps its label ids."""
    if recipe.model.path is None or recipe.data.labels is not None:
        return None
    return read_meta(resolve_model_ref(recipe.model.path)).get("labels")


def validate(recipe=None, overrides: list[str] | None = None):
    """Everything checked before work starts: the recipe, its paths, option compatibility on this machine, and
    the data (read, cleaned, labelled, split). Returns (recipe, device, texts); raises a one-line TrainoptError."""
    recipe = load_recipe(recipe, overrides)
    check_paths(recipe)
    device = measure.pick_device(recipe.run.device)
    check_compat(recipe, device)
    check_model(recipe, device)
    labels = _saved_labels(recipe)
    if labels:
        recipe.data.labels = labels
    texts = load_texts(recipe)  # data errors surface here, before a run directory exists
    _check_validation(recipe, texts)
    return recipe, device, texts
