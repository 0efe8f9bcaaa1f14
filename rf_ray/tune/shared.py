"""(a) Tune drives, rf-ray trains: one shared experiment that Tune trials add runs to
(see ``rf_ray.tune``)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from ray.tune import Callback

from policies.errors import OpError, RunFailedError
from policies.pruning import NoPruning, Pruner
from policies.settings import default_metric
from policies.state import RunStatus, is_live
from rf_ray import ops
from rf_ray.compat import check_requirements, warn_replaced
from rf_ray.configs import RFModelConfig
from rf_ray.experiment import Experiment
from rf_ray.search import ConfigGroup
from rf_ray.specs import RunConfig
from rf_ray.tune.flat import apply_flat, concrete, flatten, plain

POLL_SECONDS = 0.25
"""How often a trial or a driver reads the experiment store for new chunk metrics."""
DEFAULT_TRIAL_RESOURCES: dict[str, float] = {"cpu": 0.1, "gpu": 0}
"""A Tune trial only waits on the store; the executor actor holds the CPU/GPU that trains."""


# ---------------------------------------------------------------------------- store helpers
def read_progress(exp_dir: Path) -> tuple[dict[int, dict[str, Any]], list[tuple[int, int, Any]]]:
    """The experiment's runs by id, and its chunk metrics ``(run_id, chunk, metrics)``."""
    from actors.storage.store import Store

    store = Store(exp_dir, readonly=True)
    try:
        return {r["run_id"]: r for r in store.runs()}, store.chunk_metrics()
    finally:
        store.close()


def _end_run(scheduler: Any, run_id: int) -> None:
    """Prune ``run_id`` if it is still live (a pending run too); quiet if it already ended."""
    with contextlib.suppress(OpError):
        ops.apply(scheduler, "prune", run_id)


def release_hold(experiment: Experiment, token: str) -> None:
    """``experiment.unhold(token)``, quiet if the experiment's actors are gone already."""
    with contextlib.suppress(Exception):
        experiment.unhold(token)


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

    def run_config(self, **kwargs: Any) -> Any:
        """``tune.RunConfig(**kwargs)`` for this experiment's Tuner: Tune writes its results
        under ``<experiment dir>/tune`` (not ``~/ray_results``) unless ``storage_path`` is
        given, and ``callback`` is added to ``callbacks``."""
        from ray import tune

        from actors.storage.durable import make_private_dir
        from actors.storage.layout import ExperimentDir

        if kwargs.get("storage_path") is None:
            tune_dir = ExperimentDir(self.experiment.dir).tune_dir
            kwargs["storage_path"] = str(make_private_dir(tune_dir))
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if self.callback not in callbacks:
            callbacks.insert(0, self.callback)
        return tune.RunConfig(callbacks=callbacks, **kwargs)

    def end_run(self, run_id: int) -> None:
        """Prune ``run_id`` if it is still live (a pending run too); quiet if it already ended."""
        with contextlib.suppress(OpError):
            self.experiment.prune(run_id)

    def close(self, end: bool = True) -> pd.DataFrame:
        """After ``Tuner.fit``: prune runs still live (their trials are gone), drop the hold,
        wait for the experiment to end and (``end``) release its actors; return runs info."""
        try:
            if not self.closed:
                runs, _ = read_progress(self.experiment.dir)
                for run_id, row in runs.items():
                    if is_live(RunStatus(row["status"])):
                        self.end_run(run_id)
                release_hold(self.experiment, self.token)
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
            self.shared.end_run(int(run_id))

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
            return plain(domain.sample())
    if isinstance(domain, dict) and "grid_search" in domain:
        return plain(domain["grid_search"][0])
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
                runs, chunks = read_progress(Path(exp_dir))
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


def start_shared(  # noqa: PLR0913  run_fit's options for the shared experiment
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
    # The experiment's one default rule (GRPO: mean reward, higher is better); a metric named
    # here is lower-is-better unless it is that default.
    default, default_mode = default_metric([run.trainer_type], eval_dataset is not None)
    metric = metric or default
    token = f"tune-{uuid.uuid4().hex[:8]}"
    pruner: Pruner = NoPruning(metric=metric, mode=default_mode if metric == default else "min")
    _check_columns(run, train_dataset, eval_dataset)
    warn_replaced(check_requirements([run]))  # before the search starts: refused or replaced
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
    The result carries ``.shared``: pass ``run_config=.shared.run_config()`` to the Tuner (it
    holds ``.shared.callback``), call ``.shared.close()`` after ``fit``."""
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
