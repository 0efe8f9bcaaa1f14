"""(b) rf-ray's knob spaces as a Ray Tune ``Searcher`` (see ``rf_ray.tune``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from policies.errors import ConfigError
from rf_ray.configs import RFModelConfig
from rf_ray.knobs import is_number
from rf_ray.search import ConfigGroup, RFGridSearch
from rf_ray.specs import RunConfig, differing_keys
from rf_ray.tune.flat import apply_flat, flat_knobs, flatten, plain


class RFSearcher(Searcher):
    """An rf-ray config group (``RFGridSearch``, ``RFRandomSearch``, an ``RFModelConfig`` with
    ``List`` knobs) as a Tune ``Searcher``.

    ``suggest`` hands out the group's runs in ``expand()`` order as flat dicts of the knobs that
    vary across the group, and ``Searcher.FINISHED`` once all are out (Tune stops asking; ``None``
    would mean "nothing now, ask again"). ``to_run_config(flat)`` maps a suggestion back.
    """

    def __init__(
        self,
        param_config: ConfigGroup | RFModelConfig | list[RFModelConfig],
        metric: str | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        group = param_config if isinstance(param_config, ConfigGroup) else None
        if group is None:
            if not isinstance(param_config, (RFModelConfig, list)):
                raise ConfigError(
                    "RFSearcher takes RFGridSearch(...), RFRandomSearch(...), an RFModelConfig "
                    f"or a list of them, got {type(param_config).__name__}"
                )
            group = RFGridSearch(param_config)
        self.runs: list[RunConfig] = group.expand()
        flats = [flat_knobs(r) for r in self.runs]
        self.keys = differing_keys(flats)
        self.points = [{k: f[k] for k in self.keys if k in f} for f in flats]
        self.next_index = 0
        self.assigned: dict[str, int] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.completed: set[str] = set()

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if trial_id in self.assigned:
            return dict(self.points[self.assigned[trial_id]])
        if self.next_index >= len(self.points):
            return Searcher.FINISHED
        self.assigned[trial_id] = self.next_index
        self.next_index += 1
        return dict(self.points[self.assigned[trial_id]])

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.results[trial_id] = _scalars(result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if result is not None:
            self.results[trial_id] = _scalars(result)
        if error:
            self.results.setdefault(trial_id, {})["error"] = True
        self.completed.add(trial_id)

    def to_run_config(self, flat: Mapping[str, Any]) -> RunConfig:
        """The group's run for a suggestion (or a run built from one with changed values)."""
        flat = flatten(dict(flat))
        for i, point in enumerate(self.points):
            if _same(point, flat):
                return self.runs[i]
        return apply_flat(self.runs[0], flat)

    def best(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(flat config, last result) of the best completed trial by ``metric``/``mode``."""
        scored = [
            (tid, r[self.metric])
            for tid, r in self.results.items()
            if self.metric and is_number(r.get(self.metric)) and tid in self.assigned
        ]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        tid, _ = pick(scored, key=lambda t: t[1])
        return self.points[self.assigned[tid]], self.results[tid]

    # -- persistence: JSON, written atomically
    def _fingerprint(self) -> str:
        return json.dumps(self.points, sort_keys=True, default=repr)

    def save(self, checkpoint_path: str) -> None:
        state = {
            "version": 1,
            "points": self._fingerprint(),
            "next_index": self.next_index,
            "assigned": self.assigned,
            "results": self.results,
            "completed": sorted(self.completed),
            "metric": self.metric,
            "mode": self.mode,
        }
        path = Path(checkpoint_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, sort_keys=True))
        os.replace(tmp, path)

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        if state.get("points") != self._fingerprint():
            raise ConfigError(
                f"{checkpoint_path} was saved by an RFSearcher over a different search space; "
                "restore it into a searcher built from the same config group"
            )
        self.next_index = int(state["next_index"])
        self.assigned = {str(k): int(v) for k, v in state["assigned"].items()}
        self.results = dict(state["results"])
        self.completed = set(state["completed"])
        self.__dict__.update(
            {k: state[k[1:]] for k in ("_metric", "_mode") if state.get(k[1:]) is not None}
        )


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return json.dumps(dict(a), sort_keys=True, default=repr) == json.dumps(
        dict(b), sort_keys=True, default=repr
    )


def _scalars(result: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar entries of a Tune result (NumPy scalars as Python numbers), kept as JSON."""
    return {
        str(k): plain(v)
        for k, v in result.items()
        if isinstance(plain(v), (int, float, str, bool)) or v is None
    }
