"""The Optuna side of ``RFOptuna``: one study, one trial per run, and RapidFire AI's pruning
rules, with no Ray in sight (``RFOptuna`` feeds it from the experiment's store).

    book = TrialBook(study, Objective.parse("maximize:rougeL"), pruner="median")
    book.bind(run_id, study.ask())
    if book.on_chunk(run_id, chunk, chunk_metrics):   # True: prune this run now
        ...prune the run..., then book.pruned(run_id)
    book.finished(run_id, "completed", last_metrics)   # COMPLETE with its objective value
    book.finalize(last_metrics_by_run)                 # what is still RUNNING, at the end

The rules are RapidFire's (``rapidfireai/automl/optuna_search.py``):

- each chunk, the run's objective value is reported to its trial (``trial.report(value,
  step=chunk)``; single objective) and the run is pruned if Optuna's pruner says so
  (``trial.should_prune()``: the median pruner compares with COMPLETE trials) OR if its best
  value so far is worse than the median of every other trial's value at the same chunk (the
  concurrent rule: runs trained side by side stay RUNNING, so Optuna's pruner alone would have
  nothing to compare with); with several objectives, a run is pruned when more than half of the
  other runs not pruned dominate it (Pareto) at that chunk. rf-ray also judges a run again at
  its latest chunk when more peers have reported that chunk (``rejudge``): runs are interleaved
  chunk by chunk, and the first to finish a chunk has no peer there when it reports;
- ``granularity="epoch"`` decides only at the end of each epoch (every ``chunks_per_epoch``
  chunks);
- no decision at a run's last chunk (it completes), none without the metric; ``eval_loss``
  falls back to ``train_loss`` (RapidFire's alias) when the runs have no eval set;
- a finished run's trial is told its last objective value (COMPLETE) or FAIL when it has none.

Where rf-ray differs: ``pruner=None`` trains every trial to the end (RapidFire's concurrent rule
still prunes then), a run that failed is FAIL and one a person deleted is FAIL (RapidFire tells
both their last value), and a trial is told COMPLETE when its run completes, not only when the
experiment ends, so Optuna's median pruner has completed trials to compare with sooner.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policies.errors import ConfigError

logger = logging.getLogger(__name__)

DIRECTIONS = ("minimize", "maximize")
ALIASES: dict[str, tuple[str, ...]] = {"eval_loss": ("train_loss",)}
"""Where an objective metric is missing, the metrics tried instead (RapidFire's fallback for a
run without an eval set: its chunk's mean train loss)."""


@dataclass(frozen=True)
class Objective:
    """``"minimize:eval_loss"``, or several comma-separated: ``"maximize:rougeL,maximize:bleu"``."""

    metrics: tuple[str, ...]
    directions: tuple[str, ...]

    @classmethod
    def parse(cls, text: Any) -> Objective:
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(_objective_help(text))
        metrics, directions = [], []
        for part in text.split(","):
            direction, sep, metric = part.strip().partition(":")
            if not sep or direction not in DIRECTIONS or not metric.strip():
                raise ConfigError(_objective_help(text))
            metrics.append(metric.strip())
            directions.append(direction)
        if len(set(metrics)) != len(metrics):
            raise ConfigError(f"objective={text!r} names a metric twice; name each once")
        return cls(tuple(metrics), tuple(directions))

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1

    @property
    def mode(self) -> str:
        """The first objective as rf-ray's pruner mode (``min`` / ``max``)."""
        return "min" if self.directions[0] == "minimize" else "max"

    def values(self, metrics: Mapping[str, Any]) -> list[float] | None:
        """Each objective's value in ``metrics`` (aliases tried), or None if one is missing."""
        out = []
        for name in self.metrics:
            value = _lookup(metrics, name)
            if value is None:
                return None
            out.append(value)
        return out


def _objective_help(text: Any) -> str:
    return (
        f"objective={text!r} must be 'minimize:<metric>' or 'maximize:<metric>' (several "
        "comma-separated for a multi-objective study), e.g. 'minimize:eval_loss' or "
        "'maximize:rougeL'"
    )


def _lookup(metrics: Mapping[str, Any], name: str) -> float | None:
    for key in (name, *ALIASES.get(name, ())):
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


class TrialBook:
    """Run ids <-> the study's trials, and the pruning decisions (see module doc)."""

    def __init__(
        self,
        study: Any,
        objective: Objective,
        prunes: bool = True,
        chunks_per_epoch: int | None = None,
    ) -> None:
        self.study = study
        self.objective = objective
        self.prunes = prunes
        """False (``pruner=None``): never prune; every trial trains to the end."""
        self.chunks_per_epoch = chunks_per_epoch
        """Set for ``granularity="epoch"``: decide only every this many chunks."""
        self.trials: dict[int, Any] = {}
        """rf-ray run id -> its Optuna trial."""
        self.values: dict[int, dict[int, list[float]]] = {}
        """run id -> chunk -> objective values reported there."""
        self.told: dict[int, str] = {}
        """run id -> the state its trial was told (COMPLETE, PRUNED, FAIL)."""
        self.latest: dict[int, tuple[int, bool]] = {}
        """run id -> (its latest reported chunk, whether that was its last)."""
        self.judged: dict[tuple[int, int], int] = {}
        """(run id, chunk) -> how many peers it was last judged against there."""

    def bind(self, run_id: int, trial: Any) -> None:
        self.trials[run_id] = trial

    def on_chunk(self, run_id: int, chunk: int, metrics: Mapping[str, Any], last: bool) -> bool:
        """Record run ``run_id``'s metrics after ``chunk`` chunks; True if it should be pruned
        now. ``last``: the run's final chunk (it completes; never pruned there)."""
        trial = self.trials.get(run_id)
        if trial is None or run_id in self.told:
            return False
        values = self.objective.values(metrics)
        if values is None:
            return False
        self.values.setdefault(run_id, {})[chunk] = values
        self.latest[run_id] = (chunk, last)
        if not self.objective.multi:
            trial.report(values[0], step=chunk)
        if not self._decides(run_id):
            return False
        if not self.objective.multi and trial.should_prune():
            return True
        return self._judge(run_id, chunk)

    def rejudge(self) -> list[int]:
        """Runs to prune now: each run judged again at its latest chunk against the peers that
        reported that chunk since. rf-ray interleaves the runs chunk by chunk, so the first run
        to finish a chunk has no peer there when it reports: judged only then (RapidFire's
        timing), it could never be pruned."""
        return [run_id for run_id, (chunk, _) in self.latest.items()
                if self._decides(run_id) and self._judge(run_id, chunk)]  # fmt: skip

    def _decides(self, run_id: int) -> bool:
        """Whether a decision is due for the run at its latest chunk (not its last, not told,
        at an epoch's end with ``granularity="epoch"``, pruning on)."""
        chunk, last = self.latest[run_id]
        if last or not self.prunes or run_id in self.told:
            return False
        return not (self.chunks_per_epoch and chunk % self.chunks_per_epoch)

    def _judge(self, run_id: int, chunk: int) -> bool:
        """The concurrent rule (or Pareto's) at ``chunk``, if more peers reported it than the
        last time the run was judged there."""
        peers = sum(1 for other, v in self.values.items() if other != run_id and chunk in v)
        if peers <= self.judged.get((run_id, chunk), 0):
            return False
        self.judged[run_id, chunk] = peers
        if self.objective.multi:
            return self._dominated(run_id, chunk)
        return self._below_median(run_id, chunk)

    def _below_median(self, run_id: int, chunk: int) -> bool:
        """RapidFire's concurrent rule: the run's best value so far is worse than the median of
        the other trials' values at this chunk (every trial, whatever its state)."""
        own = [v[0] for v in self.values[run_id].values() if not math.isnan(v[0])]
        peers = [
            v[chunk][0]
            for other, v in self.values.items()
            if other != run_id and chunk in v and not math.isnan(v[chunk][0])
        ]
        if not own or not peers:
            return False
        median = statistics.median(peers)
        if self.objective.directions[0] == "minimize":
            return min(own) > median
        return max(own) < median

    def _dominated(self, run_id: int, chunk: int) -> bool:
        """Pareto rule: more than half of the other runs not pruned dominate this one here."""
        mine = self.values[run_id][chunk]
        peers = [
            v[chunk]
            for other, v in self.values.items()
            if other != run_id and chunk in v and self.told.get(other) != "PRUNED"
        ]
        beaten = sum(_dominates(p, mine, self.objective.directions) for p in peers)
        return bool(peers) and beaten > len(peers) / 2

    def pruned(self, run_id: int) -> None:
        """The run was pruned (by this book, by rf-ray's pruner or by hand): PRUNED."""
        self._tell(run_id, "PRUNED")

    def finished(self, run_id: int, status: str, metrics: Mapping[str, Any] | None) -> None:
        """The run is over with rf-ray ``status``: completed or stopped runs are told their
        last objective value (COMPLETE, or FAIL without one); failed and deleted runs FAIL;
        pruned runs PRUNED."""
        if status == "pruned":
            self._tell(run_id, "PRUNED")
            return
        values = self.objective.values(metrics or {})
        if status in ("completed", "stopped") and values is not None:
            self._tell(run_id, "COMPLETE", values)
        else:
            self._tell(run_id, "FAIL")

    def finalize(self, last_metrics: Mapping[int, Mapping[str, Any]]) -> None:
        """At the end: every trial still RUNNING is told its run's last value (RapidFire's
        ``finalize``), or FAIL."""
        for run_id in self.trials:
            if run_id not in self.told:
                self.finished(run_id, "completed", last_metrics.get(run_id))

    def _tell(self, run_id: int, state: str, values: list[float] | None = None) -> None:
        from optuna.trial import TrialState

        trial = self.trials.get(run_id)
        if trial is None or run_id in self.told:
            return
        self.told[run_id] = state
        if values is not None:  # COMPLETE
            self.study.tell(trial, values[0] if len(values) == 1 else values)
        else:
            self.study.tell(trial, state=getattr(TrialState, state))
        logger.info("RFOptuna: run %d -> trial %d %s", run_id, trial.number, state)


def _dominates(a: list[float], b: list[float], directions: tuple[str, ...]) -> bool:
    """Whether ``a`` is at least as good as ``b`` in every objective and better in one."""
    better = False
    for va, vb, d in zip(a, b, directions):
        if (va > vb) if d == "minimize" else (va < vb):
            return False
        better = better or va != vb
    return better


__all__ = ["ALIASES", "DIRECTIONS", "Objective", "TrialBook"]
