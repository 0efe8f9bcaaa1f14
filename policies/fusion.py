"""Fusion groups: which runs share one pass over the base model (see ``actors.fused``).

When the scheduler grants a slice to a run (the leader), it may add other runs to the grant, so
that the executor trains them together in one fused pass. A run joins the leader's group when:

* it has the leader's fusion key, i.e. the same base model and an algorithm that fuses (SFT or
  DPO; GRPO's generation is time-sliced);
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

from dataclasses import asdict, dataclass
from typing import Any

from policies._checks import check_int


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


__all__ = ["Candidate", "FusionPolicy", "form_group"]
