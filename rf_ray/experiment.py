"""``Experiment``: the user's handle on one rf-ray experiment.

    exp = Experiment("lr-sweep")
    exp.run_fit(RFGridSearch(configs), create_model_fn, train, eval_dataset=ev, num_chunks=4)
    exp.get_runs_info(); exp.get_results(); exp.export(exp.get_best_run(), "best-adapter")

``run_fit`` validates everything first (knob names and values, datasets, chunking, the
experiment name), then writes the experiment directory, starts the actors on Ray (a local
cluster unless one is running or ``RAY_ADDRESS`` names one) and waits, showing a live view.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from actors import logs
from actors.engine.gen_eval import check_eval_set
from actors.storage.checkpoint import is_exported_adapter
from actors.storage.layout import ExperimentDir
from actors.storage.store import PRUNING_ERROR_KEY, Store
from actors.storage.trust import check_trusted
from actors.tracking import default_tracking_uri
from policies.errors import ConfigError, ExperimentExistsError
from policies.fusion import FusionPolicy
from policies.pruning import Pruner, pruner_from_dict
from policies.settings import DEFAULT_SLICE_TIMEOUT, ExperimentSettings, stored_settings
from rf_ray import background, ops, session, spec_store, summary
from rf_ray.compat import (
    IgnoredFieldWarning,
    check_requirements,
    ignored_field_warnings,
    rapidfire_env_notes,
    rapidfire_resources,
    run_fit_argument_notes,
    warn_replaced,
)
from rf_ray.configs import RFModelConfig
from rf_ray.data import check_columns, dataset_fingerprint, to_dataset
from rf_ray.legacy import warn_legacy
from rf_ray.metric_names import check_pruner_metric
from rf_ray.plan import Plan, check_experiment_name
from rf_ray.search import ConfigGroup, RFGridSearch
from rf_ray.specs import RunConfig, build_specs, describe, differing_keys, differing_params

logger = logging.getLogger(__name__)

DEFAULT_ROOT = "rf_experiments"
LOG_FILE = logs.LOG_FILE
"""An experiment's log (the driver's and the actors' records), in its directory."""
LOG_TYPES = (None, "main", "experiment", "training")
"""RapidFire's ``get_log_file_path`` kinds; rf-ray keeps one log holding all of them."""
MODES = ("fit", "evals")
_latest: list[Experiment] = []
"""The Experiment whose run_fit or resume started last in this process (``latest_experiment``)."""


class Experiment:
    """One named experiment: a directory with its store, checkpoints, adapters and MLflow db.

    The signature is RapidFire AI's (``Experiment(experiment_name, mode="fit",
    experiment_path=...)``): ``mode="fit"`` trains (``run_fit``), ``mode="evals"`` compares
    RAG and prompt pipelines (``run_evals``).

    An existing directory is opened only if it is yours alone (you own it and no one else can
    write it: ``actors.storage.trust``), since resuming it imports and unpickles the code its
    specs name; ``trust=True`` opens it anyway.
    """

    def __init__(
        self,
        experiment_name: str,
        mode: str = "fit",
        experiment_path: str | os.PathLike[str] | None = None,
        tracking_uri: str | None = None,
        trust: bool = False,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
    ) -> None:
        check_experiment_name(experiment_name)
        for note in rapidfire_resources("Experiment", num_cpus=num_cpus, num_gpus=num_gpus):
            warnings.warn(note, IgnoredFieldWarning, stacklevel=2)  # RapidFire AI's arguments
        if mode not in MODES:
            raise ConfigError(
                f"mode={mode!r} is not supported: use mode='fit' (fine-tuning, run_fit) or "
                "mode='evals' (RAG and prompt pipelines, run_evals)"
            )
        self.mode = mode
        self.name = experiment_name
        root = Path(experiment_path) if experiment_path is not None else Path(DEFAULT_ROOT)
        self.dir = (root / experiment_name).resolve()
        self.tracking_uri = tracking_uri or default_tracking_uri(self.dir)
        self.trust = bool(trust)
        """Open the directory even if it is not the user's alone (``check_trusted``)."""
        self._session: session.Session | None = None
        self._differing: list[str] = []
        self._live_view = True
        self._metric: tuple[str, str] | None = None
        self._warned: set[str] = set()
        self._rapidfire_args: dict[str, str] = {}
        """Notes on the RapidFire run_fit arguments of the latest run_fit (``_warn_ignored``)."""
        self._group: ConfigGroup | None = None
        self._pruning = ""
        """What run_fit said about pruning when it started (repeated in its summary)."""

    # ------------------------------------------------------------------ run_fit
    def run_fit(  # noqa: PLR0913  RapidFire AI's run_fit signature plus rf-ray's options
        self,
        param_config: ConfigGroup | RFModelConfig | list[RFModelConfig],
        create_model_fn: Callable[[Any], tuple[Any, Any]] | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        num_chunks: int = 4,
        seed: int = 42,
        num_gpus: int | None = None,
        monte_carlo_simulations: int | None = None,
        pruner: Pruner | None = None,
        max_slice_steps: int | None = None,
        live_view: bool = True,
        num_executors: int | None = None,
        blocking: bool | None = None,
        fusion: bool | FusionPolicy = True,
        slice_timeout: float | None = DEFAULT_SLICE_TIMEOUT,
    ) -> pd.DataFrame | None:
        """Train every config of ``param_config`` chunk by chunk; return ``get_runs_info()``.

        ``num_chunks`` is per epoch: each epoch of the training data is cut into that many
        chunks, so a run of 3 epochs (TRL's default ``num_train_epochs``) with ``num_chunks=4``
        trains 12 chunks, and pruning rungs count chunks across epochs. Progress reads "chunk
        3/4, epoch 1/3".

        ``create_model_fn(model_config) -> (model, tokenizer)`` is called once per distinct base
        model per executor (default: the embedded toy model or ``from_pretrained``).
        ``pruner`` defaults to ``SuccessiveHalving()`` on eval_loss (with an eval set) or the
        chunk's mean train loss (RapidFire's grid trains every run: ``pruner=NoPruning()`` does
        that); run_fit says which when it starts and ends with a summary of the runs. It raises
        ``NoRunTrainedError`` when runs failed and none trained. ``max_slice_steps`` bounds a
        slice in optimizer steps (and so how long an interactive-control op waits).

        ``blocking``: True waits until every run is over; False returns at once (steer the runs
        with ``stop``/``resume``/``delete``/``prune``/``clone_modify`` or an
        ``InteractiveController``, block with ``wait()``); None (the default) is RapidFire's
        behaviour: in a Colab notebook it trains in a background thread and returns at once,
        anywhere else it blocks (``RF_RAY_BACKGROUND=1`` or ``0`` decides: ``rf_ray.background``).

        ``fusion`` trains runs that share a base model (SFT, DPO) several at a time in one pass
        over it (``actors.engine.fused``); ``False`` time-slices every run, a ``FusionPolicy`` sets
        the group size and token budget.

        ``slice_timeout`` (seconds, > 0, or None for no deadline) bounds one slice: past it the
        run fails with an error naming the slice and what was running (a hung reward or
        formatting function), its executor is restarted and the other runs go on. The default,
        ``DEFAULT_SLICE_TIMEOUT`` (30 min), is far above a healthy slice (one chunk of
        one run); if yours are longer, cut them with more ``num_chunks`` or ``max_slice_steps``
        rather than raising the bound.

        RapidFire's ``num_gpus`` (GPUs per run, for FSDP) and ``monte_carlo_simulations`` (its
        scheduler's) are accepted in RapidFire's positions and ignored, saying so.

        A second ``run_fit`` (or ``resume()``) on the same object first stops the actors of the
        previous one, running or finished, so its executor frees the device.
        """
        self._check_mode("fit", "run_fit")
        self._rapidfire_args = run_fit_argument_notes(num_gpus, monte_carlo_simulations)
        group = _as_group(param_config)
        settings = ExperimentSettings.of(  # a group that prunes itself (RFOptuna) names its own
            num_chunks,
            seed,
            pruner or group.default_pruner(),
            fusion,
            max_slice_steps,
            slice_timeout,
        )
        plan = self._prepare(group, create_model_fn, train_dataset, eval_dataset, settings)
        self._stop_session()
        # A group that adds runs while the experiment runs (rf_ray.tune.RFTuneSearch) names a
        # hold token that keeps the experiment open, and starts its driver in on_start.
        self._session = session.start(plan, num_executors=num_executors, hold=group.hold_token)
        self._start_log_file()  # only now: a refused start writes nothing, not even a log
        _latest[:] = [self]
        self._differing, self._live_view, self._group = plan.differing, live_view, group
        self._pruning = summary.pruning_note(plan.settings.new_pruner(), group.pruning_note())
        summary.say(f"[rf-ray {self.name}] {len(plan.specs)} runs; {self._pruning}")
        group.on_start(self)
        if blocking is None and background.in_background_by_default():
            background.start(self.dir, self.name, lambda: self._wait_here(live_view=False))
            summary.say(
                f"[rf-ray {self.name}] training in the background: steer the runs with "
                "rf_ray.InteractiveController() or this Experiment's ops; wait() blocks until "
                "they are over"
            )
            return None
        if blocking is False:
            return None
        return self.wait()

    # ------------------------------------------------------------------ run_evals
    def run_evals(  # noqa: PLR0913  RapidFire AI's run_evals signature plus rf-ray's options
        self,
        config_group: ConfigGroup | dict[str, Any],
        dataset: Any,
        num_shards: int = 4,
        seed: int = 42,
        create_model_fn: Callable[[Any], tuple[Any, Any]] | None = None,
        pruner: Pruner | None = None,
        batched: bool = True,
        live_view: bool = True,
        blocking: bool = True,
        num_executors: int | None = None,
        slice_timeout: float | None = DEFAULT_SLICE_TIMEOUT,
        num_actors: int | None = None,
        gpus_per_actor: float | None = None,
        cpus_per_actor: float | None = None,
    ) -> dict[int, tuple[dict[str, list[Any]], dict[str, Any]]] | None:
        """Run every pipeline of ``config_group`` over ``dataset`` shard by shard; return
        ``{run_id: (aggregated_results, cumulative_metrics)}`` as RapidFire AI does.

        Each pipeline is a run; the eval set, in a ``seed``-shuffled order, is cut into
        ``num_shards`` shards (the chunks); every live pipeline gets its turn per shard, and
        after each shard its cumulative metrics carry confidence intervals. ``pruner``
        (default: none) drops pipelines, e.g. ``IntervalPruner(metric="NDCG@5", mode="max")``
        once an interval lies wholly below another's, or ``SuccessiveHalving(...)`` on shards.
        ``create_model_fn(model_config) -> (model, tokenizer)`` loads a local generator once
        (default: the toy model or ``from_pretrained``). With ``batched`` the pipelines on one
        generator generate each batch in one call; ``False`` runs them one after another.
        Steer pipelines while it runs (``blocking=False``) with stop/resume/delete/
        clone_modify, as fit runs. RapidFire's ``num_actors``, ``gpus_per_actor`` and
        ``cpus_per_actor`` are accepted and ignored, with a warning."""
        from rf_ray.evals.run import evals_plan, start_lines

        self._check_mode("evals", "run_evals")
        for note in rapidfire_resources("run_evals", num_actors=num_actors,
                                        gpus_per_actor=gpus_per_actor,
                                        cpus_per_actor=cpus_per_actor):  # fmt: skip
            warnings.warn(note, IgnoredFieldWarning, stacklevel=2)
        check_trusted(self.dir, self.trust)  # an existing directory is read, then written
        group = config_group if isinstance(config_group, ConfigGroup) else RFGridSearch(
            config_group
        )  # fmt: skip
        plan = evals_plan(
            name=self.name, exp_dir=self.dir, tracking_uri=self.tracking_uri,
            configs=group.expand(), dataset=dataset, num_shards=num_shards, seed=seed,
            pruner=pruner, create_model_fn=create_model_fn or _default_create_model_fn(),
            batched=batched, slice_timeout=slice_timeout, experiments_root=self.dir.parent,
        )  # fmt: skip
        self._stop_session()
        self._session = session.start(plan, num_executors=num_executors)
        self._start_log_file()
        _latest[:] = [self]  # what InteractiveController() steers
        for line in start_lines(plan):  # once per experiment, not per executor or shard
            summary.say(line)
        self._differing, self._live_view = plan.differing, live_view
        self._metric = (plan.settings.metric, plan.settings.mode)
        self._pruning = summary.evals_pruning_note(plan.settings.new_pruner())
        summary.say(f"[rf-ray {self.name}] {len(plan.specs)} pipelines; {self._pruning}")
        if not blocking:
            return None
        self.wait()
        return self.get_evals_results()

    def get_evals_results(self) -> dict[int, tuple[dict[str, list[Any]], dict[str, Any]]]:
        """Per pipeline (not failed or deleted): ``(aggregated_results, cumulative_metrics)``
        as of its last shard, the metrics with confidence intervals."""
        from rf_ray.evals.run import read_results

        self._check_mode("evals", "get_evals_results")
        self._store().close()  # a clear error when nothing ran yet
        return read_results(self.dir)

    def _check_mode(self, mode: str, what: str) -> None:
        if self.mode != mode:
            raise ConfigError(
                f"{what}() is for mode={mode!r}; this experiment was opened with "
                f"mode={self.mode!r}: Experiment({self.name!r}, mode={mode!r})"
            )

    def wait(self) -> pd.DataFrame:
        """Block until every run is over (live view as chosen in run_fit); show the summary
        and return runs info. Raises ``NoRunTrainedError`` when runs failed and none trained."""
        thread = background.get(self.dir)
        if thread is not None and thread.thread is not threading.current_thread():
            thread.thread.join()
            if thread.error is not None:
                raise thread.error
            return self.get_runs_info()
        return self._wait_here(self._live_view)

    def _wait_here(self, live_view: bool) -> pd.DataFrame:
        if self._session is None:
            raise ConfigError(f"experiment {self.name!r} is not running in this process")
        if not self._session.finished:
            session.wait(self._session, live_view=live_view, differing=self._differing)
            if self._group is not None:
                self._group.on_end(self)
            metric = self._metric[0] if self._metric else "metric"
            info = self.get_runs_info()
            summary.finish(self.name, info, metric, self._pruning, self.dir,
                           **self._summary_parts(list(info["run_id"])))  # fmt: skip
        return self.get_runs_info()

    def _summary_parts(self, run_ids: list[int]) -> dict[str, Any]:
        """An evals summary's own parts: each pipeline's last metrics with intervals, shards."""
        if self.mode != "evals":
            return {}
        from rf_ray.evals.progress import summary_tails

        return {"tails": summary_tails(self.dir, run_ids), "unit": "shards"}

    @property
    def running(self) -> bool:
        """Whether this object's latest run_fit or resume() is still going (not finished, not
        stopped)."""
        s = self._session
        return s is not None and not s.finished and not s.stopped

    # ------------------------------------------------------------------ interactive control
    def _scheduler(self) -> Any:
        if self._session is not None and not self._session.finished:
            return self._session.scheduler
        check_trusted(self.dir, self.trust)
        return ops.attach(self.dir)

    def wait_for_progress(
        self, run_id: int, steps: int = 0, chunks: int = 0, timeout: float = 300.0
    ) -> dict[str, Any]:
        """Block until run ``run_id`` has trained ``steps`` optimizer steps and closed ``chunks``
        chunks, or is no longer live (pruned, stopped, over); return its progress row
        (``status``, ``steps_done``, ``chunks_done``, metrics). Raises ``TimeoutError`` after
        ``timeout`` seconds, saying where the run stands. Useful before an op that needs a
        checkpoint (a warm clone) and in tests."""
        import ray

        ref = self._scheduler().wait_for_progress.remote(run_id, steps, chunks, timeout)
        return dict(ray.get(ref, timeout=timeout + 30))

    def stop(self, run_id: int) -> dict[str, Any]:
        """Pause a run at its next slice boundary (its checkpoint is kept; ``resume`` it)."""
        return ops.apply(self._scheduler(), "stop", run_id)

    def resume(
        self, run_id: int | None = None, blocking: bool = True, live_view: bool = True
    ) -> Any:
        """``resume(run_id)``: restart a stopped or pruned run of the running experiment.

        ``resume()``: continue this experiment after its driver died: every run restarts from
        its last completed slice, and the results equal an uninterrupted run's.
        """
        if run_id is not None:
            return ops.apply(self._scheduler(), "resume", run_id)
        if not Store.exists(self.dir):
            raise ConfigError(f"experiment {self.name!r} has nothing to resume at {self.dir}")
        check_trusted(self.dir, self.trust)  # before anything in it is imported or unpickled
        self._stop_session()
        self._session = session.resume(self.dir)
        self._start_log_file()
        _latest[:] = [self]
        stored = self._stored_pruner()
        note = summary.evals_pruning_note if self.mode == "evals" else summary.pruning_note
        self._group, self._pruning = None, note(stored)
        self._metric = (stored.metric or "metric", stored.mode or "min")
        self._live_view = live_view
        self._differing = differing_keys(list(self._session.params.values()))
        return self.wait() if blocking else None

    def delete(self, run_id: int) -> dict[str, Any]:
        """Stop a run for good (its files stay on disk)."""
        return ops.apply(self._scheduler(), "delete", run_id)

    def prune(self, run_id: int) -> dict[str, Any]:
        """Prune a run by hand, as the pruner would (it can be resumed)."""
        return ops.apply(self._scheduler(), "prune", run_id)

    def clone_modify(
        self, run_id: int, changes: dict[str, Any], warm_start: bool = False
    ) -> dict[str, Any]:
        """Start a new run from ``run_id``'s config with ``changes`` (any knob, or functions
        such as formatting_func / reward_funcs). ``warm_start=True`` also copies its adapter,
        optimizer, LR-schedule state and data position. The clone records its parent."""
        return ops.clone_modify(self._scheduler(), self.dir, run_id, changes, warm_start)

    # ------------------------------------------------------------------ hooks for integrations
    # What a config group that adds runs while the experiment runs (rf_ray.tune) needs.
    @property
    def started_run_ids(self) -> list[int]:
        """Ids of the runs the latest ``run_fit`` or ``resume()`` of this object started."""
        return sorted(self._session.params) if self._session is not None else []

    def add_runs(self, runs: list[RunConfig]) -> list[int]:
        """Add concrete runs to the running experiment (each validated first); their ids."""
        return ops.add_runs(self._scheduler(), self.dir, runs)

    def unhold(self, token: str) -> None:
        """Release the hold ``token`` (``ConfigGroup.hold_token``): once no hold is left and no
        run is live, the experiment ends."""
        import ray

        ray.get(self._scheduler().unhold.remote(token))

    def _prepare(
        self,
        param_config: Any,
        create_model_fn: Callable[[Any], tuple[Any, Any]] | None,
        train_dataset: Any,
        eval_dataset: Any,
        settings: ExperimentSettings,
    ) -> Plan:
        """Every check that can fail, before anything is written or started. ``settings`` are
        resolved here: the default metric, once the runs and the eval set are known."""
        group = _as_group(param_config)
        runs: list[RunConfig] = group.expand()
        where = f"experiment {self.name!r}: "  # older fields renamed; what this machine lacks
        warn_legacy([run.legacy for run in runs], where, stacklevel=4)
        warn_replaced(check_requirements(runs), where, stacklevel=4)
        if train_dataset is None:
            raise ConfigError("train_dataset is required")
        train = to_dataset(train_dataset, "train_dataset")
        evals = to_dataset(eval_dataset, "eval_dataset") if eval_dataset is not None else None
        for run in runs:
            check_columns(train, run, "train_dataset")
            if evals is not None:
                check_columns(evals, run, "eval_dataset")
            if run.generation_eval is not None:  # --- gen: eval prompts readable, before start
                check_eval_set(run.generation_eval, evals, describe(run), run.formatting_func)
        self._warn_ignored(runs, has_eval=evals is not None)
        fingerprint = dataset_fingerprint(train, evals)
        first_run_id = self._check_existing(fingerprint)
        own = group.default_pruner()  # a group that prunes itself names its metric (RFOptuna)
        named = (own.metric, own.mode) if own is not None and own.metric else None
        settings = settings.resolved(
            [r.trainer_type for r in runs], evals is not None, preferred=named
        )
        check_pruner_metric(settings.metric, runs, evals is not None)
        for metric in group.steers_on():
            check_pruner_metric(metric, runs, evals is not None, f"{type(group).__name__}'s")
        self._metric = (settings.metric, settings.mode)
        specs = build_specs(
            runs,
            self.dir,
            train_rows=len(train),
            num_chunks=settings.num_chunks,
            seed=settings.seed,
            first_run_id=first_run_id,
        )
        for spec in specs:  # a value JSON cannot hold fails here, before anything is written
            spec_store.spec_record(spec)
        return Plan(
            name=self.name,
            dir=self.dir,
            tracking_uri=self.tracking_uri,
            specs=specs,
            create_model_fn=create_model_fn or _default_create_model_fn(),
            settings=settings,
            train=train,
            eval=evals,
            fingerprint=fingerprint,
            differing=differing_params(runs),
        )

    def _check_existing(self, fingerprint: str) -> int:
        """The first free run id (1 if the experiment is new: ``Store.next_run_id`` counts
        reserved ids too, so ids are never reused); refuse if its data was different."""
        if not Store.exists(self.dir):
            return 1
        check_trusted(self.dir, self.trust)
        store = Store(self.dir, readonly=True)
        try:
            meta, first_id = store.meta(), store.next_run_id()
        finally:
            store.close()
        if meta.get("fingerprint") not in (None, fingerprint):
            raise ExperimentExistsError(
                f"experiment {self.name!r} already exists at {self.dir} with different training "
                f"data (fingerprint {meta.get('fingerprint')} != {fingerprint}). Use a new "
                "experiment_name, or another experiment_path, to start fresh; to look at or "
                f"continue the old one, open Experiment({self.name!r}) with its original data."
            )
        return first_id

    # ------------------------------------------------------------------ results
    def _store(self) -> Store:
        if not Store.exists(self.dir):
            raise ConfigError(
                f"experiment {self.name!r} has no results at {self.dir}; run run_fit first"
            )
        check_trusted(self.dir, self.trust)
        return Store(self.dir, readonly=True)

    def get_results(self) -> pd.DataFrame:
        """One row per run and optimizer step: loss, learning_rate, grad_norm, ... ."""
        store = self._store()
        try:
            rows = [{"run_id": rid, **m} for rid, m in store.step_metrics()]
        finally:
            store.close()
        df = pd.DataFrame(rows, columns=None if rows else ["run_id", "step", "loss"])
        if not df.empty:
            df["step"] = df["step"].astype(int)
        return df

    def get_chunk_results(self) -> pd.DataFrame:
        """One row per run and completed chunk: the chunk's mean train metrics and eval metrics."""
        store = self._store()
        try:
            rows = [{"run_id": r, "chunk": c, **m} for r, c, m in store.chunk_metrics()]
        finally:
            store.close()
        return pd.DataFrame(rows)

    def get_runs_info(self) -> pd.DataFrame:
        """One row per run: status, progress, best and last metric, config, and
        ``pruning_error``: why pruning stopped (a chunk lacked the pruner's metric; the same
        for every run), or None."""
        store = self._store()
        try:
            runs, pruning_error = store.runs(), store.meta().get(PRUNING_ERROR_KEY)
            columns = [c for c in store.run_columns() if c != "params"]
        finally:
            store.close()
        rows = []
        for r in runs:
            params = r.pop("params")
            rows.append({**r, "pruning_error": pruning_error, "config": params})
        # The columns even with no run yet (a Tune experiment before its first trial).
        return pd.DataFrame(rows, columns=[*columns, "pruning_error", "config"])

    def get_best_run(self, metric_mode: str | None = None) -> int:
        """The run id with the best chunk metric, preferring runs that completed training. An
        evals pipeline is ranked by its metric at its last shard (the estimate over every row
        it ran), not by its best shard."""
        info = self.get_runs_info()
        mode = metric_mode or (self._metric[1] if self._metric else self._stored_pruner().mode)
        column = "last_metric" if self.mode == "evals" else "best_metric"
        done = info[info["status"] == "completed"]
        pool = done if not done.empty and done[column].notna().any() else info
        pool = pool[pool[column].notna()]
        if pool.empty:
            raise ConfigError(f"experiment {self.name!r} has no run with a metric yet")
        best = pool[column].idxmax() if mode == "max" else pool[column].idxmin()
        return int(pool.loc[best, "run_id"])

    def export(self, run_id: int, path: str | os.PathLike[str]) -> Path:
        """Copy a run's final adapter (PEFT ``save_pretrained`` layout) to ``path``.

        ``PeftModel.from_pretrained(base_model, path)`` loads it.
        """
        import shutil

        check_trusted(self.dir, self.trust)
        src = ExperimentDir(self.dir).run(run_id).adapter_dir
        if not is_exported_adapter(src):
            raise ConfigError(
                f"run {run_id} of experiment {self.name!r} has no exported adapter at {src}; "
                "only runs that trained at least one slice and were not deleted have one"
            )
        dest = Path(path)
        shutil.copytree(src, dest, dirs_exist_ok=True)
        return dest

    def stats(self) -> dict[str, Any]:
        """Executor figures from the last run_fit: base-model loads, swap times, busy time."""
        store = self._store()
        try:
            return dict(store.meta().get("stats", {}))
        finally:
            store.close()

    def end(self) -> None:
        """Release the experiment's actors (and the local Ray cluster if run_fit started it)."""
        self._stop_session()
        self._stop_log_file()

    def cancel_current(self) -> None:
        """Stop the ``run_fit`` running from this object (``blocking=False``): its actors are
        released and every run keeps its last checkpoint, so ``resume()`` continues it. To stop
        one run, use ``stop(run_id)``; from another process, ``rf-ray ops``."""
        if self._session is None or self._session.finished:
            logger.info("experiment %s: nothing is running from this object", self.name)
            return
        logger.warning(
            "experiment %s: cancelled; every run keeps its last checkpoint (resume() continues)",
            self.name,
        )
        self._stop_session()

    def get_log_file_path(self, log_type: str | None = None) -> Path:
        """The experiment's log, ``<experiment dir>/rf_ray.log``: the driver's and every actor's
        records from INFO up (chunks, pruning, ops, failures) and run_fit's summary. RapidFire's
        ``log_type`` kinds (``"main"``, ``"experiment"``, ``"training"``) are this one file."""
        if log_type is not None and (not isinstance(log_type, str) or log_type.lower() not in
                                     LOG_TYPES):  # fmt: skip
            raise ConfigError(
                f"log_type={log_type!r} is not one of None, 'main', 'experiment', 'training' "
                "(rf-ray keeps them all in one file)"
            )
        return logs.log_path(self.dir)

    def _start_log_file(self) -> None:
        logs.attach(self.dir, "driver")

    def _stop_log_file(self) -> None:
        logs.detach(self.dir)

    def _warn_ignored(self, runs: list[RunConfig], has_eval: bool) -> None:
        """One ``IgnoredFieldWarning`` per ignored field per experiment (not per run), and one
        ``GenerationFlagWarning`` for sampling fields set without ``do_sample``."""
        ignored = {**ignored_field_warnings(runs, has_eval), **rapidfire_env_notes(os.environ),
                   **self._rapidfire_args}  # fmt: skip
        notes: dict[str, tuple[str, type[Warning]]] = {
            k: (v, IgnoredFieldWarning) for k, v in ignored.items()
        }
        for key, note in summary.generation_notes(runs).items():
            notes[key] = (note, summary.GenerationFlagWarning)
        for key, (note, category) in notes.items():
            if key not in self._warned:
                self._warned.add(key)
                warnings.warn(f"experiment {self.name!r}: {note}", category, stacklevel=4)

    def _stop_session(self) -> None:
        """Stop this object's previous session, running or finished (its executor holds the
        device and its scheduler the experiment's lock); ``session.stop`` waits, bounded, until
        the lock is free."""
        old, self._session = self._session, None
        thread = background.stop(self.dir)  # its wait fails as the actors go: no error
        if old is not None:
            session.stop(old)
        if thread is not None:
            thread.thread.join(background.JOIN_SECONDS)

    def _stored_pruner(self) -> Pruner:
        """The pruner the experiment's store records (its settings, for a resume)."""
        store = self._store()
        try:
            # stored_settings reads any store shape; a store without settings: the default
            return pruner_from_dict(stored_settings(store.meta()).get("pruner") or {"type": "none"})
        finally:
            store.close()


def _as_group(param_config: Any) -> ConfigGroup:
    if isinstance(param_config, ConfigGroup):
        return param_config
    if isinstance(param_config, (RFModelConfig, list)):
        return RFGridSearch(param_config)
    raise ConfigError(
        "param_config must be RFGridSearch(...), RFRandomSearch(...), an RFModelConfig or a list "
        f"of them, got {type(param_config).__name__}"
    )


def latest_experiment() -> Experiment | None:
    """The Experiment whose ``run_fit`` (or ``resume()``) started last in this process."""
    return _latest[0] if _latest else None


def _default_create_model_fn() -> Callable[[Any], tuple[Any, Any]]:
    from rf_ray.toy import default_create_model_fn

    return default_create_model_fn


__all__ = ["Experiment", "latest_experiment"]
