"""Fused evaluation: several runs evaluated in one no-grad pass over their shared base model.

Each run is evaluated by its OWN trainer's ``evaluate()`` (TRL's evaluation loop, its
``prediction_step``, ``compute_loss``, metrics and ``compute_metrics``: nothing re-implemented),
each in a lane of ``actors.engine.lockstep``. The lanes' model calls meet after every batch and are
served together: their eval batches concatenated along the batch dimension, the base layers run
once, each LoRA layer adding each run's adapter to its own rows (``actors.engine.fused``). DPO's
reference forward (``use_adapter(model, None)``) is lane-local and the runs' reference rows are
served in one adapters-off pass. Runs with different eval batch sizes simply keep meeting until
the longest loop is done; a run whose trainer calls the model differently (say, for
``compute_metrics`` logits) has those calls served alone.

Time-slicing stays the fallback: a fused forward that fails (out of memory) is re-served call by
call, and a run whose fused evaluation raised is evaluated again on its own
(``Evaluator.evaluate``); only if that fails too does the run fail, alone.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch

from actors.engine.lockstep import FusedServer, Lane, Lockstep

logger = logging.getLogger(__name__)

EvalOutcome = dict[str, float] | BaseException


def numeric_metrics(out: dict[str, Any]) -> dict[str, float]:
    """The numbers of ``Trainer.evaluate``'s output (what the store and MLflow take)."""
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float))}


def evaluate_fused(
    model: Any,
    records: list[Any],
    pad_id: int,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> tuple[dict[int, EvalOutcome], FusedServer]:
    """Evaluate ``records`` (executor ``AdapterRecord``s sharing ``model``) in lock step.

    Returns each run's metrics (as ``Evaluator.evaluate`` returns them) or the exception its
    evaluation raised, and the server (its ``stats`` say how much was fused).
    """
    server = FusedServer(model, pad_id)
    lanes = []
    for record in records:
        # Evaluation draws nothing (dropout is off), and a time-sliced evaluation puts the RNG
        # back afterwards: the lane gets a copy of the run's stream, thrown away at the end.
        generator = torch.Generator()
        generator.set_state(record.rng_state)
        lanes.append(
            Lane(
                name=f"run_{record.spec.run_id}",
                adapter=record.spec.adapter_name,
                work=_evaluation(record.trainer, autocast),
                generator=generator,
            )
        )
    Lockstep(model, server).run(lanes)
    outcomes: dict[int, EvalOutcome] = {}
    for record, lane in zip(records, lanes):
        run_id = record.spec.run_id
        outcomes[run_id] = lane.error if lane.error is not None else numeric_metrics(lane.result)
    logger.info("fused evaluation of runs %s: %s", [r.spec.run_id for r in records], server.stats)
    return outcomes, server


def _evaluation(
    trainer: Any, autocast: Callable[[], contextlib.AbstractContextManager[Any]]
) -> Callable[[], dict[str, Any]]:
    def work() -> dict[str, Any]:
        with autocast():  # autocast is thread-local: the lane enters the executor's own
            return trainer.evaluate()  # type: ignore[no-any-return]

    return work
