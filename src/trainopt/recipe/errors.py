"""pydantic's validation errors as one line: the key (`stages.<i>.<key>`), the problem and the fix."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, ValidationError

from ..errors import RecipeError
from .schema import Recipe, Stage


def one_line(e: ValidationError) -> RecipeError:
    err = e.errors(include_url=False)[0]
    loc = list(err["loc"])
    typ, msg = err["type"], err["msg"]
    # Discriminated unions put the tag ("train") into the location; drop it from what the user sees.
    clean_loc = [p for i, p in enumerate(loc) if not (i > 0 and loc[i - 1] != "kind" and _is_tag(loc, i))]
    key = _dotted(clean_loc)
    value = err.get("input")
    if typ == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.5)
        fix = f"did you mean '{close[0]}'?" if close else ("allowed keys here: " + ", ".join(allowed) if allowed
                                                           else "remove it")
        return RecipeError(key, "unknown key", fix)
    if typ == "missing":
        return RecipeError(key, "required key is missing", "add it (see docs/recipe.md)")
    if typ in ("union_tag_invalid", "union_tag_not_found"):
        kinds = ", ".join(_stage_kinds())
        got = f" '{value.get('kind')}'" if isinstance(value, dict) and "kind" in value else ""
        return RecipeError(key + ".kind", f"unknown or missing stage kind{got}", f"use one of: {kinds}")
    if typ == "literal_error":
        return RecipeError(key, f"{value!r} is not allowed", msg.replace("Input should be", "use"))
    if typ.endswith("_type") or typ.endswith("_parsing") or typ in ("model_type", "dict_type", "list_type"):
        return RecipeError(key, f"wrong type: got {type(value).__name__} {_short(value)}",
                           msg.replace("Input should be", "it should be"))
    if typ in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short", "too_long"):
        return RecipeError(key, f"{_short(value)} is out of range", msg.replace("Input should", "it should")
                           .replace("Value should", "it should").replace("List should", "it should"))
    if typ == "string_pattern_mismatch":
        return RecipeError(key, f"{_short(value)} is not a valid name",
                           "use up to 100 letters, digits, '_', '-' and '.' (starting with a letter or digit)")
    if typ == "value_error":
        text = msg.removeprefix("Value error, ")
        return RecipeError(key or "recipe", text)
    return RecipeError(key, msg)


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _is_tag(loc: list, i: int) -> bool:
    return isinstance(loc[i], str) and isinstance(loc[i - 1], int) and loc[i] in _stage_kinds() \
        and i >= 2 and loc[i - 2] == "stages"


def _stage_kinds() -> list[str]:
    return [typing.get_args(c.model_fields["kind"].annotation)[0] for c in typing.get_args(
        typing.get_args(Stage)[0])]


def _dotted(loc: list) -> str:
    return ".".join(str(p) for p in loc)


def _fields_at(loc: list) -> list[str]:
    """The keys allowed at a location of the recipe (for did-you-mean)."""
    cls: Any = Recipe
    for part in loc:
        if isinstance(part, int):
            cls = _unwrap(cls, want_item=True)
            continue
        if isinstance(cls, list):  # a stage union, resolved by its tag
            cls = next((c for c in cls if typing.get_args(c.model_fields["kind"].annotation)[0] == part), None)
            if cls is not None:
                continue
            return []
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return []
        cls = _unwrap(cls.model_fields[part].annotation)
    if isinstance(cls, list):
        return []
    return list(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else []


def _unwrap(tp: Any, want_item: bool = False) -> Any:
    """Strip Optional/Annotated/list[...] down to a model class, or a list of classes for a union."""
    for _ in range(6):
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is Annotated:
            tp = args[0]
        elif origin in (list, tuple) and want_item:
            tp, want_item = args[0], False
        elif origin in (Union, types.UnionType):
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if len(models) == 1:
                tp = models[0]
            else:
                return models
        else:
            break
    return tp
