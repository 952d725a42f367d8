"""Missing files are recipe errors too: every path a recipe names is checked before any work starts."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from ..errors import RecipeError
from ..specbase import BUILTIN_DATA, BUILTIN_MODELS, stage_key
from .load import is_builtin
from .schema import Recipe


def check_paths(recipe: Recipe) -> None:
    """Name the key and the fix for a remote, missing or unknown-built-in path. Each stage lists its own paths
    (`StageBase.paths()`), so this module knows no technique."""
    if re.match(r"^(https?|s3|gs|hf)://", str(recipe.model.path or "")):
        raise RecipeError("model.path", "remote models are not downloaded", "give a local HF checkpoint folder")
    checks = [("model.path", recipe.model.path, BUILTIN_MODELS), ("model.tokenizer", recipe.model.tokenizer,
                                                                   BUILTIN_MODELS),
              ("data.source", recipe.data.source, BUILTIN_DATA),
              *[(stage_key(i, key), ref, builtins) for i, s in enumerate(recipe.stages)
                for key, ref, builtins in s.paths()],
              ("data.validation_source", recipe.data.validation_source, ()),
              ("data.test_source", recipe.data.test_source, ())]
    for key, ref, builtins in checks:
        if ref is None:
            continue
        if is_builtin(ref):
            if ref not in builtins:
                close = difflib.get_close_matches(ref, builtins, n=1)
                raise RecipeError(key, f"unknown built-in '{ref}'",
                                  f"did you mean '{close[0]}'?" if close else f"built-ins: {', '.join(builtins)}")
            continue
        try:
            local = Path(ref).expanduser()
        except RuntimeError:  # ~user of a user this machine does not know
            raise RecipeError(key, f"cannot expand {ref.split('/')[0]} in {ref}: no such user here",
                              "give the full path") from None
        if not local.exists():
            raise RecipeError(key, f"path {ref} does not exist", "give an existing local path (or a builtin:… name)")
        if not (local.is_file() or local.is_dir()):  # /dev/zero, a FIFO, a socket: reading never ends or blocks
            raise RecipeError(key, f"{ref} is not a regular file or folder (a device, pipe or socket)",
                              "copy the data into a file and name that")
