"""The directories trainopt writes (a run, a tuning study): marked as trainopt's when created, so that `--overwrite`
deletes only what trainopt made and `--resume` continues only a trainopt directory of the same kind; locked while a
process writes them, so that two processes cannot write (or delete) one directory at once. Written by hand: it is a few lines of os/fcntl, and no library here
knows what trainopt created."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from .errors import TrainoptError
from .version import __version__

MARKER = ".trainopt"  # JSON {"kind": "run" | "study", "trainopt_version": …}: trainopt made this folder
# folders made before the marker existed: recognised by what trainopt writes in them
LEGACY = {"run": ("recipe.yaml", "stages"), "study": ("recipe.yaml", "trials")}
LOCK = ".trainopt.lock"  # flock'd by the process writing the run (released by the OS when it dies)


class RunLock:
    """An exclusive lock on a run directory for as long as this object is held (or the process lives)."""

    def __init__(self, path: Path):
        self.path = path
        self._fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            raise TrainoptError(f"another trainopt process (pid {holder}) is writing {path}; wait for it to finish, "
                                "or use --out DIR for a new run") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def made_by_trainopt(path: Path, kind: str = "run") -> str | None:
    """The kind of trainopt folder `path` is ("run", "study"), or None when trainopt did not make it."""
    marker = path / MARKER
    if marker.is_file():
        try:
            return str(json.loads(marker.read_text()).get("kind", kind))
        except (OSError, ValueError, AttributeError):
            return kind  # a damaged marker is still trainopt's
    first, second = LEGACY[kind]
    return kind if (path / first).is_file() and (path / second).is_dir() else None


def is_trainopt_run(path: Path) -> bool:
    return made_by_trainopt(path, "run") == "run"


def claim(path: Path, resume: bool, overwrite: bool, inputs: dict[str, str | None], kind: str = "run") -> RunLock:
    """Make `path` this run's (or study's) directory and lock it. Refuses, before touching anything: a file; an
    existing folder without --resume or --overwrite; --resume or --overwrite of a folder trainopt did not create, or
    of another kind; --overwrite of a folder that holds one of the run's own inputs (`inputs`: recipe key → path) or
    the current directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TrainoptError(f"--out {path} is a file, not a directory; give a directory for the {kind}")
    contents = [p for p in path.iterdir() if p.name != LOCK] if path.is_dir() else []
    made = made_by_trainopt(path, kind) if contents else None
    if made is not None and made != kind:
        raise TrainoptError(f"{path} is a trainopt {made} directory, not a {kind} directory; nothing in it was "
                            "touched; use --out DIR")
    ours = made == kind
    if contents and not ours and (resume or overwrite):
        action = f"continue a {kind} in" if resume else "delete"
        raise TrainoptError(f"refusing to {action} {path}: trainopt did not create it (no {MARKER} there), so nothing "
                            "in it was touched; use --out DIR for a new run directory")
    if contents and not (resume or overwrite):
        raise TrainoptError(f"{kind} directory {path} already exists; pass --resume to continue it, --overwrite to "
                            "replace it, or --out DIR for a new one")
    if contents and overwrite and not resume:
        _refuse_inputs_inside(path, inputs)
    path.mkdir(parents=True, exist_ok=True)
    lock = RunLock(path)  # taken before anything is deleted: a second run never deletes a running one's files
    if contents and overwrite and not resume:
        for child in path.iterdir():
            if child.name == LOCK:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    marker = path / MARKER
    if not marker.is_file():
        tmp = marker.with_name(MARKER + ".tmp")
        tmp.write_text(json.dumps({"kind": kind, "trainopt_version": __version__}))
        os.replace(tmp, marker)
    return lock


def _refuse_inputs_inside(path: Path, inputs: dict[str, str | None]) -> None:
    root = path.resolve()
    cwd = Path.cwd().resolve()
    if cwd == root or root in cwd.parents:
        raise TrainoptError(f"refusing to delete {path}: the current directory is inside it; run from elsewhere or "
                            "use --out DIR")
    for key, value in inputs.items():
        if not value or str(value).startswith("builtin:"):
            continue
        try:
            target = Path(value).expanduser().resolve()
        except (RuntimeError, OSError):  # an unknown ~user: not a path inside the run directory
            continue
        if target == root or root in target.parents:
            raise TrainoptError(f"refusing to delete {path}: {key} ({value}) is inside it and --overwrite would "
                                "delete it; use --out DIR for the run")
