"""Fault injection for the resume and recovery tests (and `make stress`): a kill, a NaN or a x1000 loss spike at a
given step, or a kill inside a checkpoint's write. The loop takes a `Faults` object from its RunContext; in-process
tests build one directly, and a test that must kill a real process (a `trainopt run` subprocess, a torchrun worker)
sets the TRAINOPT_FAULT_* variables, which `runner.run` reads once per run when it is given no `Faults`
(`Faults.from_env`). Nothing below it reads the environment for faults. A NaN or spike fires once per run (in the first
stage that reaches the step); a kill fires in every stage that reaches its step."""

from __future__ import annotations

import os
from dataclasses import dataclass

ENV = {"kill_at": "TRAINOPT_FAULT_KILL_AT_STEP", "nan_at": "TRAINOPT_FAULT_NAN_AT_STEP",
       "spike_at": "TRAINOPT_FAULT_SPIKE_AT_STEP", "kill_in_checkpoint": "TRAINOPT_FAULT_KILL_IN_CHECKPOINT",
       "kill_in_stage": "TRAINOPT_FAULT_KILL_IN_STAGE"}


@dataclass
class Faults:
    kill_at: int = 0  # SIGKILL this process once it has finished optimizer step N (its checkpoint included)
    nan_at: int = 0  # step N's loss becomes NaN (once)
    spike_at: int = 0  # step N's loss is multiplied by 1000 (once)
    # "STEP:PHASE": SIGKILL inside that checkpoint's write, PHASE one of weights / manifest / renamed
    kill_in_checkpoint: str | None = None
    # "NAME:PHASE[,NAME:PHASE…]": SIGKILL in stage NAME of the chain (any kind) at PHASE — `ran` (its work done, nothing
    # saved) or `measured` (model folder saved, evaluated and timed; stage.json not yet written) — on that stage's
    # first attempt only (its folder did not exist when it started), so that a --resume goes through
    kill_in_stage: str | None = None

    @classmethod
    def from_env(cls, environ=None) -> Faults:
        """The TRAINOPT_FAULT_* variables; armed on the first attempt only (not in a worker torchrun restarted), and,
        with TRAINOPT_FAULT_RANK, on that rank only."""
        env = os.environ if environ is None else environ
        if int(env.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
            return cls()
        rank = env.get("TRAINOPT_FAULT_RANK")
        if rank is not None and rank != env.get("RANK", "0"):
            return cls()
        return cls(kill_at=int(env.get(ENV["kill_at"], "0")), nan_at=int(env.get(ENV["nan_at"], "0")),
                   spike_at=int(env.get(ENV["spike_at"], "0")), kill_in_checkpoint=env.get(ENV["kill_in_checkpoint"]),
                   kill_in_stage=env.get(ENV["kill_in_stage"]))

    def take_loss_fault(self, step: int) -> str | None:
        """'nan' or 'spike' when step `step`'s loss is to be corrupted; each fires once."""
        for kind in ("nan", "spike"):
            if getattr(self, f"{kind}_at") == step:
                setattr(self, f"{kind}_at", 0)
                return kind
        return None

    def corrupt(self, loss, kind: str | None):
        return loss if kind is None else loss * (float("nan") if kind == "nan" else 1e3)

    def kill_after(self, step: int) -> None:
        if self.kill_at and step == self.kill_at:
            os.kill(os.getpid(), 9)

    def kill_in(self, step: int, phase: str) -> None:
        if self.kill_in_checkpoint == f"{step}:{phase}":
            os.kill(os.getpid(), 9)

    def kill_in_chain(self, stage: str, phase: str, first_attempt: bool) -> None:
        if first_attempt and self.kill_in_stage and f"{stage}:{phase}" in self.kill_in_stage.split(","):
            os.kill(os.getpid(), 9)


