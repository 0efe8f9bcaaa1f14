"""Fusion groups: which runs share one pass over the base model (see ``actors.engine.fused``).

When the scheduler grants a slice to a run (the leader), it may add other runs to the grant, so
that the executor trains them together in one fused pass. A run joins the leader's group when:

* it has the leader's fusion key (``fusion_key``), i.e. the same base model and algorithm and,
  for GRPO, generation settings that can share one generation batch;
* it is at the leader's rung (same chunks done), so a group never lets a run race ahead of the
  slice order, and pruning sees the same comparisons it would without fusion;
* it is free to train (live, not in flight, not held at a rung by the pruner), and it is held by
  no executor or by the leader's one;
* the group stays within the budget: at most ``max_runs`` runs, and at most ``max_tokens``
  tokens in one fused micro-batch. Activation memory grows with the tokens a pass holds, so the
  token budget bounds memory. A group that would exceed it is split: the runs left out wait for
  the next grant.

Candidates are taken least progress first, then by run id, like the slice order itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from policies._checks import check_int

FUSING_ALGORITHMS = ("SFT", "DPO", "GRPO")

GENERATION_SETTINGS = (
    "max_completion_length",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "generation_kwargs",
    "cache_implementation",
)
"""GRPO settings that shape one ``generate`` call (its logits processors, stopping and cache):
runs generate in one batch only when all of these are equal. ``num_generations``, batch sizes,
``steps_per_generation`` and ``num_iterations`` may differ (they change how many rows a run
brings, or when it generates, not how a row is generated)."""

UNFUSABLE_GENERATION = (
    "use_vllm",
    "use_transformers_continuous_batching",
    "use_transformers_paged",
)
"""Generation back-ends outside the shared model: such a GRPO run is always time-sliced."""


def fusion_key(
    model_key: str,
    algorithm: str,
    generation: dict[str, Any] | None = None,
    reason_not: str | None = None,
) -> str | None:
    """Runs with equal keys may share one fused pass; ``None``: the run is always time-sliced.

    ``generation`` are a GRPO run's settings (its config's fields, at least those named in
    ``GENERATION_SETTINGS`` and ``UNFUSABLE_GENERATION``); ``reason_not`` is set when the caller
    already knows the run cannot fuse (a LoRA variant, evaluation between its own steps).
    """
    if reason_not is not None or algorithm not in FUSING_ALGORITHMS:
        return None
    if algorithm != "GRPO":
        return f"{model_key}|{algorithm}"
    if generation is None or any(generation.get(k) for k in UNFUSABLE_GENERATION):
        return None
    if any(k not in generation for k in GENERATION_SETTINGS):
        return None  # settings unknown: cannot tell whether they share a batch
    shared = {k: generation[k] for k in GENERATION_SETTINGS}
    return f"{model_key}|GRPO|{json.dumps(shared, sort_keys=True, default=repr)}"


@dataclass(frozen=True)
class FusionPolicy:
    """Admission rule for fused groups."""

    max_runs: int = 8
    """The most runs in one fused pass."""
    max_tokens: int = 16384
    """The most tokens (rows x padded length, summed over the group's micro-batches) in one fused
    pass: the memory budget. Lower it if a fused pass runs out of device memory (the executor also
    halves it by itself after an out-of-memory error)."""

    def __post_init__(self) -> None:
        check_int("fusion max_runs", self.max_runs, minimum=1)
        check_int("fusion max_tokens", self.max_tokens, minimum=1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionPolicy:
        return cls(**data)


@dataclass(frozen=True)
class Candidate:
    """What the group rule needs to know about one run."""

    run_id: int
    key: str | None
    """Fusion key: runs with equal keys can share a pass; ``None`` never fuses."""
    tokens: int
    """The most tokens one of its micro-batches puts through the base."""
    chunks_done: int
    steps_done: int


def form_group(leader: Candidate, others: list[Candidate], policy: FusionPolicy) -> list[int]:
    """The leader's group: the leader first, then the runs that join it (see module docstring).

    ``others`` are the runs free to train now on the leader's executor, leader excluded.
    """
    group = [leader.run_id]
    if leader.key is None or policy.max_runs < 2:
        return group
    tokens = leader.tokens
    for c in sorted(others, key=lambda c: (c.steps_done, c.run_id)):
        if len(group) >= policy.max_runs:
            break
        if c.key != leader.key or c.chunks_done != leader.chunks_done:
            continue
        if tokens + c.tokens > policy.max_tokens:
            continue  # over budget: a smaller run later in the order may still fit
        group.append(c.run_id)
        tokens += c.tokens
    return group


__all__ = ["Candidate", "FusionPolicy", "form_group", "fusion_key"]
