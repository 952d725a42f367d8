"""Atomic training checkpoints: model, optimizer, scheduler, scaler, RNG states and the data position.

A checkpoint is a folder `step-XXXXXXXX/` written under a temporary name, every file fsynced, then renamed;
`manifest.json` (sizes + SHA-256 of every file) is written last inside the temporary folder, so a folder
without a valid manifest is never mistaken for a complete checkpoint. The manifest detects accidents (a torn write,
a truncated copy, a flipped bit), not tampering: whoever can rewrite a checkpoint can rewrite its manifest too, so
a checkpoint folder is trusted like any file its owner can write. Tensors load with safetensors or
`torch.load(weights_only=True)`: a checkpoint can never run code.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import random
import shutil
import threading
from pathlib import Path

import torch
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model

from .faults import Faults

PREFIX = "step-"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_full_weights(state: dict, path) -> None:
    """A full state dict (FSDP2's gathered one) to safetensors; tied tensors are written under each name."""
    from safetensors.torch import save_file

    seen, out = set(), {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else None
        out[k] = v.clone().contiguous() if ptr in seen else v.contiguous()
        seen.add(ptr)
    save_file(out, str(path))


def save_checkpoint(ckpt_root: Path, step: int, model, optimizer, scheduler, scaler, train_state: dict,
                    keep: int = 2, states: tuple[dict, dict] | None = None, faults=None) -> Path:
    """Write a checkpoint now (Writer(background=False)); see Writer.save."""
    return Writer(background=False).save(ckpt_root, step, model, optimizer, scheduler, scaler, train_state, keep,
                                         states, faults)


class _Weights:
    """A host copy of a model's state dict, shaped like the module safetensors' save_model takes (it calls
    state_dict() and drops the names that share storage, as for the module itself)."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return dict(self._state)


def _to_host(obj, copies: dict, buffers: dict, path: str = ""):
    """Tensors copied to host memory, storage sharing kept (tied weights stay one tensor); containers rebuilt.
    CUDA tensors go into page-locked buffers kept in `buffers` (by position in the state, reused by the next
    checkpoint), copied asynchronously on the current stream: the caller synchronises once for all of them."""
    if isinstance(obj, torch.Tensor):
        key = (obj.untyped_storage().data_ptr(), obj.storage_offset(), tuple(obj.shape)) if obj.numel() else None
        if key is not None and key in copies:
            return copies[key]
        if obj.is_cuda:
            buf = buffers.get(path)
            if buf is None or buf.shape != obj.shape or buf.dtype != obj.dtype:
                buf = buffers[path] = torch.empty(obj.shape, dtype=obj.dtype, pin_memory=True)
            out = buf.copy_(obj.detach(), non_blocking=True)
        else:
            out = obj.detach().to("cpu", copy=True)
        if key is not None:
            copies[key] = out
        return out
    if isinstance(obj, dict):
        return {k: _to_host(v, copies, buffers, f"{path}/{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_host(v, copies, buffers, f"{path}/{i}") for i, v in enumerate(obj))
    return obj


class Writer:
    """Writes the training checkpoints. With `background` (CUDA by default: `async_checkpoint`), the tensors are
    copied to host memory on the training thread — into page-locked buffers allocated once, at copy-engine speed:
    the only part the GPU waits for — and one background thread
    writes, hashes, fsyncs and renames, while training goes on; the next save, a rollback and the end of training
    wait for it (`wait`), and an error in it (a full disk) is raised there. A kill mid-write leaves a temporary folder
    without a manifest, which is never taken for a checkpoint, exactly as for a write on the training thread."""

    def __init__(self, background: bool):
        self.background = background
        self._thread = None
        self._error: BaseException | None = None
        self._buffers: dict = {}  # page-locked host copies of the CUDA tensors, reused by every checkpoint

    def save(self, ckpt_root: Path, step: int, model, optimizer, scheduler, scaler, train_state: dict,
             keep: int = 2, states: tuple[dict, dict] | None = None, faults=None) -> Path:
        """`states`: (model, optimizer) state dicts gathered from a sharded (FSDP2) model, written instead of the
        module's own. `faults` (train/faults.py): the kill-safety harness may SIGKILL the process at a phase of
        this write (weights written / manifest written / renamed)."""
        self.wait()
        weights = states[0] if states is not None else model.state_dict()
        trainer = {"optimizer": optimizer.state_dict() if states is None else states[1],
                   "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None}
        rng = rng_state()
        final = Path(ckpt_root) / f"{PREFIX}{step:08d}"
        if not self.background:
            _write(Path(ckpt_root), step, weights, states is not None, trainer, rng, train_state, keep, faults)
            return final
        copies: dict = {}
        weights = _to_host(weights, copies, self._buffers, "weights")
        trainer = _to_host(trainer, copies, self._buffers, "trainer")
        if torch.cuda.is_available():
            torch.cuda.current_stream().synchronize()  # the copies are done before training changes the tensors
        def work():
            try:
                _write(Path(ckpt_root), step, weights, states is not None, trainer, rng, dict(train_state), keep,
                       faults)
            except BaseException as e:  # noqa: BLE001 — re-raised on the training thread by wait()
                self._error = e

        self._thread = threading.Thread(target=work, name=f"checkpoint-{step}", daemon=False)
        self._thread.start()
        return final

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _write(ckpt_root: Path, step: int, weights: dict, gathered: bool, trainer: dict, rng: dict, train_state: dict,
           keep: int, faults) -> None:
    kill = (faults or Faults()).kill_in
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"{PREFIX}{step:08d}"
    tmp = ckpt_root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_files(tmp, step, weights, gathered, trainer, rng, train_state, kill)
    except BaseException as e:
        # torch.save and safetensors report a full disk as a RuntimeError / SafetensorError ("unexpected pos …"),
        # not as ENOSPC: a write that failed with the filesystem (nearly) full is said to be that
        full = not isinstance(e, OSError) and shutil.disk_usage(ckpt_root).free < FULL_BELOW
        shutil.rmtree(tmp, ignore_errors=True)  # no half-written folder left, its space given back
        if full:
            raise OSError(errno.ENOSPC, "No space left on device", str(final)) from e
        raise
    kill(step, "manifest")
    if final.exists():  # a re-run of the same step after a resume: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    kill(step, "renamed")
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


FULL_BELOW = 4 * 2**20  # bytes free under which a failed checkpoint write is taken for a full disk


def _write_files(tmp: Path, step: int, weights: dict, gathered: bool, trainer: dict, rng: dict, train_state: dict,
                 kill) -> None:
    """The checkpoint's files in `tmp`, each fsynced, and the manifest of their sizes and hashes."""
    if gathered:
        save_full_weights(weights, tmp / "model.safetensors")
    else:
        st_save_model(_Weights(weights), str(tmp / "model.safetensors"))
    kill(step, "weights")
    torch.save({**trainer, "rng_torch": rng["torch"], "rng_cuda": rng.get("cuda")}, tmp / "trainer.pt")
    py = rng["python"]
    (tmp / "state.json").write_text(json.dumps({"train": train_state,
                                                "python_rng": [py[0], list(py[1]), py[2]]}))
    files = {}
    for f in sorted(tmp.iterdir()):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
        files[f.name] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
    manifest = tmp / "manifest.json"
    manifest.write_text(json.dumps({"step": step, "files": files}, indent=1))
    with open(manifest, "rb") as fh:
        os.fsync(fh.fileno())
    _fsync_dir(tmp)


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def is_complete(path: Path) -> bool:
    manifest = path / "manifest.json"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False
    for name, info in files.items():
        f = path / name
        if not f.is_file() or f.stat().st_size != info["bytes"] or _sha256(f) != info["sha256"]:
            return False
    return True


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint; incomplete or corrupt ones are skipped."""
    for path in reversed(list_checkpoints(ckpt_root)):
        if is_complete(path):
            return path
    return None


def load_checkpoint(path: Path, model, optimizer, scheduler, scaler, device, sharded: bool = False) -> dict:
    """Restore everything saved by save_checkpoint; returns the saved train state. `sharded`: the model is an FSDP2
    module (every rank reads the full state and keeps its shard)."""
    if not sharded:
        st_load_model(model, str(path / "model.safetensors"), device=str(device))
    try:
        trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        from ..errors import unsafe_pickle

        raise unsafe_pickle("", path / "trainer.pt", e) from None
    if sharded:
        from safetensors.torch import load_file

        from .distributed import load_full_state

        load_full_state(model, load_file(str(path / "model.safetensors")), optimizer, trainer["optimizer"])
    else:
        optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    if scaler is not None and trainer["scaler"] is not None:
        scaler.load_state_dict(trainer["scaler"])
    state = json.loads((path / "state.json").read_text())
    set_rng_state({"torch": trainer["rng_torch"], "python": state["python_rng"],
                   **({"cuda": trainer["rng_cuda"]} if trainer.get("rng_cuda") is not None else {})})
    return state["train"]
