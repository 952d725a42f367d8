"""Monitoring: metrics.jsonl, TensorBoard event files and a rich progress bar."""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

from .. import measure

console = Console(stderr=True)


class Window:
    """Training throughput between two log lines: tokens, summed step loss and steps, with the evaluation time
    inside the window left out (it is not training). `close` logs the line (loss, lr, tokens/s, MFU, peak memory)
    and starts the next window."""

    def __init__(self, name: str, log, device, flops_peak: float | None):
        self.name, self.log, self.device, self.flops_peak = name, log, device, flops_peak  # peak over every rank
        self.flops_per_token: float | None = None  # set from the first batch's sequence length
        self.rates: list[float] = []  # tokens/s of every closed window but the first (which holds the compile)
        self.eval_total = 0.0
        self._first = True
        self._reset()

    def _reset(self) -> None:
        self.tokens, self.loss, self.steps, self.eval_s, self.start = 0, 0.0, 0, 0.0, time.perf_counter()

    def steady(self) -> tuple[float | None, float | None]:
        """(tokens/s, MFU) in the steady state: the median window after the first — compile, warm-up and the
        first allocations fall in the first window, evaluations are left out of every window, a window with a
        checkpoint write is one of many. None with fewer than two windows after the first."""
        if len(self.rates) < 2:
            return None, None
        tps = sorted(self.rates)[len(self.rates) // 2]
        mfu = self._mfu(tps)
        return round(tps, 1), (None if mfu is None else float(f"{mfu:.4g}"))

    def _mfu(self, tps: float | None) -> float | None:
        return tps * self.flops_per_token / self.flops_peak if (self.flops_peak and tps and self.flops_per_token) \
            else None

    @property
    def eval_seconds(self) -> float:
        """Every evaluation so far, the open window's too (the last one runs after the last log line)."""
        return self.eval_total + self.eval_s

    def add(self, tokens: int, loss: float) -> None:
        self.tokens += tokens
        self.steps += 1
        self.loss += loss if math.isfinite(loss) else 0.0

    def close(self, step: int, epoch: int, lr: float, grad_norm, update) -> None:
        measure.sync(self.device)
        elapsed = time.perf_counter() - self.start - self.eval_s
        tps = self.tokens / elapsed if elapsed > 0 else None
        self.eval_total += self.eval_s
        if tps and not self._first:
            self.rates.append(tps)
        self._first = False
        mfu = self._mfu(tps)
        mem = measure.peak_memory_bytes(self.device)
        loss = self.loss / max(self.steps, 1)
        self.log.log(self.name, step, loss=round(loss, 5), lr=lr, grad_norm=round(float(grad_norm), 4),
                     tokens_per_s=round(tps or 0, 1), mfu=None if mfu is None else round(mfu, 4), epoch=epoch,
                     peak_mem_bytes=mem)
        update(info=f"loss {loss:.4f} lr {lr:.2e} {(tps or 0):,.0f} tok/s" + (f" MFU {mfu:.1%}" if mfu else "")
                    + f" mem {mem / 2**20:,.0f} MiB")
        self._reset()


class MetricsLog:
    """Appends one JSON object per event to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb_dir = Path(run_dir) / "tensorboard"
        self._tb = None
        self._tb_enabled = tensorboard

    def _writer(self):
        if self._tb is None and self._tb_enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a pinned dependency; degrade to jsonl only if absent
                self._tb_enabled = False
                return None
            self._tb = SummaryWriter(log_dir=str(self.tb_dir), flush_secs=10)
        return self._tb

    def log(self, stage: str, step: int, **values) -> None:
        row = {"time": round(time.time(), 3), "stage": stage, "step": step}
        row.update({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        tb = self._writer()
        if tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    tb.add_scalar(f"{stage}/{k}", v, step)

    def truncate(self, stage: str, after_step: int) -> None:
        """On resume: forget this stage's events logged after the checkpoint (they will be replayed)."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if row.get("stage") == stage and row.get("step", 0) > after_step:
                continue
            keep.append(line)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
        tmp.replace(self.path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class NullLog:
    """The metrics log of ranks other than 0: rank 0 alone writes metrics.jsonl and TensorBoard."""

    def log(self, stage: str, step: int, **values) -> None:
        pass

    def truncate(self, stage: str, after_step: int) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


@contextmanager
def progress_bar(enabled: bool, description: str, total: int, completed: int = 0, every_s: float = 30.0):
    """Yields update(advance=…, info=…, completed=…); the last info (the loss line) stays until a new one comes. On
    a terminal, a rich bar; in a log (no terminal), a plain line at most every `every_s` seconds and at the end. A
    no-op when progress is disabled."""
    if not enabled:
        yield lambda advance=0, info=None, completed=None: None
        return
    if not console.is_terminal:
        state = {"done": completed, "info": "", "last": time.monotonic(), "start": time.monotonic()}

        def line():
            console.print(f"{description} {state['done']}/{total} {state['info']} "
                          f"({time.monotonic() - state['start']:.0f} s)".replace("  ", " "), highlight=False)
            state["last"] = time.monotonic()

        def plain(advance: int = 0, info: str | None = None, completed: int | None = None):
            state["done"] = completed if completed is not None else state["done"] + advance
            if info is not None:
                state["info"] = info
            if time.monotonic() - state["last"] >= every_s:
                line()

        yield plain
        line()
        return
    bar = Progress(TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn(), console=console, transient=False)
    with bar:
        task = bar.add_task(description, total=total, completed=completed, info="")

        def update(advance: int = 0, info: str | None = None, completed: int | None = None):
            if completed is not None:  # a rollback moved the step counter back
                bar.update(task, completed=completed)
                return
            if info is None:
                bar.update(task, advance=advance)
            else:
                bar.update(task, advance=advance, info=info)

        yield update
