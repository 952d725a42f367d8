"""What every stage gets besides its model and data: the run's recipe, directory, device, tokenizer, log, and the
hooks a caller can pass in (a tuning study's pruner, fault injection for the tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .train.faults import Faults


@dataclass
class Hooks:
    """Callbacks into the training loop, passed in rather than read from globals or environment variables.

    on_eval(stage_name, step, quality): after every validation inside training (a tuning study reports to its
    pruner there; it may raise to stop the trial).
    faults: the injected kills, NaNs and spikes of the resume and recovery tests (train/faults.py); none by default."""

    on_eval: object = None
    faults: Faults = field(default_factory=Faults)


@dataclass
class RunContext:
    recipe: object
    run_dir: Path
    device: torch.device
    tokenizer: object
    data: object
    log: object
    resume: bool = False
    dist: object = None  # train.distributed.Dist under torchrun (rank, world size); None on one process
    hooks: Hooks = field(default_factory=Hooks)
    measure_inputs: dict | None = None  # the fixed inputs every stage is timed on (stages that time kernels of their own)
    prompt: object = None  # causal LM: the fixed prompt of the generation benchmark
    samples: list | None = None  # SFT data: fixed held-out prompts answered by every stage (data/sft.py)
    parent_dir: Path | None = None  # the folder the running stage's model comes from (None: built from a config)
