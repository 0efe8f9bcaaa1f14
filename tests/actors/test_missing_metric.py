"""The first chunk that lacks the pruner's metric stops pruning, with an error that lists the
metrics the runs do report; the runs go on unpruned (without Ray: ``SchedulerCore``)."""

from __future__ import annotations

from policies.pruning import SuccessiveHalving
from policies.state import RunStatus
from tests.actors.test_scheduler_core import _core, _drive


def test_a_chunk_without_the_metric_stops_pruning_and_every_run_trains_to_the_end():
    pruner = SuccessiveHalving(eta=2).with_defaults("eval_los", "min")  # a typo, say
    core = _core(4, pruner=pruner)
    order = _drive(core, lambda rid: float(rid))  # train loss only: no eval_los
    assert core.pruning_error == (
        "pruning stopped: chunk 1 of run 1 has no 'eval_los', the pruner's metric; the runs "
        "report train_loss. The runs go on unpruned. Name one of these as the pruner's metric "
        "(e.g. SuccessiveHalving(metric=...)), or have every run report 'eval_los'"
    )
    assert all(r.status is RunStatus.COMPLETED for r in core.runs.values())
    assert order[:4] == [1, 2, 3, 4]
    assert len(order) == 16  # 4 runs x 4 chunks, none held at a rung or pruned
    assert all(r.best_metric is None for r in core.runs.values())
    assert core.pruner.to_dict()["records"] == []  # nothing was recorded, so nothing judged


def test_the_metric_present_prunes_as_before():
    core = _core(4, pruner=SuccessiveHalving(eta=2).with_defaults("train_loss", "min"))
    _drive(core, lambda rid: float(rid))
    assert core.pruning_error is None
    assert [r.status for r in core.runs.values()].count(RunStatus.PRUNED) == 3
