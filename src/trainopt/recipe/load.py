"""Loading a recipe: a YAML file or a built-in name, `--set key.path=value` overrides, parsing (once) and dumping."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import RecipeError
from .errors import one_line
from .schema import Recipe

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
MAX_VALUES = 100_000  # values in a recipe once YAML aliases are expanded (a real recipe holds a few hundred)
MAX_DEPTH = 32  # nesting levels (a real recipe nests 4 or 5)


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last one silently)."""


def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)):
            continue  # construct_mapping refuses an unhashable key itself
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                    key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_RecipeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def parse_yaml(text: str, where: str) -> Any:
    """Safe YAML, within limits no real recipe reaches: one line naming the problem otherwise (malformed YAML, a
    duplicate key, an integer of thousands of digits, nesting deeper than MAX_DEPTH, or aliases that expand past
    MAX_VALUES values — a "billion laughs" bomb is refused before anything expands it)."""
    try:
        value = yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 — a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        fix = "keep one of them" if "given twice" in problem else "fix the YAML syntax"
        raise RecipeError("", f"malformed YAML in {where}{at}: {problem}", fix) from None
    except RecursionError:
        raise RecipeError("", f"{where} is nested too deeply", f"a recipe nests at most {MAX_DEPTH} levels") from None
    except ValueError as e:  # int() past Python's digit limit
        raise RecipeError("", f"{where} holds a number trainopt cannot read ({str(e).splitlines()[0][:80]})",
                          "write numbers with at most a few dozen digits") from None
    _check_size(value, where)
    return value


def _check_size(value: Any, where: str) -> None:
    sizes: dict[int, int] = {}

    def size(v, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise RecipeError("", f"{where} is nested more than {MAX_DEPTH} levels deep",
                              "a recipe nests 4 or 5 levels; flatten the value")
        if not isinstance(v, (dict, list)):
            return 1
        if id(v) in sizes:  # an alias: the same object again
            return sizes[id(v)]
        children = v.values() if isinstance(v, dict) else v
        n = 1 + sum(size(c, depth + 1) for c in children)
        if n > MAX_VALUES:
            raise RecipeError("", f"{where} expands to more than {MAX_VALUES:,} values (YAML aliases repeated "
                              "inside each other?)", "write the recipe without nested aliases")
        sizes[id(v)] = n
        return n

    size(value, 0)


def builtin_recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def resolve_recipe_path(spec: str | None) -> Path:
    """A path to a YAML file, or the name of a built-in recipe (default: quickstart)."""
    if spec is None:
        spec = "quickstart"
    p = Path(spec)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise RecipeError("", f"recipe file {spec} does not exist", "pass a YAML file or a built-in name: "
                              + ", ".join(builtin_recipe_names()))
        return p
    builtin = RECIPES_DIR / f"{spec}.yaml"
    if builtin.is_file():
        return builtin
    close = difflib.get_close_matches(spec, builtin_recipe_names(), n=1)
    hint = f"did you mean '{close[0]}'?" if close else "built-in recipes: " + ", ".join(builtin_recipe_names())
    raise RecipeError("", f"no recipe file or built-in recipe named '{spec}'", hint)


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError("", f"{path} is not UTF-8 text (byte {e.start})", "save the recipe as UTF-8") from None
    raw = parse_yaml(text, str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError("", f"{path} must hold a mapping of keys (model:, data:, stages:, …), "
                          f"not a {type(raw).__name__}", "see docs/recipe.md")
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `key.path=value` overrides (value parsed as YAML). Stages are addressed by index or name."""
    for item in overrides or []:
        if "=" not in item:
            raise RecipeError(item, "an override must look like key.path=value", "e.g. --set stages.0.epochs=2")
        key, _, value_text = item.partition("=")
        try:
            value = parse_yaml(value_text, f"--set {key.strip()}") if value_text.strip() else None
        except RecipeError as e:
            if "malformed YAML" not in str(e):
                raise
            value = value_text  # not YAML: the text itself
        if not [p for p in key.strip().split(".") if p]:
            raise RecipeError(item, "empty key", "e.g. --set data.max_length=64")
        set_path(raw, key, value)
    return raw


def set_path(raw: dict, key: str, value: Any) -> dict:
    """Set one `key.path` of a raw recipe dict (stages addressed by index or name), creating mappings."""
    parts = [p for p in key.strip().split(".") if p]
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            idx = _list_index(node, part, where)
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise RecipeError(where, f"cannot set a key inside a {type(node).__name__}", "check the key path")
    return raw


def _list_index(node: list, part: str, where: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if not -len(node) <= idx < len(node):
            raise RecipeError(where, f"index {idx} is out of range (the list has {len(node)} items)",
                              "use an existing index or a stage name")
        return idx
    names = [s.get("name", s.get("kind")) if isinstance(s, dict) else None for s in node]
    if part in names:
        return names.index(part)
    close = difflib.get_close_matches(part, [n for n in names if n], n=1)
    raise RecipeError(where, f"no list item named '{part}'",
                      f"did you mean '{close[0]}'?" if close else f"names here: {names}")


def parse_recipe(raw: dict) -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise one_line(e) from None


def load_recipe(spec: str | Path | dict | Recipe | None = None, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe: a YAML path, a built-in name, a dict or a Recipe."""
    if isinstance(spec, Recipe):
        raw = spec.model_dump(mode="json", exclude_unset=False)
    elif isinstance(spec, dict):
        raw = yaml.safe_load(yaml.safe_dump(spec))  # deep copy, and plain YAML types only
    else:
        raw = read_yaml(resolve_recipe_path(str(spec) if spec is not None else None))
    return parse_recipe(apply_overrides(raw, overrides or []))




def dump_recipe(recipe: Recipe) -> str:
    raw = recipe.model_dump(mode="json")
    if raw.get("search") is None:
        raw.pop("search", None)
    return yaml.safe_dump(raw, sort_keys=False, width=110)


def is_builtin(ref: str | None) -> bool:
    return bool(ref) and str(ref).startswith("builtin:")
