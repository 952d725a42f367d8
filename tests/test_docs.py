"""docs/recipe.md and the recipe schema cannot drift: the page's key tables are generated from the schema (the
recipe package and every technique's spec.py, found through the technique table), every key has a meaning, and what
the generator writes follows the annotations."""

from __future__ import annotations

import re
import typing
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from trainopt.recipe import reference
from trainopt.recipe.schema import Recipe
from trainopt.specbase import Doc, Strict
from trainopt.techniques import TECHNIQUES
from trainopt.train.spec import TrainSettings


def test_the_recipe_reference_is_generated_from_the_schema():
    page = reference.PAGE.read_text()
    assert reference.render(page) == page, "docs/recipe.md is stale: run `make docs`"
    assert reference.main(["--check"]) == 0


def test_every_stage_kind_has_a_section_with_its_keys():
    page = reference.PAGE.read_text()
    for kind, technique in TECHNIQUES.items():
        section = page.split(f"### kind: {kind}\n", 1)[1].split("\n### ", 1)[0]
        assert f"| `name` | str | `{kind}` | stage name" in section
        own = [n for n in technique.spec.model_fields if n not in ("kind", "from_stage", "budget")]
        if kind != "train" and issubclass(technique.spec, TrainSettings):  # its own keys after train's
            own = [n for n in own if n not in TrainSettings.model_fields]
        for name in own:
            assert f"| `{name}" in section, f"kind: {kind} does not list `{name}`"


def _walk(cls, where, seen, out):
    for name, info in cls.model_fields.items():
        out.append((f"{where}.{name}".lstrip("."), cls, name, info))
        for arg in [info.annotation, *typing.get_args(info.annotation)]:
            for sub in [arg, *typing.get_args(arg)]:
                if isinstance(sub, type) and issubclass(sub, BaseModel) and sub not in seen:
                    seen.add(sub)
                    _walk(sub, f"{where}.{name}", seen, out)


def test_every_key_has_a_meaning():
    """A key without a docstring is refused by the generator; here every reachable key is named at once."""
    fields: list = []
    seen: set = set()
    _walk(Recipe, "", seen, fields)
    for kind, technique in TECHNIQUES.items():
        _walk(technique.spec, f"stages[{kind}]", seen, fields)
    blocks_ok = {(cls, name) for _, cls, name, info in fields if reference._nested(info.annotation) is not None}
    missing = sorted(where for where, cls, name, info in fields
                     if not reference.meaning(cls, name) and name != "kind" and (cls, name) not in blocks_ok)
    assert not missing, f"write the meaning of these keys as a docstring under the field: {missing}"


class _Inner(Strict):
    depth: int = Field(2, ge=1, le=8)
    """how deep"""


class _Example(Strict):
    """An example stage."""

    rate: float = Field(5e-5, gt=0.0, lt=1.0)
    """the rate"""
    mode: Literal["a", "b"] = "a"
    """a or b"""
    width: int | None = Field(None, ge=16)
    """the width (null: the model's)"""
    inner: _Inner | None = None
    """an optional block"""
    items: Annotated[list[str], Doc(default="every item")] = []
    """which items"""
    pipe: str = "x"
    """a | b"""


def test_rows_follow_the_annotations():
    got = reference.rows(_Example)
    assert got == [
        "| `rate` | float in (0, 1) | 5e-5 | the rate |\n",
        "| `mode` | `a` \\| `b` | `a` | a or b |\n",
        "| `width` | int ≥ 16 or null | null | the width (null: the model's) |\n",
        "| `inner` | mapping or null | null | an optional block |\n",
        "| `inner.depth` | int in [1, 8] | 2 | how deep |\n",
        "| `items` | list[str] | every item | which items |\n",
        "| `pipe` | str | `x` | a \\| b |\n",
    ]


def test_a_key_without_a_meaning_is_refused():
    class Bare(Strict):
        size: int = 3

    with pytest.raises(ValueError, match="Bare.size has no docstring"):
        reference.rows(Bare)


def test_a_stale_page_is_found_and_rewritten(tmp_path, capsys):
    page = reference.PAGE.read_text()
    stale = tmp_path / "recipe.md"
    stale.write_text(re.sub(r"(\| `max_steps` \| )[^|]+", r"\1float ", page, count=1))
    assert reference.main(["--check", "--page", str(stale)]) == 1
    assert "stale" in capsys.readouterr().err
    assert reference.main(["--page", str(stale)]) == 0
    assert stale.read_text() == page
    with pytest.raises(ValueError, match="unknown keys block"):
        reference.render("<!-- keys: nothing -->\n<!-- /keys -->")
