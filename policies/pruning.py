"""Pruners: which runs to stop, from the metric each run reports after each chunk.

A pruner only decides; the caller acts. Its loop, after every slice that completes a chunk:

    pruner.record(run_id, chunks_done, value)     # value is None when the metric is missing
    for run_id in pruner.decide(live):            # live: run id -> chunks done, PENDING/RUNNING
        ...mark run_id PRUNED (its checkpoint stays, so a person can resume it)
    free = {r: c for r, c in live.items() if pruner.may_advance(r, c, live)}
    policies.next_run(free)

Values are compared by ``mode`` ("min": lower is better, "max": higher is better); a NaN value
(the run diverged) is the worst possible value. A missing value (``None``: the run did not
report the metric) is no value: no pruner judges a run on it, so none prunes on it (the
scheduler also stops pruning altogether when a chunk lacks the metric). Ties go to the smaller
run id so every decision is deterministic. All state is plain data keyed by run id;
``to_dict()`` / :func:`pruner_from_dict` round-trip it through JSON.

Successive halving is from Jamieson & Talwalkar, "Non-stochastic best arm identification and
hyperparameter optimization" (2016); ASHA from Li et al., "A system for massively parallel
hyperparameter tuning" (2020).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from policies._checks import check_int, check_live, clean_value
from policies.errors import ConfigError

_MODES = (None, "min", "max")


class Pruner:
    """Base class: stores the recorded metric values and never prunes by itself."""

    type_name: ClassVar[str] = "base"
    """The ``"type"`` key of :meth:`to_dict`; :func:`pruner_from_dict` dispatches on it."""
    _param_names: ClassVar[tuple[str, ...]] = ()
    _needs_mode: ClassVar[bool] = True
    _registry: ClassVar[dict[str, type[Pruner]]] = {}

    metric: str | None
    """Name of the metric the values are of (e.g. "eval_loss"); None until a default is set."""
    mode: str | None
    """"min" if lower values are better, "max" if higher are; None until a default is set."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "type_name" in cls.__dict__:  # private helper bases have no type of their own
            Pruner._registry[cls.type_name] = cls

    def __init__(self, metric: str | None = None, mode: str | None = None) -> None:
        if metric is not None and not isinstance(metric, str):
            raise ConfigError(f"metric must be a str or None, got metric={metric!r}")
        if mode not in _MODES:
            raise ConfigError(f"mode must be 'min', 'max' or None, got mode={mode!r}")
        self.metric = metric
        self.mode = mode
        self._records: dict[int, dict[int, float | None]] = {}

    def with_defaults(self, metric: str, mode: str) -> Pruner:
        """A copy with ``metric`` and ``mode`` filled in where they are None."""
        d = self.to_dict()
        if d["metric"] is None:
            d["metric"] = metric
        if d["mode"] is None:
            d["mode"] = mode
        return pruner_from_dict(d)

    def record(self, run_id: int, chunk: int, value: float | None) -> None:
        """Store ``run_id``'s metric after it completed ``chunk`` chunks (1-based count)."""
        check_int("run_id", run_id)
        check_int("chunk", chunk, minimum=1)
        if self._needs_mode and self.mode is None:
            raise ConfigError(
                f"{type(self).__name__} has mode=None; pass mode='min' or 'max', or call "
                "with_defaults(metric, mode) before recording values"
            )
        clean = clean_value(value)
        if clean is not None and math.isnan(clean):  # diverged: the worst value there is
            clean = None if self.mode is None else (math.inf if self.mode == "min" else -math.inf)
        self._records.setdefault(run_id, {})[chunk] = clean
        self._on_record(run_id, chunk, clean)

    def observe(self, run_id: int, chunk: int, metrics: Mapping[str, Any]) -> None:
        """Record ``run_id``'s chunk from all of the chunk's metrics (the scheduler calls this):
        the value of ``metric`` by default; a pruner that needs more (an interval) reads it."""
        self.record(run_id, chunk, metrics.get(self.metric or "train_loss"))

    def may_advance(self, run_id: int, chunks_done: int, live: Mapping[int, int]) -> bool:
        """May ``run_id`` start its next chunk now? ``live`` maps every live run to chunks done."""
        return True

    def describe(self) -> str:
        """One line for people: what this pruner does, on which metric (``run_fit`` says it when
        it starts and in its summary)."""
        return f"{self._rule()} on {self.metric} ({self.mode})"

    def _rule(self) -> str:
        return type(self).__name__

    def decide(self, live: Mapping[int, int]) -> set[int]:
        """Run ids to prune now, all among ``live``; a repeated call prunes nothing new."""
        check_live(live)
        return set()

    def settings(self) -> dict[str, Any]:
        """The pruner's settings alone (type, metric, mode, its parameters), JSON-able, without
        the values it recorded: :func:`pruner_from_dict` builds a fresh pruner from it."""
        d: dict[str, Any] = {"type": self.type_name, "metric": self.metric, "mode": self.mode}
        d.update({name: getattr(self, name) for name in self._param_names})
        return d

    def to_dict(self) -> dict[str, Any]:
        """The pruner's settings and state as a JSON-able dict with a ``"type"`` key."""
        d = self.settings()
        d["records"] = [
            [run_id, chunk, value]
            for run_id in sorted(self._records)
            for chunk, value in sorted(self._records[run_id].items())
        ]
        d.update(self._state_to_dict())
        return d

    @classmethod
    def _from_dict(cls, d: Mapping[str, Any]) -> Pruner:
        params = {k: d[k] for k in ("metric", "mode", *cls._param_names) if k in d}
        pruner = cls(**params)
        for run_id, chunk, value in d.get("records", []):
            pruner._records.setdefault(int(run_id), {})[int(chunk)] = value
        pruner._state_from_dict(d)
        return pruner

    # Hooks for subclasses.
    def _on_record(self, run_id: int, chunk: int, value: float | None) -> None:
        """Called after each record; ASHA judges here."""

    def _state_to_dict(self) -> dict[str, Any]:
        return {}

    def _state_from_dict(self, d: Mapping[str, Any]) -> None:
        """Restore what :meth:`_state_to_dict` wrote."""

    # Comparison helpers.
    def _score(self, value: float) -> float:
        """Lower is better, whatever the mode; NaN scores worst (+inf)."""
        if math.isnan(value):
            return math.inf
        return value if self.mode == "min" else -value

    def _ranked(self, values: Mapping[int, float]) -> list[int]:
        """Run ids best first (ties: smaller run id first)."""
        return sorted(values, key=lambda run_id: (self._score(values[run_id]), run_id))

    def _values_of(self, run_id: int) -> dict[int, float]:
        """The values ``run_id`` recorded, by chunk (chunks whose value is missing left out)."""
        return {c: v for c, v in self._records.get(run_id, {}).items() if v is not None}

    def _values_at(self, chunk: int, runs: Iterable[int] | None = None) -> dict[int, float]:
        """Values recorded at ``chunk``, by run id, for ``runs`` (default: every run); a run
        whose value is missing there has none."""
        ids = self._records if runs is None else runs
        at = {r: self._records.get(r, {}).get(chunk) for r in ids}
        return {r: v for r, v in at.items() if v is not None}


class NoPruning(Pruner):
    """Never prunes; every run trains through all its chunks."""

    type_name = "none"
    _needs_mode = False

    def describe(self) -> str:
        return "none: every run trains to the end"


class _RungPruner(Pruner):
    """Shared rung arithmetic of successive halving and ASHA."""

    _param_names = ("eta", "min_chunks")

    eta: int
    """Reduction factor: about 1/eta of the runs at a rung go on to the next."""
    min_chunks: int
    """Chunks every run trains before the first rung; rungs are at min_chunks * eta**k."""

    def __init__(
        self,
        eta: int = 2,
        min_chunks: int = 1,
        metric: str | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__(metric, mode)
        check_int("eta", eta, minimum=2)
        check_int("min_chunks", min_chunks, minimum=1)
        self.eta = eta
        self.min_chunks = min_chunks
        self._judged: set[tuple[int, int]] = set()
        """(run id, rung) pairs already compared; no run is judged twice at one rung."""

    def _rule(self) -> str:
        name = "successive halving" if self.type_name == "successive_halving" else "ASHA"
        rungs = ", ".join(str(self.min_chunks * self.eta**k) for k in range(3))
        return f"{name} (keeps the best 1/{self.eta} of the runs after chunks {rungs}, ...)"

    def is_rung(self, chunks: int) -> bool:
        """True if a comparison happens after ``chunks`` chunks."""
        rung = self.min_chunks
        while rung < chunks:
            rung *= self.eta
        return rung == chunks

    def _rungs_upto(self, limit: int) -> list[int]:
        rungs, rung = [], self.min_chunks
        while rung <= limit:
            rungs.append(rung)
            rung *= self.eta
        return rungs

    def _in_top(self, run_id: int, rung: int) -> bool:
        """Is ``run_id`` within the best ceil(n/eta) of all n values recorded at ``rung``?"""
        ranked = self._ranked(self._values_at(rung))
        return ranked.index(run_id) < math.ceil(len(ranked) / self.eta)

    def _state_to_dict(self) -> dict[str, Any]:
        return {"judged": sorted([r, c] for r, c in self._judged)}

    def _state_from_dict(self, d: Mapping[str, Any]) -> None:
        self._judged = {(int(r), int(c)) for r, c in d.get("judged", [])}


class SuccessiveHalving(_RungPruner):
    """Synchronous successive halving at chunk rungs ``min_chunks * eta**k``.

    Rung ``r`` resolves once every live run has done at least ``r`` chunks (a run that completed
    or failed before ``r`` is simply not live); then, among the live runs with a value at ``r``,
    the best ``ceil(n/eta)`` are kept and the rest pruned. Rungs resolve in ascending order, and
    a run that reached an unresolved rung waits there (:meth:`may_advance`) while any live run is
    below it.

    A run that reaches an already-resolved rung later (a clone, or a run a person resumed before
    the rung) is compared against every value recorded at that rung, including those of runs
    pruned there since: it is kept iff it is within the best ``ceil(n/eta)`` of those ``n``.
    A run with no value at a rung (its metric missing) is not compared there, and not pruned.
    """

    type_name = "successive_halving"

    def __init__(
        self,
        eta: int = 2,
        min_chunks: int = 1,
        metric: str | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__(eta, min_chunks, metric, mode)
        self._resolved: set[int] = set()
        """Rungs already resolved; always a prefix of the rung sequence."""

    def may_advance(self, run_id: int, chunks_done: int, live: Mapping[int, int]) -> bool:
        check_live(live)
        if not self.is_rung(chunks_done) or chunks_done in self._resolved:
            return True
        return not any(done < chunks_done for rid, done in live.items() if rid != run_id)

    def decide(self, live: Mapping[int, int]) -> set[int]:
        check_live(live)
        prune: set[int] = set()
        for rung in self._rungs_upto(max(live.values(), default=0)):
            # Runs pruned at a lower rung in this same call are as good as gone.
            remaining = [r for r in sorted(live) if r not in prune]
            valued = self._values_at(rung, remaining)
            fresh = [r for r in remaining if (r, rung) not in self._judged and r in valued]
            if rung in self._resolved:
                prune.update(r for r in fresh if not self._in_top(r, rung))
            elif all(live[r] >= rung for r in remaining):
                ranked = self._ranked(self._values_at(rung, fresh))
                prune.update(ranked[math.ceil(len(ranked) / self.eta) :])
                self._resolved.add(rung)
            else:
                break  # rungs resolve in ascending order
            self._judged.update((r, rung) for r in fresh)
        return prune

    def _state_to_dict(self) -> dict[str, Any]:
        return {**super()._state_to_dict(), "resolved": sorted(self._resolved)}

    def _state_from_dict(self, d: Mapping[str, Any]) -> None:
        super()._state_from_dict(d)
        self._resolved = {int(r) for r in d.get("resolved", [])}


class ASHA(_RungPruner):
    """Asynchronous successive halving: each run is judged the moment it reports at a rung.

    A run reporting at rung ``r`` is promoted iff its value is within the best ``ceil(n/eta)``
    of the ``n`` values recorded at ``r`` so far (its own included); otherwise it is pruned at
    the next :meth:`decide`. Nobody waits, so the first runs at a rung are judged against few
    others: ASHA trades some pruning accuracy for never idling the executor.
    """

    type_name = "asha"

    def __init__(
        self,
        eta: int = 2,
        min_chunks: int = 1,
        metric: str | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__(eta, min_chunks, metric, mode)
        self._pending: set[int] = set()
        """Runs judged out at a rung and not yet returned by :meth:`decide`."""

    def _on_record(self, run_id: int, chunk: int, value: float | None) -> None:
        if value is None or not self.is_rung(chunk) or (run_id, chunk) in self._judged:
            return  # a missing value is not judged
        self._judged.add((run_id, chunk))
        if not self._in_top(run_id, chunk):
            self._pending.add(run_id)

    def decide(self, live: Mapping[int, int]) -> set[int]:
        check_live(live)
        prune = self._pending & set(live)
        self._pending.clear()
        return prune

    def _state_to_dict(self) -> dict[str, Any]:
        return {**super()._state_to_dict(), "pending": sorted(self._pending)}

    def _state_from_dict(self, d: Mapping[str, Any]) -> None:
        super()._state_from_dict(d)
        self._pending = {int(r) for r in d.get("pending", [])}


class _PerRunPruner(Pruner):
    """A pruner that judges each run on its own records; remembers where it pruned each run."""

    def __init__(self, metric: str | None = None, mode: str | None = None) -> None:
        super().__init__(metric, mode)
        self._pruned_at: dict[int, int] = {}
        """Run id -> its last recorded chunk when it was pruned (so it is not pruned twice)."""

    def _state_to_dict(self) -> dict[str, Any]:
        return {"pruned_at": sorted([r, c] for r, c in self._pruned_at.items())}

    def _state_from_dict(self, d: Mapping[str, Any]) -> None:
        self._pruned_at = {int(r): int(c) for r, c in d.get("pruned_at", [])}


class ThresholdPruner(_PerRunPruner):
    """Prune a run whose metric is worse than ``bound`` for ``patience`` recorded chunks in a row.

    "In a row" means its last ``patience`` values in chunk order (a chunk whose value is
    missing is skipped: it neither counts against the run nor breaks the streak). The streak
    restarts when the run is pruned, so a run a person resumes gets ``patience`` more chunks to
    beat the bound.
    """

    type_name = "threshold"
    _param_names = ("bound", "patience")

    bound: float
    """Values worse than this ("min": greater, "max": smaller) count against a run."""
    patience: int
    """How many records in a row must be worse than ``bound`` before the run is pruned."""

    def __init__(
        self,
        bound: float,
        patience: int = 1,
        metric: str | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__(metric, mode)
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or math.isnan(bound):
            raise ConfigError(f"bound must be a number, got bound={bound!r}")
        check_int("patience", patience, minimum=1)
        self.bound = float(bound)
        self.patience = patience

    def decide(self, live: Mapping[int, int]) -> set[int]:
        check_live(live)
        prune: set[int] = set()
        for run_id in sorted(live):
            records = self._values_of(run_id)
            since = self._pruned_at.get(run_id, 0)
            streak = sorted(c for c in records if c > since)[-self.patience :]
            if len(streak) == self.patience and all(self._worse(records[c]) for c in streak):
                prune.add(run_id)
                self._pruned_at[run_id] = streak[-1]
        return prune

    def _rule(self) -> str:
        return f"threshold (a run worse than {self.bound:g} for {self.patience} chunks in a row)"

    def _worse(self, value: float) -> bool:
        return self._score(value) > self._score(self.bound)


class MedianStopping(_PerRunPruner):
    """Prune a run whose best value so far is worse than the median of the others at its chunk.

    At a run's latest recorded chunk ``c >= min_chunks``, its best value over all its records is
    compared with the median of the values the other runs (live or not) recorded at ``c``; it
    needs at least two such values, and a value of its own at ``c`` (a run whose metric is
    missing there is not judged). Like Optuna's ``MedianPruner``, but per chunk.
    """

    type_name = "median"
    _param_names = ("min_chunks",)

    min_chunks: int
    """A run is never judged before it has done this many chunks."""

    def __init__(
        self, min_chunks: int = 1, metric: str | None = None, mode: str | None = None
    ) -> None:
        super().__init__(metric, mode)
        check_int("min_chunks", min_chunks, minimum=1)
        self.min_chunks = min_chunks

    def _rule(self) -> str:
        return f"median stopping (from chunk {self.min_chunks})"

    def decide(self, live: Mapping[int, int]) -> set[int]:
        check_live(live)
        prune: set[int] = set()
        for run_id in sorted(live):
            records = self._records.get(run_id)
            if not records:
                continue
            chunk = max(records)
            if records[chunk] is None:
                continue  # its latest value is missing: not judged on it
            if chunk < self.min_chunks or self._pruned_at.get(run_id, 0) >= chunk:
                continue
            others = [v for r, v in self._values_at(chunk).items() if r != run_id]
            if len(others) < 2:
                continue
            best = min(self._score(v) for v in self._values_of(run_id).values())
            if best > statistics.median(self._score(v) for v in others):
                prune.add(run_id)
                self._pruned_at[run_id] = chunk
        return prune


def pruner_from_dict(d: Mapping[str, Any]) -> Pruner:
    """Rebuild a pruner, settings and state, from its :meth:`Pruner.to_dict` output."""
    kind = d.get("type")
    cls = Pruner._registry.get(kind) if isinstance(kind, str) else None
    if cls is None:
        known = sorted(Pruner._registry)
        raise ConfigError(f"unknown pruner type={kind!r}; known types: {known}")
    return cls._from_dict(d)


__all__ = [
    "ASHA",
    "MedianStopping",
    "NoPruning",
    "Pruner",
    "SuccessiveHalving",
    "ThresholdPruner",
    "pruner_from_dict",
]
