"""A saved folder's `trainopt.json`: what trainopt records next to the weights (task, label names, cleaning, pruned
shapes, quantization, LoRA base, SFT template) and the one reader every loader goes through.

The file comes from disk and may be damaged or hand-edited: `read_meta` checks the types of the keys trainopt reads
(pydantic) and turns anything else into one line naming the file, before a loader indexes into it. Keys it does not
know are kept (a newer trainopt may write more).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import TrainoptError

META_FILE = "trainopt.json"


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class Structure(_Part):
    """Per-layer shapes that the config cannot express (compress/blocks.py): heads kept and FFN width per block."""
    heads: list[int | None] | None = None
    intermediate: list[int] = Field(min_length=1)


class Quantization(_Part):
    format: str | None = None  # "torchao" (weight_only.py); dynamic int8 (dynamic.py) writes its own keys


class SftMeta(_Part):
    template: Literal["chat", "plain"]
    system: str | None = None


class LoraMeta(_Part):
    base: str | None = None
    quantize_base: dict[str, Any] | None = None


class SavedMeta(_Part):
    task: Literal["classification", "causal_lm"] | None = None
    labels: list[str] | None = None
    max_length: int | None = None
    block_size: int | None = None
    clean: dict[str, Any] | None = None
    structure: Structure | None = None
    quantization: Quantization | None = None
    sft: SftMeta | None = None
    lora: LoraMeta | None = None


def meta_problem(model_dir: Path) -> str | None:
    """Why a folder's trainopt.json cannot be used (not JSON, not an object, a key of the wrong type); None when it is
    absent or sound."""
    return _read(Path(model_dir) / META_FILE)[1]


def read_meta(model_dir: Path) -> dict:
    """The folder's trainopt.json as a dict ({} when there is none), its known keys type-checked."""
    data, problem = _read(Path(model_dir) / META_FILE)
    if problem:
        raise TrainoptError(f"{problem}; restore the folder or save it again")
    return data


def _read(path: Path) -> tuple[dict, str | None]:
    if not path.is_file():
        return {}, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return {}, f"{path} is not valid JSON ({str(e).splitlines()[0][:100]})"
    if not isinstance(data, dict):
        return {}, f"{path} holds a JSON {type(data).__name__}, not an object"
    try:
        SavedMeta.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return {}, f"{path} is damaged: {where}: {first['msg'][:100].lower()}"
    return data, None
