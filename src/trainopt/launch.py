"""Re-running a command under torchrun: the `--nproc N` launcher of `trainopt run/train`, and the tuning worker's
trials run on several processes. It lives with the command line, not in the training loop's package."""

from __future__ import annotations

import subprocess
import sys


def torchrun_command(nproc: int, module_args: list[str], max_restarts: int = 0) -> list[str]:
    """`python -m torch.distributed.run` on this machine with `nproc` processes, each running `-m <module_args>`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}", "-m", *module_args]


def launch(nproc: int, argv: list[str], max_restarts: int = 0) -> int:
    """Re-run this trainopt command under torchrun with `nproc` processes; returns its exit status. With
    `max_restarts`, torchrun restarts every worker when one dies and the run resumes from its checkpoint."""
    return subprocess.call(torchrun_command(nproc, ["trainopt", *argv], max_restarts))
