"""(b) rf-ray's knob spaces as a Ray Tune ``Searcher`` (see ``rf_ray.tune``).

The contract is Ray Tune's (``ray.tune.search.Searcher``), and the checks of Ray's own searcher
tests that apply to any searcher hold (``tests/rf_ray/test_tune_searcher.py`` ports them):
suggestions name their run unambiguously, ``metric``/``mode`` must be set before the first
suggestion (here or through ``TuneConfig`` with a ``param_space``), results after a trial
completed are ignored, ``add_evaluated_point`` feeds points evaluated elsewhere, and
``save``/``restore`` keep the searcher's whole state (a subclass's own attributes too).
"""

from __future__ import annotations

import base64
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
from rf_ray.tune.flat import LABELS, FunctionNames, apply_flat, flatten, identity, plain

GROUP_INDEX = "group_index"
"""Suggestion key of a run's place in the group's ``expand()`` order; only there when two runs
of the group would otherwise give the same suggestion."""
STATE_VERSION = 2
_DERIVED = ("runs", "names", "keys", "points")
"""Attributes rebuilt from the search space by ``__init__``: not part of the saved state."""
_MODES = ("min", "max")


class RFSearcher(Searcher):
    """An rf-ray config group (``RFGridSearch``, ``RFRandomSearch``, an ``RFModelConfig`` with
    ``List`` knobs) as a Tune ``Searcher``.

    ``suggest`` hands out the group's runs in ``expand()`` order as flat dicts of what varies
    across the group: knob values (``{"learning_rate": 1e-4, "lora.r": 8}``) and labels (the
    name of a ``formatting_func``, the ``trainer_type``; see ``rf_ray.tune.flat``), then
    ``Searcher.FINISHED`` once all are out (Tune stops asking). ``to_run_config(flat)`` maps a
    suggestion back to its run.
    """

    def __init__(
        self,
        param_config: ConfigGroup | RFModelConfig | list[RFModelConfig],
        metric: str | list[str] | None = None,
        mode: str | list[str] | None = None,
    ) -> None:
        check_objective(metric, mode)
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
        self.names = FunctionNames(self.runs)
        identities = [identity(r, self.names) for r in self.runs]
        self.keys = differing_keys(identities)
        self.points = _distinct([{k: i[k] for k in self.keys if k in i} for i in identities])
        if any(GROUP_INDEX in p for p in self.points):
            self.keys.append(GROUP_INDEX)
        # The state (``get_state``): all attributes but those above.
        self.next_index = 0
        self.assigned: dict[str, int] = {}
        """Tune trial id -> index of its run in ``runs``."""
        self.results: dict[str, dict[str, Any]] = {}
        """Trial id -> its last result (scalars; ``error: True`` for a failed trial)."""
        self.completed: list[str] = []
        self.evaluated: list[dict[str, Any]] = []
        """Points evaluated elsewhere (``add_evaluated_point``), in the order given."""

    # -- the Searcher contract
    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        """Take ``TuneConfig(metric=, mode=)`` (Tune calls this when the Tuner has a
        ``param_space``). Returns False: the search space is the rf-ray group, so a param space
        with Tune domains in it is refused by Tune; constants in it reach every trial."""
        for name, given, own in (("metric", metric, self.metric), ("mode", mode, self.mode)):
            if given is not None and own is not None and given != own:
                raise ConfigError(
                    f"TuneConfig({name}={given!r}) differs from RFSearcher({name}={own!r}); "
                    f"give {name} once (to one of them) or the same in both"
                )
        metric = self.metric if metric is None else metric
        mode = self.mode if mode is None else mode
        check_objective(metric, mode)
        self._metric, self._mode = metric, mode
        return False

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if not self._metric or not self._mode:
            raise ConfigError(
                f"RFSearcher has metric={self._metric!r}, mode={self._mode!r}: pass both, e.g. "
                "RFSearcher(space, metric='eval_loss', mode='min') (Tune hands "
                "TuneConfig(metric=, mode=) to a searcher only when the Tuner has a param_space)"
            )
        if trial_id in self.assigned:
            return dict(self.points[self.assigned[trial_id]])
        done = {e["index"] for e in self.evaluated if e["index"] is not None and not e["error"]}
        while self.next_index < len(self.points) and self.next_index in done:
            self.next_index += 1  # evaluated elsewhere already
        if self.next_index >= len(self.points):
            return Searcher.FINISHED
        self.assigned[trial_id] = self.next_index
        self.next_index += 1
        return dict(self.points[self.assigned[trial_id]])

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self.completed:
            return  # a late result (Tune may still deliver one after completion): keep the final
        self.results[trial_id] = _scalars(result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if result is not None:
            self.results[trial_id] = _scalars(result)
        if error:
            self.results.setdefault(trial_id, {})["error"] = True
        if trial_id not in self.completed:
            self.completed.append(trial_id)

    def add_evaluated_point(
        self,
        parameters: dict[str, Any],
        value: float | list[float],
        error: bool = False,
        pruned: bool = False,
        intermediate_values: list[float] | None = None,
    ) -> None:
        """Record a point evaluated outside this searcher (Tune's contract). A point that is a
        run of the group is not suggested again (unless it errored); every point with a finite
        value counts in ``best()``."""
        if not self._metric:
            raise ConfigError(
                "add_evaluated_point needs the searcher's metric (what the value measures): "
                "build RFSearcher(space, metric=..., mode=...) first"
            )
        flat = {k: plain(v) for k, v in flatten(dict(parameters)).items()}
        metrics = self._metric if isinstance(self._metric, list) else [self._metric]
        values = value if isinstance(value, (list, tuple)) else [value]
        if len(values) != len(metrics):
            raise ConfigError(
                f"add_evaluated_point(value={value!r}) has {len(values)} value(s) for metric "
                f"{self._metric!r}; give one value per metric"
            )
        index = self._match(flat)
        self.evaluated.append({
            "config": dict(self.points[index]) if index is not None else _jsonable(flat),
            "index": index,
            "result": {m: plain(v) for m, v in zip(metrics, values, strict=True)},
            "error": bool(error),
            "pruned": bool(pruned),
            "intermediate_values": None if intermediate_values is None
            else [plain(v) for v in intermediate_values],
        })  # fmt: skip

    def _match(self, flat: Mapping[str, Any]) -> int | None:
        """The index of the group's run that ``flat`` names (on the keys that vary), or None."""
        for i, point in enumerate(self.points):
            if all(_same(flat.get(k, _MISSING), point.get(k, _MISSING)) for k in self.keys):
                return i
        return None

    # -- rf-ray's own
    def to_run_config(self, flat: Mapping[str, Any]) -> RunConfig:
        """The group's run for a suggestion (or a run built from one with changed values).

        Labels (``trainer_type``, function names, ``group_index``) pick the run; knob values
        that differ from it build a new, validated run from it."""
        knobs = {k: plain(v) for k, v in flatten(dict(flat)).items()}
        picked = {k: knobs.pop(k) for k in [*LABELS, GROUP_INDEX] if k in knobs}
        candidates = self._by_labels(picked)
        for i in candidates:
            own = identity(self.runs[i], self.names)
            if all(_same(own.get(k, _MISSING), v) for k, v in knobs.items()):
                return self.runs[i]
        return apply_flat(self.runs[candidates[0]], knobs)

    def _by_labels(self, picked: Mapping[str, Any]) -> list[int]:
        """Indexes of the runs whose labels are ``picked``; ``ConfigError`` naming a label no
        run of the group has."""
        found = []
        for i, run in enumerate(self.runs):
            own = {**identity(run, self.names), GROUP_INDEX: i}
            if all(_same(own.get(k, _MISSING), v) for k, v in picked.items()):
                found.append(i)
        if found:
            return found
        known = {k: sorted({repr(p[k]) for p in self.points if k in p}) for k in picked}
        has = "; ".join(
            f"{k}: {', '.join(v) or 'one value, not varying'}" for k, v in known.items()
        )
        raise ConfigError(
            f"no run of this RFSearcher's group has {dict(picked)!r}; the group has {has}"
        )

    def best(
        self, metric: str | None = None, mode: str | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(flat config, last result) of the best trial or evaluated point by ``metric`` and
        ``mode`` (default: the searcher's); None before any has a finite value. With several
        objectives (a list metric), name the one to rank by: ``best("a", "max")``."""
        metric = self._metric if metric is None else metric
        mode = self._mode if mode is None else mode
        if isinstance(metric, list) or isinstance(mode, list):
            raise ConfigError(
                f"this searcher has several objectives (metric={metric!r}, mode={mode!r}); "
                f"rank by one of them: best(metric=..., mode=...)"
            )
        check_objective(metric, mode)
        scored = [
            (r[metric], config, r)
            for config, r in self._outcomes()
            if metric and is_number(r.get(metric))
        ]
        if not scored:
            return None
        pick = max if mode == "max" else min
        _, config, result = pick(scored, key=lambda t: t[0])
        return dict(config), dict(result)

    def _outcomes(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(flat config, result) of every suggested trial with a result and every point
        evaluated elsewhere, in that order."""
        out = [
            (self.points[i], self.results[t]) for t, i in self.assigned.items() if t in self.results
        ]
        out += [(e["config"], e["result"]) for e in self.evaluated if not e["error"]]
        return out

    # -- persistence: the whole state, as JSON, written atomically
    def get_state(self) -> dict[str, Any]:
        """Every attribute but those rebuilt from the search space (a subclass's too)."""
        return {k: v for k, v in self.__dict__.items() if k not in _DERIVED}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.__dict__.update(state)

    def _fingerprint(self) -> str:
        return _key(self.points)

    def save(self, checkpoint_path: str) -> None:
        """Write ``get_state()`` to ``checkpoint_path`` (temp file, then ``os.replace``).
        Values JSON holds exactly are stored as JSON; any other (a subclass's set, an object)
        is cloudpickled, so restore only files you or your Tune run wrote."""
        plain_state, pickled = {}, {}
        for key, value in self.get_state().items():
            if _json_exact(value):
                plain_state[key] = value
            else:
                import cloudpickle

                pickled[key] = base64.b64encode(cloudpickle.dumps(value)).decode("ascii")
        document = {"version": STATE_VERSION, "space": self._fingerprint(),
                    "state": plain_state, "pickled": pickled}  # fmt: skip
        path = Path(checkpoint_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(document, sort_keys=True))
        os.replace(tmp, path)

    def restore(self, checkpoint_path: str) -> None:
        """Load what ``save`` wrote; refuses a file of a searcher over a different space."""
        document = _read_state(checkpoint_path)
        if document.get("version") == 1:  # the fixed fields of rf-ray before the whole state
            document = _from_version_1(document)
        if document.get("space") != self._fingerprint():
            raise ConfigError(
                f"{checkpoint_path} was saved by an RFSearcher over a different search space; "
                "restore it into a searcher built from the same config group"
            )
        state = dict(document["state"])
        if document["pickled"]:
            import cloudpickle

            for key, blob in document["pickled"].items():
                state[key] = cloudpickle.loads(base64.b64decode(blob))
        self.set_state(state)


# ---------------------------------------------------------------------------- helpers
_MISSING = object()


def check_objective(metric: Any, mode: Any) -> None:
    """``metric``/``mode`` as Tune's ``Searcher`` takes them (a str and "min"/"max", or lists
    of equal length, modes "min"/"max"/"obs"; either may be None), else ``ConfigError``."""
    if isinstance(metric, list) or isinstance(mode, list):
        ok = (
            isinstance(metric, list) and all(isinstance(m, str) and m for m in metric)
            and (mode is None or (isinstance(mode, list) and len(mode) == len(metric)
                                  and all(m in (*_MODES, "obs") for m in mode)))
        )  # fmt: skip
        if not ok:
            raise ConfigError(
                f"metric={metric!r}, mode={mode!r}: several objectives take a list of metric "
                "names and a list of as many modes, each 'min', 'max' or 'obs'"
            )
        return
    if metric is not None and (not isinstance(metric, str) or not metric):
        raise ConfigError(f"metric={metric!r} must be a metric name (str) or a list of them")
    if mode is not None and mode not in _MODES:
        raise ConfigError(f"mode={mode!r} must be 'min' or 'max'")


def _distinct(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``points``, with ``GROUP_INDEX`` added to every point when two of them are equal (two
    runs that differ in nothing a flat dict shows): each suggestion names one run."""
    seen = [_key(p) for p in points]
    if len(set(seen)) == len(seen):
        return points
    return [{**p, GROUP_INDEX: i} for i, p in enumerate(points)]


def _same(a: Any, b: Any) -> bool:
    if a is _MISSING or b is _MISSING:
        return a is b
    return _key(a) == _key(b)


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


def _scalars(result: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar entries of a Tune result (NumPy scalars as Python numbers)."""
    out = {}
    for k, v in result.items():
        v = plain(v)
        if v is None or isinstance(v, (int, float, str, bool)):
            out[str(k)] = v
    return out


def _jsonable(flat: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v if _json_exact(v) else repr(v) for k, v in flat.items()}


def _json_exact(value: Any) -> bool:
    """Whether JSON gives ``value`` back as it is (same types, str keys; NaN/inf included)."""
    if value is None or type(value) in (str, int, bool):
        return True
    if type(value) is float:
        return True  # Python's json writes and reads NaN and infinities
    if type(value) is list:
        return all(_json_exact(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _json_exact(v) for k, v in value.items())
    return False


def _read_state(checkpoint_path: str) -> dict[str, Any]:
    try:
        document = json.loads(Path(checkpoint_path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(
            f"cannot read the RFSearcher state {checkpoint_path}: {e}; restore from a file "
            "that RFSearcher.save wrote"
        ) from e
    if not isinstance(document, dict) or document.get("version") not in (1, STATE_VERSION):
        raise ConfigError(
            f"{checkpoint_path} is not an RFSearcher state file (version "
            f"{document.get('version') if isinstance(document, dict) else None!r}); restore "
            "from a file that RFSearcher.save wrote"
        )
    return document


def _from_version_1(document: Mapping[str, Any]) -> dict[str, Any]:
    state = {
        "next_index": int(document["next_index"]),
        "assigned": {str(k): int(v) for k, v in document["assigned"].items()},
        "results": dict(document["results"]),
        "completed": list(document["completed"]),
    }
    for key in ("metric", "mode"):
        if document.get(key) is not None:
            state[f"_{key}"] = document[key]
    return {"space": document["points"], "state": state, "pickled": {}}
