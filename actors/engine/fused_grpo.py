"""Fused GRPO: runs at the same rung generate together, then train as fused SFT/DPO runs do.

A GRPO micro-step is TRL's ``GRPOTrainer._prepare_inputs`` (every ``steps_per_generation``
micro-steps: generate completions with the run's adapter, score them with the run's own reward
functions, compute advantages, old and reference log-probs; in between: take the next slice of
the buffered generation batch) followed by the loss. Here each run's ``_prepare_inputs`` runs in
a lane of ``actors.engine.lockstep``: the runs' ``generate`` calls meet and are served together
in one batched decode (``actors.engine.generation.generate_multi``; a generation it cannot batch
runs alone with its run's adapter and RNG stream), and so are their no-grad forwards (old
log-probs with the adapters on, reference log-probs with adapters off: ``use_adapter(model,
None)`` is lane-local). Reward scoring runs inside each lane, with the run's own functions. The
loss then goes through ``actors.engine.fused.fused_micro_step``'s capture/replay of each run's
own ``compute_loss``, one fused forward and one backward for all runs.

Each lane runs with its run's own RNG stream (the fused cursor's), so with sampling every run
draws exactly the numbers it draws time-sliced: same completions, same rewards, and losses that
differ only by the fused forward's float rounding.
"""

from __future__ import annotations

import logging
from typing import Any

from actors.engine.algorithms import transformers_internals
from actors.engine.lockstep import FusedServer, Lane, Lockstep, ServeStats

logger = logging.getLogger(__name__)


def prepare_inputs(model: Any, cursors: list[Any], pad_id: int) -> tuple[list[Any], ServeStats]:
    """Each cursor's next micro-batch, prepared by its own trainer's ``_prepare_inputs`` with the
    runs' model calls served together. A run whose preparation raised (a reward function that
    fails, say) gets the exception as ``cursor.error`` and ``None`` as its inputs."""
    server = FusedServer(model, pad_id)
    lanes = []
    for cursor in cursors:
        record = cursor.record
        trainer, batch = record.trainer, cursor.batches[cursor.micro]
        lanes.append(
            Lane(
                name=f"run_{record.spec.run_id}",
                adapter=record.spec.adapter_name,
                work=_preparation(trainer, batch),
                generator=cursor.generator,
                device_generator=(
                    cursor.device_generator if record.cuda_rng_state is not None else None
                ),
            )
        )
    Lockstep(model, server).run(lanes)
    inputs = []
    for cursor, lane in zip(cursors, lanes):
        if lane.error is not None:
            cursor.error = lane.error
        inputs.append(lane.result)
    return inputs, server.stats


def _preparation(trainer: Any, batch: Any) -> Any:
    def work() -> Any:
        return transformers_internals.prepare_inputs(trainer, batch)

    return work
