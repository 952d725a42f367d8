"""docs/recipe.md's key tables, generated from the schema so that the reference cannot drift from what a recipe
accepts: a key's type and constraints come from its annotation, its default from the field, its meaning from the
docstring under it (`Doc` adjusts the few that need words). The page's prose is written by hand around markers:

    <!-- keys: model -->            the tables of one block (model, data, run, measure, budget, search, recipe)
    ...generated...
    <!-- /keys -->
    <!-- keys: stages -->           one `### kind: <kind>` section per entry of the technique table, its spec class's
    ...generated...                 docstring as the introduction: a new technique is documented by its own folder
    <!-- /keys -->

`python -m trainopt.recipe.reference` rewrites the page (`make docs`); `--check` exits 1 when it is stale
(tests/test_docs.py runs the same comparison).
"""

from __future__ import annotations

import argparse
import ast
import functools
import inspect
import re
import sys
import types
import typing
from pathlib import Path

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ..specbase import BudgetSpec, Doc, StageBase, Strict
from ..techniques import TECHNIQUES
from ..train.spec import TrainSettings
from ..tune.spec import SearchSpec
from .schema import DataSpec, MeasureSpec, ModelSpec, Recipe, RunSpec

PAGE = Path(__file__).resolve().parents[3] / "docs" / "recipe.md"
MARK = re.compile(r"(<!-- keys: (?P<name>[a-z]+) -->\n).*?(<!-- /keys -->)", re.S)
HEAD = "| key | type | default | meaning |\n|---|---|---|---|\n"
# block name -> (schema class, the prefix its keys are written with, whether nested blocks get their own rows)
BLOCKS: dict[str, tuple[type[BaseModel], str, bool]] = {
    "recipe": (Recipe, "", False), "model": (ModelSpec, "", True), "data": (DataSpec, "", True),
    "run": (RunSpec, "", True), "measure": (MeasureSpec, "", True), "budget": (BudgetSpec, "budget.", True),
    "search": (SearchSpec, "search.", True),
}


@functools.cache
def _docstrings(path: str) -> dict[str, dict[str, str]]:
    """class name -> {field: the string literal right under its annotated assignment} for one source file."""
    found: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.ClassDef):
            pairs = zip(node.body, node.body[1:])
            found[node.name] = {a.target.id: inspect.cleandoc(b.value.value) for a, b in pairs
                                if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name)
                                and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
                                and isinstance(b.value.value, str)}
    return found


def meaning(cls: type[BaseModel], name: str) -> str | None:
    """A field's docstring, from the class that declares it (a subclass may redeclare it with its own)."""
    for klass in cls.__mro__:
        if name in vars(klass).get("__annotations__", {}):
            return _docstrings(inspect.getsourcefile(klass)).get(klass.__name__, {}).get(name)
    return None


def _doc(info: FieldInfo) -> Doc:
    return next((m for m in info.metadata if isinstance(m, Doc)), Doc())


def _is_union(annotation) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _block(annotation) -> type[BaseModel] | None:
    """The schema class of a nested block (`X` or `X | None`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, Strict):
        return annotation
    if _is_union(annotation):
        found = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _block(found[0]) if len(found) == 1 else None
    return None


def _nested(annotation) -> tuple[type[BaseModel], str] | None:
    """A block the table flattens, and how its keys continue the field's: `X` (`key.sub`), `list[X]` (`key[].sub`),
    `dict[str, X]` (`key.<name>.sub`)."""
    block = _block(annotation)
    if block is not None:
        return block, "."
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and _block(args[0]) is not None:
        return _block(args[0]), "[]."
    if origin is dict and _block(args[1]) is not None:
        return _block(args[1]), ".<name>."
    return None


def _number(v, bound: bool = False) -> str:
    """A number as YAML would take it: 5e-5, 1.0 for a float default (0 for a bound: `float > 0`)."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        text = f"{v:.1f}" if v.is_integer() and abs(v) < 1e6 and not bound else f"{v:g}"
        return re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), text)
    return str(v)


def _bounds(metadata) -> str:
    low = high = None
    for m in metadata:
        if isinstance(m, at.Ge):
            low = ("[", m.ge)
        elif isinstance(m, at.Gt):
            low = ("(", m.gt)
        elif isinstance(m, at.Le):
            high = ("]", m.le)
        elif isinstance(m, at.Lt):
            high = (")", m.lt)
    if low and high:
        return f" in {low[0]}{_number(low[1], True)}, {_number(high[1], True)}{high[0]}"
    if low:
        return f" {'≥' if low[0] == '[' else '>'} {_number(low[1], True)}"
    if high:
        return f" {'≤' if high[0] == ']' else '<'} {_number(high[1], True)}"
    return ""


def type_words(annotation, metadata=()) -> str:
    """An annotation as the reference writes it: `a` | `b`, int ≥ 1, float in [0, 1), list[str], … or null."""
    origin = typing.get_origin(annotation)
    if _is_union(annotation):
        parts = [a for a in typing.get_args(annotation) if a is not type(None)]
        words = " or ".join(type_words(a, metadata) for a in parts)
        return words + (" or null" if len(parts) < len(typing.get_args(annotation)) else "")
    if origin is typing.Literal:
        return " | ".join(f"`{v}`" if isinstance(v, str) else _number(v) for v in typing.get_args(annotation))
    if origin is typing.Annotated:
        return type_words(typing.get_args(annotation)[0], metadata)
    if origin in (list, tuple):
        inner = typing.get_args(annotation)
        if origin is tuple:
            return "[" + ", ".join(type_words(a) for a in inner) + "]"
        if _block(inner[0]) is not None or typing.get_origin(inner[0]) is dict:
            return "list of mappings"
        return f"list[{type_words(inner[0])}]"
    if origin is dict:
        return "mapping"
    if _block(annotation) is not None:
        return "mapping"
    if annotation in (int, float):
        return annotation.__name__ + _bounds(metadata)
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def default_words(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, BaseModel):  # a block: its keys' own defaults
        return "its keys' defaults"
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, BaseModel) for v in value):
            raise ValueError(f"a list of blocks as a default needs Doc(default=...) in words, not {value!r}")
        return "[" + ", ".join(_number(v) for v in value) + "]"
    return _number(value)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def rows(cls: type[BaseModel], prefix: str = "", expand: bool = True, skip=()) -> list[str]:
    """The table rows of one schema class: a row per key, nested blocks flattened as `block.key` (a block with a
    docstring also gets a row of its own: an optional block, say, and what leaving it out means)."""
    out = []
    for name, info in cls.model_fields.items():
        if name in skip:
            continue
        doc, key, text = _doc(info), prefix + name, meaning(cls, name)
        nested = _nested(info.annotation) if expand and doc.expand else None
        if nested is None or text:
            if not text:
                raise ValueError(f"{cls.__name__}.{name} has no docstring: write its meaning under the field")
            typ = doc.type or type_words(info.annotation, info.metadata)
            default = doc.default if doc.default is not None else default_words(info)
            out.append(f"| `{key}` | {_cell(typ)} | {_cell(default)} | {_cell(text)} |\n")
        if nested is not None:
            out += rows(nested[0], key + nested[1], expand)
    return out


def _stage_section(kind: str, spec: type[StageBase]) -> str:
    """`### kind: <kind>`: the spec's docstring, then its keys, `name` first. Every stage's from_stage and budget are
    documented once (under "Any stage"), kind is the heading, and a stage that trains lists only its own keys after
    the training keys of `kind: train`."""
    intro = inspect.cleandoc(spec.__doc__ or "")
    if not intro:
        raise ValueError(f"{spec.__name__} has no docstring: it introduces `kind: {kind}` in docs/recipe.md")
    skip = {"kind", "from_stage", "budget"} | (
        set(TrainSettings.model_fields) if issubclass(spec, TrainSettings) and kind != "train" else set())
    table = rows(spec, skip=set(spec.model_fields) - {"name"}) + rows(spec, skip=skip | {"name"})
    return f"### kind: {kind}\n\n{intro}\n\n{HEAD}{''.join(table)}\n"


def render_block(name: str) -> str:
    if name == "stages":
        return "".join(_stage_section(kind, t.spec) for kind, t in TECHNIQUES.items())
    if name not in BLOCKS:
        raise ValueError(f"unknown keys block '{name}' (known: stages, {', '.join(BLOCKS)})")
    cls, prefix, expand = BLOCKS[name]
    return HEAD + "".join(rows(cls, prefix, expand)) + "\n"


def render(page: str) -> str:
    """The page with every marked block regenerated from the schema."""
    return MARK.sub(lambda m: m.group(1) + "\n" + render_block(m.group("name")) + m.group(3), page)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainopt.recipe.reference", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from the schema")
    parser.add_argument("--page", type=Path, default=PAGE)
    args = parser.parse_args(argv)
    old = args.page.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print(f"{args.page} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    if new != old:
        args.page.write_text(new)
        print(f"rewrote {args.page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
