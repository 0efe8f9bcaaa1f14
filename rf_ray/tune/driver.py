"""(c) rf-ray drives, a Tune searcher suggests: ``RFTuneSearch`` is a config group for
``run_fit`` (see ``rf_ray.tune``; RapidFire's ``RFOptuna`` is ``rf_ray.tune.optuna_search``)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from ray.tune.search import Searcher

from policies.errors import ConfigError
from policies.state import RunStatus, is_live
from rf_ray.configs import RFModelConfig
from rf_ray.experiment import Experiment
from rf_ray.search import ConfigGroup
from rf_ray.specs import RunConfig
from rf_ray.tune.flat import apply_flat, concrete
from rf_ray.tune.shared import POLL_SECONDS, read_progress, release_hold

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- (c) rf-ray drives
class RFTuneSearch(ConfigGroup):
    """A Tune ``Searcher`` as an rf-ray config source (see module doc, direction (c)).

    ``expand()`` (called once by ``run_fit``) asks the searcher for the first
    ``max_concurrent`` configs; ``on_start`` (called by ``run_fit`` once the actors run)
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
        self.token = f"search-{uuid.uuid4().hex[:8]}"
        self.hold_token = self.token
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

    def steers_on(self) -> list[str]:
        """The searcher's metric(s): a result without it ended the search's thread (Tune's
        searchers read ``result[metric]``), so no run was added after the first ones."""
        metric = self.searcher.metric
        return [metric] if isinstance(metric, str) else [m for m in metric or () if m]

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

    def on_start(self, experiment: Experiment) -> None:
        """Map the initial runs to their trials and start the driver thread."""
        trial_ids = [t for t in self.trials if t not in self.rejected]
        self.run_ids = dict(zip(experiment.started_run_ids, trial_ids, strict=True))
        self._thread = threading.Thread(
            target=self._drive,
            args=(experiment,),
            name=f"rf-ray-search-{experiment.name}",
            daemon=True,
        )
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _drive(self, experiment: Experiment) -> None:
        fed: dict[int, int] = {}
        last: dict[int, dict[str, Any]] = {}
        complete: set[int] = set()
        try:
            while True:
                runs, chunks = read_progress(experiment.dir)
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
                    (run_id,) = experiment.add_runs([run])
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
            release_hold(experiment, self.token)


TUNE_EXTRA = 'pip install "rf-ray[tune]"'
"""What brings Optuna (``RFOptuna``, ``examples/tune_optuna_asha.py``)."""


__all__ = ["TUNE_EXTRA", "RFTuneSearch"]
