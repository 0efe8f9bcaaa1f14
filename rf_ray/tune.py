"""Ray Tune and rf-ray, in three directions; every one keeps ONE resident base model.

(a) Tune drives, rf-ray trains. ``start_shared`` starts one experiment, kept open; each Tune
    trial of ``shared.trainable()`` maps its config onto a base ``RFModelConfig``, adds one run
    to that experiment (``ops.add_runs``) and reports its chunk metrics to Tune, one
    ``tune.report`` per chunk (``training_iteration`` == chunks done). Tune's search algorithms
    (Optuna, HyperOpt, ...) pick configs, Tune's schedulers (ASHA) stop trials; a stopped trial's
    run is pruned by ``shared.callback`` (pass it to ``tune.RunConfig(callbacks=...)``: Tune kills
    a stopped trial's process, so the trial itself cannot), and ``shared.close()`` prunes any run
    still live, releases the experiment and waits for it.

        import rf_ray.tune as rft
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch

        shared = rft.start_shared("tune-demo", base=RFModelConfig("rf-ray/tiny-llama",
            training_args=RFSFTConfig(per_device_train_batch_size=4, max_length=48)),
            train_dataset=train, eval_dataset=evals, num_chunks=4)
        tuner = tune.Tuner(
            shared.trainable(),  # asks for 0.1 CPU, no GPU: the executor holds the device
            param_space={"learning_rate": tune.loguniform(1e-5, 1e-3),
                         "lora_rank": tune.choice([4, 8])},
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(metric="eval_loss", mode="min"),
                scheduler=ASHAScheduler(metric="eval_loss", mode="min", max_t=4,
                                        grace_period=1),
                num_samples=8, max_concurrent_trials=4),
            run_config=tune.RunConfig(callbacks=[shared.callback]),
        )
        results = tuner.fit()
        shared.close()  # -> runs info; shared.experiment.stats()["base_loads"] == 1

    ``trainable(experiment=..., base=..., ...)`` is ``start_shared(...).trainable()`` in one call
    (the returned function carries ``.shared``). Param-space keys are knob names as in
    ``clone_modify``: TRL fields (``learning_rate``), LoRA shorthand (``lora_rank``) or
    ``lora.r``, ``model_kwargs.x``; an unknown key raises ``UnknownKnobError`` naming it
    (``shared.check(param_space)`` checks a space in the driver before ``Tuner.fit``).

(b) rf-ray's knob spaces as a Tune ``Searcher``: ``RFSearcher(RFGridSearch(...))`` suggests the
    group's runs in order, as flat dicts of the knobs that vary (``{"learning_rate": 1e-4,
    "lora.r": 8}``), then ``Searcher.FINISHED``; ``searcher.to_run_config(flat)`` maps one back.

        tuner = tune.Tuner(my_trainable, tune_config=tune.TuneConfig(
            search_alg=RFSearcher(RFGridSearch(cfg), metric="eval_loss", mode="min"),
            num_samples=100))  # stops when the grid is exhausted

(c) rf-ray drives, a Tune searcher suggests: ``RFTuneSearch(searcher, num_runs, base=...)`` is a
    config group for ``run_fit``. It starts with ``max_concurrent`` suggestions; a driver thread
    feeds every chunk's metrics back (``on_trial_result``, ``training_iteration`` = chunk) and a
    finished run's last ones (``on_trial_complete``), and asks for a new config whenever a run
    completes or is pruned, until ``num_runs`` configs have been tried.

        exp.run_fit(RFTuneSearch(OptunaSearch(space, metric="eval_loss", mode="min"),
                                 num_runs=6, base=RFModelConfig(...), max_concurrent=2),
                    train_dataset=train, eval_dataset=evals, num_chunks=4)

Both (a) and (c) keep the experiment open with a *hold* on its scheduler
(``SchedulerActor.hold(token)`` / ``unhold(token)``): with a hold the experiment does not end
when no run is live, since a driver may still add one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from ray.tune import Callback
from ray.tune.search import Searcher

from policies.errors import ConfigError, OpError, RunFailedError, UnknownKnobError
from policies.pruning import NoPruning, Pruner
from policies.state import RunStatus, is_live
from rf_ray import ops
from rf_ray.config import LORA_SHORTHAND, List, Range, RFModelConfig, RunConfig
from rf_ray.experiment import Experiment
from rf_ray.search import ConfigGroup, RFGridSearch, knob_space, validate_run

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.25
"""How often a trial or a driver reads the experiment store for new chunk metrics."""
DEFAULT_TRIAL_RESOURCES: dict[str, float] = {"cpu": 0.1, "gpu": 0}
"""A Tune trial only waits on the store; the executor actor holds the CPU/GPU that trains."""

_SECTIONS = ("lora.", "model_kwargs.", "tokenizer_kwargs.", "generation_config.")


# ---------------------------------------------------------------------------- flat <-> RunConfig
def _plain(value: Any) -> Any:
    """NumPy scalars (Tune/Optuna may hand them out) as Python numbers."""
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (list, dict)):
        with contextlib.suppress(TypeError, ValueError):
            return value.item()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"lora": {"r": 8}, "learning_rate": 1e-4}`` -> ``{"lora.r": 8, "learning_rate": 1e-4}``
    (only the sections above nest; any other dict value is a value)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str):
            raise ConfigError(f"config keys must be str, got {key!r}")
        if isinstance(value, Mapping) and f"{key}." in _SECTIONS and not prefix:
            out.update(flatten(value, f"{key}."))
        else:
            out[prefix + key] = _plain(value)
    return out


def flat_knobs(run: RunConfig) -> dict[str, Any]:
    """A run's concrete knobs, flat, with their real values (``lora.r``, ``learning_rate``)."""
    out: dict[str, Any] = {"model_name": run.model_name}
    out.update(run.training_args)
    for section in _SECTIONS:
        values = getattr(run, section[:-1]) or {}
        out.update({section + k: v for k, v in values.items()})
    return out


def apply_flat(run: RunConfig, flat: Mapping[str, Any]) -> RunConfig:
    """``run`` with the flat knob values of ``flat`` set; validated (TRL and PEFT build it).

    Keys: TRL field names, LoRA shorthand (``lora_rank``) or ``lora.<field>``,
    ``model_kwargs.<kw>``, ``tokenizer_kwargs.<kw>``, ``generation_config.<kw>``, ``model_name``.
    Raises ``UnknownKnobError`` naming a key that is none of these.
    """
    import dataclasses

    changes = flatten(dict(flat))
    fields: dict[str, Any] = {}
    if "model_name" in changes:
        fields["model_name"] = changes.pop("model_name")
    for section in ("tokenizer_kwargs.", "generation_config."):
        picked = {k: v for k, v in changes.items() if k.startswith(section)}
        if picked:
            base = dict(getattr(run, section[:-1]) or {})
            base.update({k.removeprefix(section): v for k, v in picked.items()})
            fields[section[:-1]] = base
            for k in picked:
                changes.pop(k)
    if fields:
        run = dataclasses.replace(run, **fields)
    if changes:
        try:
            run = ops.modified(run, changes)
        except UnknownKnobError as e:
            bad = [k for k in changes if f"{k!r}" in str(e) or f"[{k!r}]" in str(e)]
            name = bad[0] if bad else "?"
            raise UnknownKnobError(
                f"config key {name!r} is not an rf-ray knob: {e} Keys are TRL field names "
                f"(learning_rate), LoRA shorthand ({', '.join(LORA_SHORTHAND)}) or lora.<field>, "
                "model_kwargs.<kw>, tokenizer_kwargs.<kw>, generation_config.<kw>, model_name."
            ) from None
    validate_run(run)
    return run


def concrete(base: Any) -> RunConfig:
    """The one run of a config without knobs (an RFModelConfig or a RunConfig)."""
    if isinstance(base, RunConfig):
        validate_run(base)
        return base
    if not isinstance(base, RFModelConfig):
        raise ConfigError(f"base must be an RFModelConfig, got {type(base).__name__}")
    runs = RFGridSearch(base).expand()
    if len(runs) != 1:
        raise ConfigError(
            f"base expands to {len(runs)} runs; give a base without List/Range knobs and put "
            "the knobs to tune in the Tune search space"
        )
    return runs[0]


# ---------------------------------------------------------------------------- (b) RFSearcher
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
        keys = list(dict.fromkeys(k for f in flats for k in f))
        missing = object()
        self.keys = [
            k for k in keys if len({json.dumps(f.get(k, missing), default=repr) for f in flats}) > 1
        ]
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
        self.results[trial_id] = _jsonable(result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if result is not None:
            self.results[trial_id] = _jsonable(result)
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
            if self.metric and _finite(r.get(self.metric)) and tid in self.assigned
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


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _jsonable(result: Mapping[str, Any]) -> dict[str, Any]:
    return {
        str(k): _plain(v)
        for k, v in result.items()
        if isinstance(_plain(v), (int, float, str, bool)) or v is None
    }


# ---------------------------------------------------------------------------- store helpers
def _read_store(exp_dir: Path) -> tuple[dict[int, dict[str, Any]], list[tuple[int, int, Any]]]:
    from actors.store import Store

    store = Store(exp_dir, readonly=True)
    try:
        return {r["run_id"]: r for r in store.runs()}, store.chunk_metrics()
    finally:
        store.close()


def _end_run(scheduler: Any, run_id: int) -> None:
    """Prune ``run_id`` if it is still live (a pending run too); quiet if it already ended."""
    with contextlib.suppress(OpError):
        ops.apply(scheduler, "prune", run_id)


def _release(scheduler: Any, token: str) -> None:
    import ray

    with contextlib.suppress(Exception):  # the experiment's actors may be gone already
        ray.get(scheduler.unhold.remote(token))


# ---------------------------------------------------------------------------- (a) Tune drives
class _Shell(ConfigGroup):
    """An empty config group that keeps the experiment open for runs added later."""

    def __init__(self, token: str) -> None:
        self.hold_token = token

    def expand(self) -> list[RunConfig]:
        return []


class SharedExperiment:
    """One running rf-ray experiment that Tune trials add their runs to (see module doc)."""

    def __init__(
        self,
        experiment: Experiment,
        base: RunConfig,
        metric: str,
        token: str,
        resources: Mapping[str, float],
    ) -> None:
        self.experiment = experiment
        self.base = base
        self.metric = metric
        self.token = token
        self.resources = dict(resources)
        self.trial_runs: dict[str, int] = {}
        """Tune trial id -> rf-ray run id, as seen by ``callback``."""
        self.callback = PruneStoppedTrials(self)
        self.closed = False

    @property
    def name(self) -> str:
        return self.experiment.name

    def check(self, param_space: Mapping[str, Any]) -> None:
        """Raise ``UnknownKnobError`` naming a param-space key that is not a knob, in the driver
        (a trial would raise it too, but only after Tune started it)."""
        sample = {k: _sample_value(v) for k, v in flatten(dict(param_space)).items()}
        apply_flat(self.base, sample)

    def trainable(self, resources: Mapping[str, float] | None = None) -> Any:
        """The Tune function trainable: one rf-ray run per trial, one report per chunk."""
        from ray import tune

        fn = _make_trial_fn(self.name, str(self.experiment.dir), self.base)
        wrapped = tune.with_resources(fn, dict(resources or self.resources))
        wrapped.shared = self  # type: ignore[attr-defined]
        return wrapped

    def close(self, end: bool = True) -> pd.DataFrame:
        """After ``Tuner.fit``: prune runs still live (their trials are gone), drop the hold,
        wait for the experiment to end and (``end``) release its actors; return runs info."""
        try:
            if not self.closed:
                scheduler = self.experiment._scheduler()
                runs, _ = _read_store(self.experiment.dir)
                for run_id, row in runs.items():
                    if is_live(RunStatus(row["status"])):
                        _end_run(scheduler, run_id)
                _release(scheduler, self.token)
                self.closed = True
            return self.experiment.wait()
        finally:
            if end:
                self.experiment.end()


class PruneStoppedTrials(Callback):
    """Tune callback (driver side): when Tune stops a trial (ASHA) or loses it, prune its run.

    Tune kills a stopped trial's process, so the trial cannot do this itself."""

    def __init__(self, shared: SharedExperiment) -> None:
        self.shared = shared

    def on_trial_result(  # type: ignore[override]
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if "rf_run_id" in result:
            self.shared.trial_runs[trial.trial_id] = int(result["rf_run_id"])

    def _stop(self, trial: Any) -> None:
        run_id = self.shared.trial_runs.get(trial.trial_id)
        if run_id is None:
            run_id = (getattr(trial, "last_result", None) or {}).get("rf_run_id")
        if run_id is not None:
            _end_run(self.shared.experiment._scheduler(), int(run_id))

    def on_trial_complete(  # type: ignore[override]
        self, iteration: int, trials: list[Any], trial: Any, **info: Any
    ) -> None:
        self._stop(trial)

    def on_trial_error(  # type: ignore[override]
        self, iteration: int, trials: list[Any], trial: Any, **info: Any
    ) -> None:
        self._stop(trial)


def _sample_value(domain: Any) -> Any:
    """One value of a Tune domain (or the value itself), to check a space's keys."""
    if hasattr(domain, "sample") and callable(domain.sample):
        with contextlib.suppress(Exception):
            return _plain(domain.sample())
    if isinstance(domain, dict) and "grid_search" in domain:
        return _plain(domain["grid_search"][0])
    return domain


def _make_trial_fn(name: str, exp_dir: str, base: RunConfig) -> Callable[[dict[str, Any]], None]:
    def rf_ray_trial(config: dict[str, Any]) -> None:
        from ray import tune

        run = apply_flat(base, config)  # UnknownKnobError names a bad key, before any run
        scheduler = ops.attach(exp_dir)
        (run_id,) = ops.add_runs(scheduler, Path(exp_dir), [run])
        reported = 0
        try:
            while True:
                runs, chunks = _read_store(Path(exp_dir))
                mine = sorted((c, m) for r, c, m in chunks if r == run_id and c > reported)
                for chunk, metrics in mine:
                    tune.report({**metrics, "chunk": chunk, "rf_run_id": run_id})
                    reported = chunk
                status = RunStatus(runs[run_id]["status"])
                if not is_live(status) and not mine:
                    if status is RunStatus.FAILED:
                        raise RunFailedError(f"rf-ray run {run_id} failed: {runs[run_id]}")
                    return
                if not mine:
                    time.sleep(POLL_SECONDS)
        finally:
            # Reached when the function returns or raises, and when Tune stops the trial
            # gracefully (SystemExit at its next report); if Tune kills the process first,
            # the driver's callback (or close()) prunes the run.
            _end_run(scheduler, run_id)

    return rf_ray_trial


def start_shared(
    experiment: str | Experiment,
    base: RFModelConfig | RunConfig,
    train_dataset: Any,
    eval_dataset: Any = None,
    num_chunks: int = 4,
    seed: int = 42,
    create_model_fn: Callable[[Any], tuple[Any, Any]] | None = None,
    metric: str | None = None,
    max_slice_steps: int | None = None,
    num_executors: int | None = None,
    resources: Mapping[str, float] | None = None,
) -> SharedExperiment:
    """Start ``experiment`` with no run and a hold (call in the Tune driver, before ``fit``).

    The experiment's actors belong to this process, so they outlive every trial. Pruning is
    Tune's job: the experiment's own pruner is ``NoPruning``.
    """
    exp = experiment if isinstance(experiment, Experiment) else Experiment(experiment)
    run = concrete(base)
    metric = metric or ("eval_loss" if eval_dataset is not None else "train_loss")
    token = f"tune-{uuid.uuid4().hex[:8]}"
    pruner: Pruner = NoPruning(metric=metric, mode="min")
    _check_columns(run, train_dataset, eval_dataset)
    exp.run_fit(
        _Shell(token),
        create_model_fn,
        train_dataset,
        eval_dataset,
        num_chunks=num_chunks,
        seed=seed,
        pruner=pruner,
        max_slice_steps=max_slice_steps,
        live_view=False,
        num_executors=num_executors,
        blocking=False,
    )
    return SharedExperiment(exp, run, metric, token, resources or DEFAULT_TRIAL_RESOURCES)


def _check_columns(run: RunConfig, train: Any, evals: Any) -> None:
    """run_fit checks dataset columns per run; with no run yet, check the base's here."""
    from rf_ray.data import check_columns, to_dataset

    if train is not None:
        check_columns(to_dataset(train, "train_dataset"), run, "train_dataset")
    if evals is not None:
        check_columns(to_dataset(evals, "eval_dataset"), run, "eval_dataset")


def trainable(
    experiment: str | Experiment,
    base: RFModelConfig | RunConfig,
    train_dataset: Any,
    eval_dataset: Any = None,
    num_chunks: int = 4,
    seed: int = 42,
    create_model_fn: Callable[[Any], tuple[Any, Any]] | None = None,
    param_space: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """``start_shared(...)`` then ``.trainable()``; ``param_space`` (optional) is checked now.
    The result carries ``.shared``: pass ``.shared.callback`` to Tune, call
    ``.shared.close()`` after ``fit``."""
    shared = start_shared(
        experiment, base, train_dataset, eval_dataset, num_chunks, seed, create_model_fn, **kwargs
    )
    if param_space is not None:
        try:
            shared.check(param_space)
        except Exception:
            shared.close()
            raise
    return shared.trainable()


# ---------------------------------------------------------------------------- (c) rf-ray drives
class RFTuneSearch(ConfigGroup):
    """A Tune ``Searcher`` as an rf-ray config source (see module doc, direction (c)).

    ``expand()`` (called once by ``run_fit``) asks the searcher for the first
    ``max_concurrent`` configs; ``start_driver`` (called by ``run_fit`` once the actors run)
    starts a thread that feeds chunk metrics back and adds a new run whenever fewer than
    ``max_concurrent`` of its runs are live, until ``num_runs`` configs (or the searcher says
    ``FINISHED``). The experiment stays open (a scheduler hold) until that thread is done.
    """

    def __init__(
        self,
        searcher: Searcher,
        num_runs: int,
        base: RFModelConfig | RunConfig,
        max_concurrent: int | None = None,
    ) -> None:
        if not isinstance(searcher, Searcher):
            raise ConfigError(
                f"searcher must be a ray.tune.search.Searcher (e.g. OptunaSearch(space, "
                f"metric=..., mode=...)), got {type(searcher).__name__}"
            )
        if isinstance(num_runs, bool) or not isinstance(num_runs, int) or num_runs < 1:
            raise ConfigError(f"num_runs={num_runs!r} must be an int >= 1")
        max_concurrent = 4 if max_concurrent is None else max_concurrent
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int):
            raise ConfigError(f"max_concurrent={max_concurrent!r} must be an int >= 1")
        if max_concurrent < 1:
            raise ConfigError(f"max_concurrent={max_concurrent!r} must be an int >= 1")
        self.searcher = searcher
        self.num_runs = num_runs
        self.max_concurrent = max_concurrent
        self.base = concrete(base)
        self.hold_token = f"search-{uuid.uuid4().hex[:8]}"
        self.trials: dict[str, RunConfig] = {}
        """trial id -> run, in suggestion order."""
        self.run_ids: dict[int, str] = {}
        """rf-ray run id -> trial id."""
        self.max_live_seen = 0
        self.errors: list[str] = []
        self.rejected: set[str] = set()
        """Trials whose config could not become a run (reported to the searcher as errors)."""
        self.exhausted = False
        self._initial: list[RunConfig] | None = None
        self._thread: threading.Thread | None = None

    def _suggest(self) -> RunConfig | None:
        """The searcher's next config as a run; None if it has none now (or is finished)."""
        while len(self.trials) < self.num_runs and not self.exhausted:
            trial_id = f"rf_{len(self.trials):05d}"
            config = self.searcher.suggest(trial_id)
            if config == Searcher.FINISHED:
                self.exhausted = True
                return None
            if config is None:
                return None
            try:
                run = apply_flat(self.base, config)
            except ConfigError as e:
                if not self.trials:  # the first suggestion: a bad space, say it in run_fit
                    raise
                self.errors.append(f"{trial_id}: {e}")
                self.trials[trial_id] = self.base
                self.rejected.add(trial_id)
                self.searcher.on_trial_complete(trial_id, error=True)
                continue
            self.trials[trial_id] = run
            return run
        return None

    def expand(self) -> list[RunConfig]:
        if self._initial is None:
            initial: list[RunConfig] = []
            while len(initial) < min(self.max_concurrent, self.num_runs):
                run = self._suggest()
                if run is None:
                    break
                initial.append(run)
            self._initial = initial
        return list(self._initial)

    def start_driver(self, experiment: Experiment) -> None:
        session = experiment._session
        assert session is not None
        ids = sorted(session.params)
        trial_ids = [t for t in self.trials if t not in self.rejected]
        self.run_ids = dict(zip(ids, trial_ids, strict=True))
        self._thread = threading.Thread(
            target=self._drive,
            args=(session.scheduler, Path(experiment.dir)),
            name=f"rf-ray-search-{experiment.name}",
            daemon=True,
        )
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _drive(self, scheduler: Any, exp_dir: Path) -> None:
        fed: dict[int, int] = {}
        last: dict[int, dict[str, Any]] = {}
        complete: set[int] = set()
        try:
            while True:
                runs, chunks = _read_store(exp_dir)
                for run_id, chunk, metrics in sorted(chunks, key=lambda t: (t[1], t[0])):
                    if run_id in self.run_ids and chunk > fed.get(run_id, 0):
                        result = {**metrics, "training_iteration": chunk, "chunk": chunk}
                        result["rf_run_id"] = run_id
                        self.searcher.on_trial_result(self.run_ids[run_id], result)
                        fed[run_id], last[run_id] = chunk, result
                live = 0
                for run_id, trial_id in self.run_ids.items():
                    row = runs.get(run_id)
                    if row is None or is_live(RunStatus(row["status"])):
                        live += 1
                    elif run_id not in complete:
                        complete.add(run_id)
                        failed = row["status"] == RunStatus.FAILED.value
                        self.searcher.on_trial_complete(
                            trial_id, result=last.get(run_id), error=failed
                        )
                self.max_live_seen = max(self.max_live_seen, live)
                while live < self.max_concurrent:
                    run = self._suggest()
                    if run is None:
                        break
                    trial_id = list(self.trials)[-1]
                    (run_id,) = ops.add_runs(scheduler, exp_dir, [run])
                    self.run_ids[run_id] = trial_id
                    live += 1
                    self.max_live_seen = max(self.max_live_seen, live)
                no_more = self.exhausted or len(self.trials) >= self.num_runs
                if no_more and live == 0:
                    return
                time.sleep(POLL_SECONDS)
        except Exception as e:  # the experiment must not stay open because the driver failed
            logger.exception("rf-ray search driver failed; no more runs will be added")
            self.errors.append(repr(e))
        finally:
            _release(scheduler, self.hold_token)


# ---------------------------------------------------------------------------- RFOptuna
TUNE_EXTRA = 'pip install "rf-ray[tune]"'


class RFOptuna(RFTuneSearch):
    """RapidFire AI's ``RFOptuna`` in rf-ray: Optuna (through Ray Tune's ``OptunaSearch``)
    proposes the runs of a ``run_fit``, from the ``List`` / ``Range`` knobs of ONE config.

    ``n_initial`` runs start together; each time one completes or is pruned, Optuna proposes
    the next, until ``budget`` runs were tried. ``objective`` is ``"minimize:<metric>"`` or
    ``"maximize:<metric>"`` over the chunk metrics (``eval_loss``, ``train_loss``, ...).
    The same search by hand: ``RFTuneSearch(OptunaSearch(space, metric=..., mode=...),
    num_runs=budget, base=..., max_concurrent=n_initial)``. Needs Optuna (``TUNE_EXTRA``).
    """

    def __init__(
        self,
        configs: Any,
        trainer_type: str | None = None,
        n_initial: int = 4,
        budget: int | None = None,
        objective: str = "minimize:eval_loss",
        seed: int | None = None,
    ) -> None:
        direction, _, metric = objective.partition(":") if isinstance(objective, str) else ("",) * 3
        modes = {"minimize": "min", "maximize": "max"}
        if direction not in modes or not metric:
            raise ConfigError(
                f"objective={objective!r} must be 'minimize:<metric>' or 'maximize:<metric>', "
                "e.g. 'minimize:eval_loss'"
            )
        for name, value in (("n_initial", n_initial), ("budget", budget)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):  # fmt: skip
                raise ConfigError(f"{name}={value!r} must be an integer >= 1")
        base, knobs = knob_space(configs, trainer_type, who="RFOptuna")
        if not knobs:
            raise ConfigError(
                "RFOptuna found no List or Range knob to search over; add one (e.g. "
                "learning_rate=Range(1e-5, 1e-3, log=True)) or pass the config to run_fit as is"
            )
        try:
            from ray.tune.search.optuna import OptunaSearch

            searcher = OptunaSearch(
                {k: _tune_domain(v) for k, v in knobs.items()},
                metric=metric, mode=modes[direction], seed=seed,
            )  # fmt: skip
        except (ImportError, AssertionError) as e:  # OptunaSearch asserts optuna is importable
            raise ConfigError(
                f"RFOptuna needs Optuna, which is not installed: {TUNE_EXTRA} ({e})"
            ) from None
        super().__init__(searcher, budget or n_initial, base, max_concurrent=n_initial)
        self.metric, self.mode = metric, modes[direction]


def _tune_domain(knob: List | Range) -> Any:
    """A ``List`` or ``Range`` as the Ray Tune domain Optuna samples."""
    from ray import tune

    if isinstance(knob, List):
        return tune.choice(list(knob.values))
    if knob.step is not None:
        if knob.dtype is int:
            return tune.qrandint(int(knob.low), int(knob.high), int(knob.step))
        return tune.quniform(knob.low, knob.high, knob.step)
    if knob.dtype is int:
        fn = tune.lograndint if knob.log else tune.randint
        return fn(int(knob.low), int(knob.high) + 1)  # Tune's upper bound is exclusive
    return (tune.loguniform if knob.log else tune.uniform)(knob.low, knob.high)


__all__ = [
    "RFOptuna",
    "RFSearcher",
    "RFTuneSearch",
    "SharedExperiment",
    "apply_flat",
    "concrete",
    "flat_knobs",
    "flatten",
    "start_shared",
    "trainable",
]
