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
