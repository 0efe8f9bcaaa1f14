"""Pure decisions of rf-ray: run states, chunk plans, slice order, fusion groups, pruning
rules and confidence intervals (evals mode's online aggregation).

Nothing here imports Ray, torch or any training library, and nothing acts: plain inputs (run
ids, chunk counts, metric values) go in, a decision value comes out. ``tests/policies`` checks
that importing this package pulls in none of those libraries.
"""

from __future__ import annotations

from policies.chunking import ChunkPlan, epoch_order
from policies.fusion import Candidate, FusionPolicy, form_group
from policies.interval_pruning import IntervalPruner
from policies.intervals import OnlineStrategy, add_intervals
from policies.order import next_run
from policies.pruning import (
    ASHA,
    MedianStopping,
    NoPruning,
    Pruner,
    SuccessiveHalving,
    ThresholdPruner,
    pruner_from_dict,
)
from policies.state import ALLOWED_TRANSITIONS, RunStatus, is_live, is_terminal, transition

__all__ = [
    "ALLOWED_TRANSITIONS",
    "ASHA",
    "Candidate",
    "ChunkPlan",
    "FusionPolicy",
    "IntervalPruner",
    "MedianStopping",
    "NoPruning",
    "OnlineStrategy",
    "Pruner",
    "RunStatus",
    "SuccessiveHalving",
    "ThresholdPruner",
    "add_intervals",
    "epoch_order",
    "form_group",
    "is_live",
    "is_terminal",
    "next_run",
    "pruner_from_dict",
    "transition",
]
