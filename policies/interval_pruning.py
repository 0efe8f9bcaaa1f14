"""``IntervalPruner``: drop a pipeline once its confidence interval lies wholly below another's.

Evals mode reports, after each shard, every pipeline's metric with a confidence interval
(``policies.intervals``). A pipeline whose interval is entirely on the worse side of another
pipeline's interval, on the same shards, is *clearly* worse: more shards would only narrow both
intervals. This pruner drops it; pipelines whose intervals overlap go on.

    pruner.observe(run_id, shards_done, {"Precision": 0.61, "Precision/lower": 0.52,
                                         "Precision/upper": 0.70, ...})
    pruner.decide(live)  # run ids whose interval is clearly worse than the best one's

A comparison at shard count ``c`` (``c >= min_chunks``) happens once every live pipeline has
done ``c`` shards, so the intervals compared cover the same examples (the scheduler gives every
pipeline its turn per shard, so nobody waits long). With ``mode="max"`` run ``r`` is pruned when
``upper(r) < max over s of lower(s)``; with ``"min"`` when ``lower(r) > min over s of
upper(s)``. A pipeline that reaches an already compared ``c`` later (a clone, a resumed one) is
judged against every interval recorded at ``c``. A missing bound (the metric was not algebraic
or distributive) is never pruned on. Decides only; state round-trips through ``to_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policies._checks import check_int, check_live, clean_value
from policies.pruning import Pruner


class IntervalPruner(Pruner):
    """Prune a run whose confidence interval is entirely worse than another run's."""

    type_name = "interval"
    _param_names = ("min_chunks",)

    min_chunks: int
    """Shards every run is scored on before the first comparison."""

    def __init__(
        self, min_chunks: int = 1, metric: str | None = None, mode: str | None = None
    ) -> None:
        super().__init__(metric, mode)
        check_int("min_chunks", min_chunks, minimum=1)
        self.min_chunks = min_chunks
        self._bounds: dict[int, dict[int, tuple[float, float]]] = {}
        """Run id -> chunk -> (lower, upper) of the metric at that chunk."""
        self._resolved: set[int] = set()
        """Chunk counts already compared across all live runs."""
        self._judged: set[tuple[int, int]] = set()

    def observe(self, run_id: int, chunk: int, metrics: Mapping[str, Any]) -> None:
        name = self.metric or ""
        self.record(run_id, chunk, metrics.get(name))
        lower = clean_value(metrics.get(f"{name}/lower"))
        upper = clean_value(metrics.get(f"{name}/upper"))
        if lower is not None and upper is not None:
            self._bounds.setdefault(run_id, {})[chunk] = (lower, upper)

    def _worse(self, run_id: int, chunk: int, others: list[int]) -> bool:
        """Is ``run_id``'s interval at ``chunk`` wholly worse than some other's there?"""
        mine = self._bounds.get(run_id, {}).get(chunk)
        rivals = [self._bounds[o][chunk] for o in others if chunk in self._bounds.get(o, {})]
        if mine is None or not rivals:
            return False
        if self.mode == "max":
            return mine[1] < max(low for low, _ in rivals)
        return mine[0] > min(high for _, high in rivals)

    def decide(self, live: Mapping[int, int]) -> set[int]:
        check_live(live)
        prune: set[int] = set()
        top = max(live.values(), default=0)
        for chunk in range(self.min_chunks, top + 1):
            remaining = [r for r in sorted(live) if r not in prune]
            fresh = [r for r in remaining if (r, chunk) not in self._judged
                     and chunk in self._bounds.get(r, {})]  # fmt: skip
            if chunk in self._resolved:
                everyone = sorted(self._bounds)  # late comers meet every interval recorded here
                prune.update(r for r in fresh if self._worse(r, chunk, everyone))
            elif all(live[r] >= chunk for r in remaining):
                prune.update(r for r in fresh if self._worse(r, chunk, fresh))
                self._resolved.add(chunk)
            else:
                break  # compared in ascending order, once everyone got there
            self._judged.update((r, chunk) for r in fresh)
        return prune

    def _state_to_dict(self) -> dict[str, Any]:
        return {
            "bounds": [
                [r, c, lo, hi]
                for r in sorted(self._bounds)
                for c, (lo, hi) in sorted(self._bounds[r].items())
            ],
            "resolved": sorted(self._resolved),
            "judged": sorted([r, c] for r, c in self._judged),
        }

    def _state_from_dict(self, d: Mapping[str, Any]) -> None:
        for r, c, lo, hi in d.get("bounds", []):
            self._bounds.setdefault(int(r), {})[int(c)] = (float(lo), float(hi))
        self._resolved = {int(c) for c in d.get("resolved", [])}
        self._judged = {(int(r), int(c)) for r, c in d.get("judged", [])}


__all__ = ["IntervalPruner"]
