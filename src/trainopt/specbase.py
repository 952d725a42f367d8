"""The small base every recipe schema builds on: strict models, stage names, the built-in asset names and the one
helper that spells an error's key. It imports only pydantic, so a technique's `spec.py` can import it without
pulling in torch or any other technique (and `trainopt check` stays light)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

BUILTIN_MODELS = ("builtin:minilm-l6", "builtin:smollm2-135m")
BUILTIN_DATA = ("builtin:fine_foods", "builtin:austen")
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StageBase(Strict):
    name: str = Field("stage", pattern=NAME)
    from_stage: str | None = None  # start from this earlier stage's model instead of the previous stage's

    def paths(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """(key under the stage, path or builtin name, the builtins allowed there) for every path this stage
        reads: checked before any work starts (recipe/paths.py)."""
        return []

    def trainings(self) -> list[tuple[str, object]]:
        """(key under the stage, TrainSettings) of every training this stage runs (checked together)."""
        return []


def stage_key(index: int, *parts: str) -> str:
    """The key an error names for a stage setting: `stages.<index>.<key>` (the one spelling every error uses)."""
    return ".".join(["stages", str(index), *[p for p in parts if p]])
