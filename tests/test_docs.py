"""docs/recipe.md and the recipe schema change together: every key the schema accepts (the recipe package and every
technique's spec.py, found through the technique table) is named in the reference, and every key the reference's
tables name exists in the schema (no stale rows)."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from trainopt.recipe.schema import Recipe
from trainopt.techniques import TECHNIQUES

DOC = Path(__file__).resolve().parents[1] / "docs" / "recipe.md"
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def _models(annotation) -> list[type[BaseModel]]:
    found = [annotation] if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []
    for arg in typing.get_args(annotation):
        found += _models(arg)
    return found


def _schema() -> dict[str, list[str]]:
    """field name -> where it sits (dotted), over every schema model reachable from Recipe and the technique table."""
    fields: dict[str, list[str]] = {}
    seen: set[type] = set()

    def walk(cls, where):
        if cls in seen:
            return
        seen.add(cls)
        for name, info in cls.model_fields.items():
            fields.setdefault(name, []).append(f"{where}.{name}".lstrip("."))
            for sub in _models(info.annotation):
                walk(sub, f"{where}.{name}")

    walk(Recipe, "")
    for kind, technique in TECHNIQUES.items():
        walk(technique.spec, f"stages[{kind}]")
    return fields


def test_every_schema_key_is_in_the_recipe_reference():
    doc = DOC.read_text()
    named = {ident for tick in re.findall(r"`([^`]+)`", doc) for ident in re.findall(IDENT, tick)}
    missing = sorted(where[0] for name, where in _schema().items() if name not in named)
    assert not missing, f"document these keys in docs/recipe.md: {missing}"


def test_every_key_the_reference_lists_exists():
    fields = _schema()
    stale = []
    for line in DOC.read_text().splitlines():
        first = re.match(r"\|\s*([^|]+?)\s*\|", line)
        if first is None or "`" not in first.group(1):
            continue
        stale += [ident for tick in re.findall(r"`([^`]+)`", first.group(1)) for ident in re.findall(IDENT, tick)
                  if ident not in fields]
    assert not stale, f"docs/recipe.md lists keys the schema does not have: {stale}"
