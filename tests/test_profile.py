"""train/profile.py: a stage's `profile:` key profiles the chosen steps and writes a trace and an op table."""

import json


def test_profile_writes_a_trace_and_the_costliest_ops(tmp_path, tiny_gpt_dir, austen_text):
    from trainopt import run

    book = tmp_path / "book.txt"
    book.write_text(austen_text)
    raw = {"name": "prof", "task": "causal_lm", "model": {"path": str(tiny_gpt_dir), "dropout": 0.0},
           "data": {"source": str(book), "block_size": 32},
           "stages": [{"kind": "train", "name": "pre", "max_steps": 6, "batch_size": 4, "log_every": 1,
                       "profile": {"start": 3, "steps": 2, "top": 15}}],
           "run": {"seed": 0, "progress": False}, "measure": {"latency": False}}
    run(raw, out=tmp_path / "r")
    folder = tmp_path / "r/stages/pre/profile"
    table = (folder / "top_ops_rank0.txt").read_text()
    assert table.startswith("steps 3..4, rank 0") and "aten::" in table
    assert "aten::addmm" in table or "aten::mm" in table  # the model's matmuls were recorded
    trace = json.loads((folder / "trace_rank0.json").read_text())
    assert any(e.get("name", "").startswith("aten::") for e in trace["traceEvents"])


def test_profile_window_past_the_end_still_writes(tmp_path, tiny_gpt_dir, austen_text):
    from trainopt import run

    book = tmp_path / "book.txt"
    book.write_text(austen_text)
    raw = {"name": "prof", "task": "causal_lm", "model": {"path": str(tiny_gpt_dir), "dropout": 0.0},
           "data": {"source": str(book), "block_size": 32},
           "stages": [{"kind": "train", "name": "pre", "max_steps": 3, "batch_size": 4,
                       "profile": {"start": 2, "steps": 10}}],
           "run": {"seed": 0, "progress": False}, "measure": {"latency": False}}
    run(raw, out=tmp_path / "r")
    assert (tmp_path / "r/stages/pre/profile/top_ops_rank0.txt").exists()
