"""``RFOptuna``: RapidFire AI's Optuna search as an rf-ray config group.

    search = RFOptuna(configs=[template], trainer_type="SFT", n_initial=4, budget=6,
                      objective="maximize:rougeL", sampler="tpe", pruner="median", seed=42)
    experiment.run_fit(search, create_model_fn, train, evals, num_chunks=4)
    search.study.best_trial            # an optuna.Study (RapidFire's notebooks read ._study)

Optuna's ask-and-tell API proposes the runs from the ``List`` / ``Range`` knobs of the
template(s): ``n_initial`` runs start together; after every chunk each run's objective value is
reported to its trial and the run is pruned by RapidFire's rules (``optuna_trials``); each
pruned run is told PRUNED and replaced by a new suggestion until ``budget`` trials were asked.
A run that completes is told its last objective value (COMPLETE); when the experiment ends, a
trial still open is told its run's last value, or FAIL. Several templates (a list of configs,
or a ``List`` of ``peft_config`` / ``training_args``) make the template a categorical choice
(``_config_template_idx``, parameters prefixed ``_t<i>.``), as in RapidFire.

Optuna prunes: ``run_fit``'s own pruner defaults to ``NoPruning`` on the objective's metric for
this group (pass ``pruner=`` to ``run_fit`` to add one: the runs it prunes are PRUNED trials
too). Parameter names are RapidFire's (``training_args.learning_rate``, ``peft_config.r``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from typing import Any

from policies.errors import ConfigError, OpError
from policies.pruning import NoPruning, Pruner
from policies.settings import stored_settings
from policies.state import RunStatus, is_live
from rf_ray.configs import List, Range
from rf_ray.search import ConfigGroup, knob_spaces
from rf_ray.specs import RunConfig
from rf_ray.tune.driver import TUNE_EXTRA
from rf_ray.tune.flat import apply_flat
from rf_ray.tune.optuna_trials import Objective, TrialBook
from rf_ray.tune.shared import POLL_SECONDS, read_progress, release_hold

logger = logging.getLogger(__name__)

SAMPLERS = ("tpe", "cmaes", "random")
PRUNERS = ("median", "hyperband")
GRANULARITIES = ("chunk", "epoch")
JOIN_SECONDS = 60.0
"""How long ``run_fit`` waits, after the experiment ended, for the search to tell its last
trials (it only reads the store by then)."""
_PRIMITIVES = (type(None), bool, int, float, str)
_SECTION_NAMES = {
    "lora.": "peft_config.",
    "model_kwargs.": "model_kwargs.",
    "tokenizer_kwargs.": "tokenizer_kwargs.",
    "generation_config.": "generation_config.",
}


class RFOptuna(ConfigGroup):
    """Optuna proposes and prunes the runs of a ``run_fit`` (see module doc). Arguments and
    defaults are RapidFire's: ``n_initial=16``, ``budget=40`` (at least ``n_initial``),
    ``objective="minimize:eval_loss"`` (several comma-separated: multi-objective),
    ``sampler`` ``"tpe"`` / ``"cmaes"`` / ``"random"``, ``pruner`` ``"median"`` /
    ``"hyperband"`` / None (no pruning), ``seed=42``, ``granularity`` ``"chunk"`` (decide after
    every chunk) or ``"epoch"`` (after each epoch's last chunk)."""

    def __init__(  # noqa: PLR0913  RapidFire AI's RFOptuna signature
        self,
        configs: Any = None,
        trainer_type: str | None = None,
        n_initial: int = 16,
        budget: int = 40,
        objective: str = "minimize:eval_loss",
        sampler: str = "tpe",
        pruner: str | None = "median",
        seed: int | None = 42,
        granularity: str = "chunk",
    ) -> None:
        self.objective = Objective.parse(objective)
        for name, value in (("n_initial", n_initial), ("budget", budget)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be an integer >= 1")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ConfigError(f"seed={seed!r} must be an integer >= 0 or None")
        self.sampler_name = _choice("sampler", sampler, SAMPLERS)
        self.pruner_name = None if pruner is None else _choice("pruner", pruner, PRUNERS)
        self.granularity = _choice("granularity", granularity, GRANULARITIES)
        if configs is None:
            raise ConfigError("RFOptuna needs configs=: one RFModelConfig with List/Range knobs")
        self.templates = knob_spaces(configs, trainer_type, who="RFOptuna")
        if not any(knobs for _, knobs in self.templates):
            raise ConfigError(
                "RFOptuna found no List or Range knob to search over; add one (e.g. "
                "learning_rate=Range(1e-5, 1e-3, log=True)) or pass the config to run_fit as is"
            )
        self._optuna = _import_optuna(self.sampler_name)
        self.n_initial = n_initial
        self.budget = max(budget, n_initial)
        self.seed = seed
        self.token = f"optuna-{uuid.uuid4().hex[:8]}"
        self.hold_token = self.token
        self._study: Any = None
        """The ``optuna.Study`` (RapidFire's notebooks read it as ``config_group._study``)."""
        self.book: TrialBook | None = None
        self.spawned = 0
        """Trials asked so far (initial ones and replacements), at most ``budget``."""
        self.errors: list[str] = []
        """Suggestions that could not become a run, and a failure of the search's thread."""
        self.max_live_seen = 0
        self._initial: list[tuple[Any, RunConfig]] | None = None
        self._thread: threading.Thread | None = None

    @property
    def study(self) -> Any:
        """The search's ``optuna.Study`` (None until ``run_fit`` expands the search)."""
        return self._study

    def trials_by_run(self) -> dict[int, Any]:
        """rf-ray run id -> its trial as the study holds it now (an ``optuna.FrozenTrial``:
        ``state``, ``params``, ``intermediate_values``, ``value``)."""
        if self.book is None:
            return {}
        trials = self._study.trials
        return {run_id: trials[t.number] for run_id, t in self.book.trials.items()}

    def default_pruner(self) -> Pruner:
        """Optuna prunes: rf-ray's own pruner only ranks by the objective's first metric."""
        return NoPruning(metric=self.objective.metrics[0], mode=self.objective.mode)

    def steers_on(self) -> list[str]:
        return list(self.objective.metrics)

    def pruning_note(self) -> str:
        if self.pruner_name is None:
            return "none (RFOptuna(pruner=None)): every trial trains to the end"
        rule = "Optuna's median pruner" if self.pruner_name == "median" else "Optuna's Hyperband"
        if self.objective.multi:
            rule = "Pareto dominance (multi-objective)"
        metrics = ", ".join(
            f"{m} ({d})" for m, d in zip(self.objective.metrics, self.objective.directions)
        )
        return (
            f"RFOptuna prunes with {rule} on {metrics} after each {self.granularity}, and "
            "replaces each pruned run with a new suggestion until budget; "
            "RFOptuna(pruner=None) trains every trial to the end"
        )

    # ------------------------------------------------------------------ proposing runs
    def expand(self) -> list[RunConfig]:
        """Create the study and ask it for the first ``n_initial`` runs (once)."""
        if self._initial is None:
            optuna = self._optuna
            optuna.logging.set_verbosity(optuna.logging.WARNING)  # as RapidFire: no INFO lines
            kwargs: dict[str, Any] = {"sampler": self._sampler()}
            if self.objective.multi:
                kwargs["directions"] = list(self.objective.directions)
            else:
                kwargs["direction"] = self.objective.directions[0]
                kwargs["pruner"] = self._pruner()
            self._study = optuna.create_study(**kwargs)
            self.book = TrialBook(self._study, self.objective, prunes=self.pruner_name is not None)
            initial = []
            for _ in range(self.n_initial):
                trial = self._study.ask()
                self.spawned += 1
                initial.append((trial, self._sample(trial)))  # a bad space raises here
            self._initial = initial
        return [run for _, run in self._initial]

    def _sampler(self) -> Any:
        samplers = self._optuna.samplers
        cls = {"tpe": samplers.TPESampler, "cmaes": samplers.CmaEsSampler,
               "random": samplers.RandomSampler}[self.sampler_name]  # fmt: skip
        return cls(seed=self.seed)

    def _pruner(self) -> Any:
        pruners = self._optuna.pruners
        if self.pruner_name is None:
            return pruners.NopPruner()
        if self.pruner_name == "hyperband":
            return pruners.HyperbandPruner()
        return pruners.MedianPruner(n_startup_trials=max(1, self.n_initial // 2))

    def _sample(self, trial: Any) -> RunConfig:
        """The trial's run: a template (a categorical choice when there are several) with each
        knob set to the value the trial suggests."""
        index = 0
        if len(self.templates) > 1:
            index = trial.suggest_categorical(
                "_config_template_idx", list(range(len(self.templates)))
            )
        base, knobs = self.templates[index]
        prefix = f"_t{index}." if len(self.templates) > 1 else ""
        values = {flat: _suggest(trial, prefix + _param_name(flat), knob)
                  for flat, knob in knobs.items()}  # fmt: skip
        return apply_flat(base, values) if values else base

    def _replace(self, experiment: Any) -> bool:
        """Ask for the next trial in place of a pruned run, while the budget lasts; True if a
        run was added."""
        while self.spawned < self.budget:
            trial = self._study.ask()
            self.spawned += 1
            try:
                run = self._sample(trial)
            except ConfigError as e:
                self.errors.append(f"trial {trial.number}: {e}")
                self._study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
                continue
            (run_id,) = experiment.add_runs([run])
            self._book().bind(run_id, trial)
            logger.info("RFOptuna: trial %d is run %d", trial.number, run_id)
            return True
        return False

    def _book(self) -> TrialBook:
        if self.book is None:
            raise ConfigError("RFOptuna is not running: pass it to run_fit")
        return self.book

    # ------------------------------------------------------------------ the search's thread
    def on_start(self, experiment: Any) -> None:
        """Bind the initial runs to their trials and start the thread that reports chunks."""
        book = self._book()
        for run_id, (trial, _) in zip(experiment.started_run_ids, self._initial or [], strict=True):
            book.bind(run_id, trial)
        if self.granularity == "epoch":
            book.chunks_per_epoch = _num_chunks(experiment.dir)
        self._thread = threading.Thread(
            target=self._drive, args=(experiment,), name=f"rf-ray-optuna-{experiment.name}",
            daemon=True,
        )  # fmt: skip
        self._thread.start()

    def on_end(self, experiment: Any) -> None:
        """After the experiment: wait (bounded) for the thread to tell the last trials."""
        if self._thread is not None:
            self._thread.join(JOIN_SECONDS)

    def _drive(self, experiment: Any) -> None:
        book = self._book()
        fed: dict[int, int] = {}
        last: dict[int, dict[str, Any]] = {}
        try:
            while experiment.running:
                runs, chunks = read_progress(experiment.dir)
                for run_id, chunk, metrics in sorted(chunks, key=lambda t: (t[1], t[0])):
                    if run_id not in book.trials or chunk <= fed.get(run_id, 0):
                        continue
                    fed[run_id], last[run_id] = chunk, metrics
                    total = runs[run_id]["total_chunks"] if run_id in runs else chunk + 1
                    if book.on_chunk(run_id, chunk, metrics, last=chunk >= total):
                        self._prune(experiment, run_id, chunk)
                for run_id in book.rejudge():
                    self._prune(experiment, run_id, book.latest[run_id][0])
                live = self._settle(experiment, runs, last)
                self.max_live_seen = max(self.max_live_seen, live)
                if live == 0:
                    break
                time.sleep(POLL_SECONDS)
        except Exception as e:  # the experiment must not stay open because the search failed
            logger.exception("RFOptuna: the search failed; no more runs will be added")
            self.errors.append(repr(e))
        finally:
            with contextlib.suppress(Exception):
                runs, _ = read_progress(experiment.dir)
                for run_id in book.trials:
                    if run_id in runs and not is_live(RunStatus(runs[run_id]["status"])):
                        book.finished(run_id, runs[run_id]["status"], last.get(run_id))
            book.finalize(last)
            release_hold(experiment, self.token)

    def _settle(self, experiment: Any, runs: dict[int, Any], last: dict[int, Any]) -> int:
        """Tell the trials of runs that ended since the last look; the number still live.
        A stopped run is told only at the end (a person may resume it)."""
        book = self._book()
        live = 0
        for run_id in list(book.trials):
            row = runs.get(run_id)
            status = row["status"] if row is not None else RunStatus.PENDING.value
            if is_live(RunStatus(status)):
                live += 1
            elif run_id in book.told or status == RunStatus.STOPPED.value:
                continue
            elif status == RunStatus.PRUNED.value:  # by rf-ray's pruner or by hand
                book.pruned(run_id)
                live += self._replace(experiment)
            else:
                book.finished(run_id, status, last.get(run_id))
        return live

    def _prune(self, experiment: Any, run_id: int, chunk: int) -> None:
        try:
            experiment.prune(run_id)
        except OpError:  # it ended meanwhile (its last chunk): the next look tells its trial
            logger.info("RFOptuna: run %d ended before it could be pruned", run_id)
            return
        logger.info("RFOptuna: pruned run %d after chunk %d", run_id, chunk)
        self._book().pruned(run_id)
        self._replace(experiment)


def _num_chunks(exp_dir: Any) -> int:
    """The experiment's chunks per epoch (its stored ``num_chunks``)."""
    from actors.storage.store import Store

    with Store(exp_dir, readonly=True) as store:
        return int(stored_settings(store.meta())["num_chunks"])


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        extra = ", or None" if name == "pruner" else ""
        raise ConfigError(
            f"{name}={value!r} is not one of {', '.join(repr(a) for a in allowed)}{extra}"
        )
    return value.lower()


def _import_optuna(sampler: str) -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError(f"RFOptuna needs Optuna, which is not installed: {TUNE_EXTRA}") from None
    if sampler == "cmaes":
        try:
            import cmaes  # noqa: F401  Optuna's CmaEsSampler needs it
        except ImportError:
            raise ConfigError(
                "RFOptuna(sampler='cmaes') needs the cmaes package: pip install cmaes "
                "(or use sampler='tpe' or 'random')"
            ) from None
    return optuna


def _param_name(flat: str) -> str:
    """rf-ray's flat knob name as RapidFire names the Optuna parameter."""
    for prefix, section in _SECTION_NAMES.items():
        if flat.startswith(prefix):
            return section + flat.removeprefix(prefix)
    return flat if flat == "model_name" else f"training_args.{flat}"


def _suggest(trial: Any, name: str, knob: List | Range) -> Any:
    """One value for ``knob``: ``suggest_int`` / ``suggest_float`` for a Range,
    ``suggest_categorical`` for a List (its values labelled by JSON when not plain)."""
    if isinstance(knob, Range):
        kwargs: dict[str, Any] = {"log": knob.log}
        if knob.step is not None:
            kwargs["step"] = knob.dtype(knob.step)
        if knob.dtype is int:
            return trial.suggest_int(name, int(knob.low), int(knob.high), **kwargs)
        return trial.suggest_float(name, float(knob.low), float(knob.high), **kwargs)
    values = list(knob.values)
    if all(isinstance(v, _PRIMITIVES) for v in values):
        return trial.suggest_categorical(name, values)
    labels = [json.dumps(v, default=repr, sort_keys=True) for v in values]
    if len(set(labels)) < len(labels):
        labels = [f"{label}#{i}" for i, label in enumerate(labels)]
    return values[labels.index(trial.suggest_categorical(name, labels))]


__all__ = ["GRANULARITIES", "PRUNERS", "SAMPLERS", "RFOptuna"]
