"""User-facing errors: one line that names the problem and the fix; the CLI exits with status 2."""

from __future__ import annotations


class TrainoptError(Exception):
    """An error the user can fix (bad recipe, missing file, bad data). Printed as one line, exit 2."""

    exit_code = 2


class RecipeError(TrainoptError):
    """The recipe is malformed, has an unknown key, a wrong type or value, or incompatible options."""

    def __init__(self, key: str, problem: str, fix: str | None = None):
        self.key, self.problem, self.fix = key, problem, fix
        msg = f"recipe error: {key}: {problem}" if key else f"recipe error: {problem}"
        if fix:
            msg += f" — {fix}"
        super().__init__(msg)


class DataError(TrainoptError):
    """The data cannot be used as asked (missing column, empty split, unseen label, unreadable file)."""

    def __init__(self, message: str):
        super().__init__(f"data error: {message}")


class AssetError(TrainoptError):
    """A built-in asset (demo data set or model) is missing and must be fetched first."""

    def __init__(self, message: str):
        super().__init__(f"asset error: {message}")


def unsafe_pickle(key: str, path, e: Exception) -> RecipeError:
    """A pickled weights file that holds more than tensors (code a pickle would run): refused, never executed —
    weights load with safetensors or torch.load(weights_only=True) only."""
    what = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line or "Unsupported" in line),
                str(e).splitlines()[0] if str(e) else type(e).__name__)
    return RecipeError(key, f"refused to load {path}: its pickled weights hold more than tensors ({what[:140]})",
                       "use a safetensors checkpoint from a source you trust")


def first_line(e: BaseException) -> str:
    """An exception from a library as a short phrase for a one-line error: its type and its message's first line."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__
