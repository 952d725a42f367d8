"""Profiling a few training steps with torch.profiler (a stage's `profile:` key).

The loop calls `before(step)` at the start of every optimizer step and `after(step)` at its end; the profiler runs
over steps [start, start + steps) only, so warm-up and compilation stay out. On the last profiled step it writes,
under the stage folder's `profile/`, rank 0's Chrome trace and a table of the ops with the most self time (CUDA
time first where there is a GPU; the loop profiles rank 0 only, which alone writes the run directory). torch.profiler does the measuring; this only scopes it to the chosen steps.
"""

from __future__ import annotations

from pathlib import Path

import torch


class StepProfiler:
    def __init__(self, spec, out_dir: Path, rank: int, device: torch.device):
        self.spec, self.out_dir, self.rank, self.device = spec, out_dir, rank, device
        self.prof = None
        self.done = spec is None

    def before(self, step: int) -> None:
        """`step`: the 1-based number of the optimizer step about to run."""
        if self.done or self.prof is not None or step != self.spec.start:
            return
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        self.prof = profile(activities=activities, record_shapes=False, with_stack=False)
        self.prof.__enter__()

    def after(self, step: int) -> None:
        if self.prof is None or step < self.spec.start + self.spec.steps - 1:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.prof.__exit__(None, None, None)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prof.export_chrome_trace(str(self.out_dir / f"trace_rank{self.rank}.json"))
        averages = self.prof.key_averages()
        keys = ["self_cuda_time_total", "self_cpu_time_total"] if self.device.type == "cuda" else \
            ["self_cpu_time_total"]  # on a GPU the host's view too: where the CPU time went (launch/dispatch)
        for key, name in zip(keys, ("top_ops", "top_cpu_ops")):
            head = (f"steps {self.spec.start}..{self.spec.start + self.spec.steps - 1}, rank {self.rank}, sorted by "
                    f"{key}\n")
            table = averages.table(sort_by=key, row_limit=self.spec.top)
            (self.out_dir / f"{name}_rank{self.rank}.txt").write_text(head + table)
        self.prof, self.done = None, True

    def close(self) -> None:
        """A stage that ends (or stops early) inside the profiled window still writes what it has."""
        if self.prof is not None:
            self.after(self.spec.start + self.spec.steps)
