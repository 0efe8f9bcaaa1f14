"""The torch privates rf-ray uses, each behind one function (see ``internals``)."""

from __future__ import annotations

from typing import Any

from actors.engine.algorithms.internals import Private

VERSION = "torch 2.13.0"

PRIVATES = (
    Private("torch.optim.lr_scheduler:LRScheduler", "_last_lr", None, VERSION, instance_only=True),
)


def set_last_lrs(scheduler: Any, rates: list[float]) -> None:
    """Make ``rates`` what ``scheduler.get_last_lr()`` returns (the learning rates the trainer
    logs) until its next ``step()``; torch has no public setter."""
    scheduler._last_lr = rates
