"""Kill safety: SIGKILL at many points of a training run — between steps and inside checkpoint writes — and resume
each time; the final weights must equal an uninterrupted run's, bit for bit (CPU, deterministic mode).

The default suite kills at two points (one inside a checkpoint write); `make stress` runs the 20-point harness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from trainopt.train.monitor import read_metrics

from .conftest import classification_recipe

# 20 kill points in training order, for a 3-epoch run (42 steps) with a checkpoint every 3 steps. Each resumed
# process gets the next point, always later than the checkpoint it resumes from, so every one is reached.
KILL_POINTS = [("step", 2), ("ckpt", "3:weights"), ("step", 4), ("ckpt", "6:manifest"), ("step", 7), ("step", 8),
               ("ckpt", "9:renamed"), ("step", 11), ("ckpt", "12:weights"), ("step", 13), ("step", 16),
               ("ckpt", "18:manifest"), ("step", 19), ("step", 22), ("ckpt", "24:renamed"), ("step", 26),
               ("step", 29), ("ckpt", "33:weights"), ("step", 35), ("step", 40)]


def _recipe(tmp_path, tiny_bert_dir, reviews_dir):
    # keep_best off: the final weights are the last step's, so any divergence after a resume shows
    raw = classification_recipe(tiny_bert_dir, reviews_dir, epochs=3, checkpoint_every=3, eval_every=7,
                                keep_best=False)
    raw["model"]["dropout"] = 0.1  # dropout draws random numbers: the RNG state must resume too
    raw["run"]["deterministic"] = True
    raw["measure"]["latency"] = False
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(args, point=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINOPT_FAULT")}
    if point is not None:
        env["TRAINOPT_FAULT_KILL_AT_STEP" if point[0] == "step" else "TRAINOPT_FAULT_KILL_IN_CHECKPOINT"] = str(point[1])
    return subprocess.run([sys.executable, "-m", "trainopt", "run", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def kill_and_resume(tmp_path, tiny_bert_dir, reviews_dir, points) -> dict:
    recipe = _recipe(tmp_path, tiny_bert_dir, reviews_dir)
    clean = _run([recipe, "--out", tmp_path / "clean"])
    assert clean.returncode == 0, clean.stderr[-2000:]
    out, resumes, t0 = tmp_path / "killed", [], time.perf_counter()
    for i, point in enumerate(points):
        p = _run([recipe, "--out", out, *(["--resume"] if i else [])], point)
        assert p.returncode == -9, f"kill point {point} was not reached: {p.stderr[-1500:]}"
        assert not (out / "report.json").exists()
        resumes.append(next((line.split("from step ")[1].split()[0] for line in p.stderr.splitlines()
                             if "resuming finetune from step" in line), "start"))
    final = _run([recipe, "--out", out, "--resume"])
    assert final.returncode == 0, final.stderr[-2000:]
    a = load_file(tmp_path / "clean/stages/finetune/model/model.safetensors")
    b = load_file(out / "stages/finetune/model/model.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different
    steps = [r["step"] for r in read_metrics(out) if r.get("stage") == "finetune" and "loss" in r]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # replayed steps are not logged twice
    leftovers = list((out / "stages").rglob(".tmp-*"))
    assert not leftovers  # no half-written checkpoint was left behind or taken for a complete one
    return {"kill_points": len(points), "clean_resumes": len(points), "bit_identical": True,
            "resumed_from": resumes, "wall_s": round(time.perf_counter() - t0, 1)}


def test_kill_between_steps_and_inside_a_checkpoint_write(tmp_path, tiny_bert_dir, reviews_dir):
    result = kill_and_resume(tmp_path, tiny_bert_dir, reviews_dir, [("ckpt", "6:manifest"), ("step", 11)])
    # the first process dies inside the write of checkpoint 6: the half-written one is ignored and the second
    # process resumes from checkpoint 3 (then dies at step 11; the last one resumes from 9 and finishes)
    assert result["resumed_from"] == ["start", "3"]


@pytest.mark.stress
def test_twenty_kill_points(tmp_path, tiny_bert_dir, reviews_dir):
    result = kill_and_resume(tmp_path, tiny_bert_dir, reviews_dir, KILL_POINTS)
    print("\nSTRESS kill-safety:", json.dumps(result))


def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_run_resumes(tmp_path, tiny_bert_dir, reviews_dir,
                                                                         monkeypatch, capsys):
    """ENOSPC while a checkpoint is written: one line naming the disk and the way on (exit 1), the earlier
    checkpoint kept; with space again, --resume finishes the run."""
    import errno

    from trainopt.cli import main
    from trainopt.train import checkpoint as ckpt

    recipe, out = _recipe(tmp_path, tiny_bert_dir, reviews_dir), tmp_path / "full"
    write = ckpt._write

    def full_at_six(root, step, *a, **kw):
        if step == 6:
            raise OSError(errno.ENOSPC, "No space left on device", str(root / "step-00000006"))
        return write(root, step, *a, **kw)

    monkeypatch.setattr(ckpt, "_write", full_at_six)
    assert main(["run", str(recipe), "--out", str(out)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trainopt:")]
    assert len(err) == 1 and "disk full" in err[0] and "--resume" in err[0], err
    assert [p.name for p in ckpt.list_checkpoints(out / "stages/finetune/checkpoints")] == ["step-00000003"]
    monkeypatch.setattr(ckpt, "_write", write)
    assert main(["run", str(recipe), "--out", str(out), "--resume"]) == 0
    assert (out / "report.json").is_file()


def test_a_resume_forgets_a_dead_process_without_checkpoint_and_its_half_written_folders(tmp_path, tiny_bert_dir,
                                                                                         reviews_dir):
    """Killed before its first checkpoint, the dead process's logged steps are not kept next to the new ones; a
    folder half-written by a process killed inside a checkpoint write is removed when the next one starts."""
    raw = yaml.safe_load(_recipe(tmp_path, tiny_bert_dir, reviews_dir).read_text())
    raw["stages"][0].update(checkpoint_every=10, log_every=2)
    recipe = tmp_path / "late.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / "k"
    assert _run([recipe, "--out", out], ("step", 5)).returncode == -9
    assert {r["step"] for r in read_metrics(out) if "loss" in r} == {2, 4}
    assert _run([recipe, "--out", out, "--resume"], ("ckpt", "20:manifest")).returncode == -9
    steps = [r["step"] for r in read_metrics(out) if "loss" in r]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) and steps[-1] == 20
    ckpts = out / "stages/finetune/checkpoints"
    assert list(ckpts.glob(".tmp-*"))  # the dead write's folder
    assert _run([recipe, "--out", out, "--resume"], ("step", 22)).returncode == -9
    assert not list(ckpts.glob(".tmp-*"))  # removed when the next process started, not at the stage's end


def test_a_real_full_disk_ends_in_one_line_and_resumes_bit_identically(tmp_path, tiny_bert_dir, reviews_dir):
    """On a small tmpfs (root can mount one; skipped otherwise) the disk really fills while a checkpoint is written:
    one line naming the full disk (exit 1), the last complete checkpoint intact; with the space back, --resume ends
    with the uninterrupted run's weights, bit for bit."""
    import shutil

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("this machine does not let root mount a tmpfs")
    try:
        recipe = _recipe(tmp_path, tiny_bert_dir, reviews_dir)
        clean = _run([recipe, "--out", tmp_path / "clean"])
        assert clean.returncode == 0, clean.stderr[-2000:]
        out = mnt / "run"
        assert _run([recipe, "--out", out], ("step", 4)).returncode == -9  # a checkpoint at step 3, then killed
        (first,) = sorted((out / "stages/finetune/checkpoints").glob("step-*"))
        size = sum(f.stat().st_size for f in first.rglob("*") if f.is_file())
        st = os.statvfs(mnt)
        ballast = mnt / "ballast"
        ballast.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - size // 2))  # room for half a checkpoint
        full = _run([recipe, "--out", out, "--resume"])
        assert full.returncode == 1, full.stderr[-2000:]
        lines = [line for line in full.stderr.splitlines() if line.startswith("trainopt:")]
        assert len(lines) == 1 and "disk full" in lines[0] and "--resume" in lines[0], full.stderr[-2000:]
        assert "Traceback" not in full.stderr
        kept = sorted(p.name for p in (out / "stages/finetune/checkpoints").glob("step-*"))
        assert kept == [first.name]
        ballast.unlink()
        final = _run([recipe, "--out", out, "--resume"])
        assert final.returncode == 0, final.stderr[-2000:]
        a = load_file(tmp_path / "clean/stages/finetune/model/model.safetensors")
        b = load_file(out / "stages/finetune/model/model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
