"""The learning-rate schedule: a pure function of the optimizer step.

    factor = lr_factor(step, steps_per_epoch=10, epochs=5, warmup_epochs=1, scheduler="cosine")

Each parameter group's rate is its base rate times the factor. The training loop drives it with a
`LambdaLR` (`lr_scheduler`); anything that shows or sweeps a schedule calls `lr_factor` directly.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch

from ..config import TrainConfig


def lr_factor(step: int, *, steps_per_epoch: int, epochs: int, warmup_epochs: int = 0, scheduler: str = "cosine",
              gamma: float = 0.1, step_size: int = 3) -> float:
    """Learning-rate multiplier for optimizer step `step` (0-based): linear warm-up over `warmup_epochs`,
    then none/step/cosine over `epochs` (cosine ends at 0 after the last step)."""
    warmup = warmup_epochs * steps_per_epoch
    total = max(1, epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if scheduler == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if scheduler == "step":
        return gamma ** ((step // steps_per_epoch) // step_size)
    return 1.0


def schedule_of(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """`lr_factor` with a run's settings: step -> multiplier."""
    # A partial, not a closure: LambdaLR saves a callable object's attributes (here none, `{}`) where it
    # saves a plain function as None, and the scheduler state in checkpoints has always held `{}`.
    return functools.partial(lr_factor, steps_per_epoch=steps_per_epoch, epochs=config.epochs,
                             warmup_epochs=config.warmup_epochs, scheduler=config.scheduler, gamma=config.gamma,
                             step_size=config.step_size)


def lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                 steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The run's schedule over `optimizer`, stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_of(config, steps_per_epoch))


def resume_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, state: dict[str, Any]) -> None:
    """Put back a saved scheduler state (after the optimizer's) and continue on this scheduler's plan.

    The saved rates follow the schedule as the run first planned it. Resuming with more epochs
    stretches the plan (a finished cosine schedule ended at 0, which would waste the next step), so the
    next step's rates are computed again; with the same epochs they come out the same.
    """
    scheduler.load_state_dict(state)
    for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
