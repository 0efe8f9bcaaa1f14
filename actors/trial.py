"""``TrialActor``: one per run. It owns the run's lifecycle and its MLflow run.

Loop: ask the scheduler for a slice, make sure the executor holds the run (re-seeding it from the
run's last durable checkpoint when it does not, e.g. after the executor restarted), have it train
the slice (which also writes the checkpoint), report to the scheduler, log to MLflow; stop when
the scheduler says the run is over (completed, pruned, stopped, failed, deleted).

* An exception inside the run's slice marks only this run failed.
* A lost executor is not the run's fault: the slice is handed back and re-run once the executor
  is back (Ray restarts it; it loads the base model again, once).
* The trial never imports torch or TRL: the run spec travels to the executor as opaque bytes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

from actors.messages import SliceResult

logger = logging.getLogger(__name__)

_MLFLOW_STATUS = {
    "completed": "FINISHED",
    "failed": "FAILED",
    "pruned": "KILLED",
    "stopped": "KILLED",
    "deleted": "KILLED",
}

# How often a trial retries a slice whose executor died before giving the run up as failed.
MAX_EXECUTOR_LOSSES = 5


class TrialActor:
    def __init__(
        self,
        run_id: int,
        spec_blob: bytes,
        params: dict[str, Any],
        tags: dict[str, str],
        scheduler: Any,
        executors: list[Any],
        experiment_dir: str,
        tracking_uri: str,
        mlflow_experiment: str,
        checkpoint: str | None = None,
        mlflow_run_id: str | None = None,
    ) -> None:
        self.run_id = run_id
        self.spec_blob = spec_blob
        self.params = params
        self.tags = tags
        self.scheduler = scheduler
        self.executors = executors
        self.run_dir = Path(experiment_dir) / "runs" / str(run_id)
        self.tracking_uri = tracking_uri
        self.mlflow_experiment = mlflow_experiment
        self.checkpoint = checkpoint
        """The run's last durable checkpoint: where a (re)placed run is restored from."""
        self.mlflow_run_id = mlflow_run_id
        self.placed_on: int | None = None
        self.token = uuid.uuid4().hex
        """Identifies this trial to the executor (see ``BaseModelActor.add_run``)."""

    async def run(self) -> dict[str, Any]:
        from actors.tracking import Tracker

        tracker = Tracker(self.tracking_uri, self.mlflow_experiment)
        if self.mlflow_run_id is None:
            self.mlflow_run_id = tracker.start_run(
                f"run-{self.run_id}", self.params, {**self.tags, "rf_ray.status": "running"}
            )
        else:  # resumed: keep logging into the run's MLflow run
            tracker.reopen(self.mlflow_run_id)
        await self.scheduler.set_mlflow_run.remote(self.run_id, self.mlflow_run_id)
        losses = 0
        while True:
            answer = await self.scheduler.request_slice.remote(self.run_id)
            if "exit" in answer:
                return await self._finish(tracker, answer)
            grant = answer["grant"]
            try:
                result = await self._train(grant)
            except Exception as exc:
                if _executor_lost(exc) and losses < MAX_EXECUTOR_LOSSES:
                    losses += 1
                    logger.warning("run %s: executor lost (%s); retrying", self.run_id, exc)
                    self.placed_on = None
                    await self.scheduler.release.remote(self.run_id)
                    await asyncio.sleep(1.0)
                    continue
                error = _describe(exc)  # one bad run never stops the others
                logger.warning("run %s failed: %s", self.run_id, error)
                await self.scheduler.report_failure.remote(self.run_id, error)
                tracker.set_tags(self.mlflow_run_id, {"rf_ray.error": error})
                await self._evict()
                continue
            self.checkpoint = result.checkpoint
            report = await self.scheduler.report.remote(
                self.run_id,
                result.end_step,
                result.step_metrics,
                result.eval_metrics,
                result.chunk_extras(),
                result.checkpoint,
                result.fusion_oom_tokens,
            )
            rows = [(int(m["step"]), m) for m in result.step_metrics]
            if report["chunk"] is not None:
                chunk_no, chunk_metrics = report["chunk"]
                chunk_row = {f"chunk/{k}": v for k, v in chunk_metrics.items()}
                rows.append((result.end_step, {**chunk_row, "chunk": chunk_no}))
            tracker.log_metrics(self.mlflow_run_id, rows)

    async def _train(self, grant: dict[str, Any]) -> SliceResult:
        """Place the run on the granted executor if needed, then train the slice."""
        executor = self.executors[grant["executor"]]
        if self.placed_on is not None and self.placed_on != grant["executor"]:
            await self._evict()  # moving: the old executor's copy would go stale
        if self.placed_on != grant["executor"] or not await executor.has_run.remote(self.run_id):
            await executor.add_run.remote(self.spec_blob, self.checkpoint, self.token)
            self.placed_on = grant["executor"]
        return await executor.run_slice.remote(
            self.run_id,
            grant["start_step"],
            grant["end_step"],
            grant["evaluate"],
            str(self.run_dir),
            grant.get("group"),
        )

    async def _evict(self) -> None:
        """Free the run's adapter and optimizer on the executor (its checkpoint stays on disk)."""
        if self.placed_on is not None:
            try:
                await self.executors[self.placed_on].remove_run.remote(self.run_id, self.token)
            except Exception:  # the executor is gone: nothing to free
                logger.debug("run %s: executor gone while evicting", self.run_id, exc_info=True)
            self.placed_on = None

    async def _finish(self, tracker: Any, answer: dict[str, Any]) -> dict[str, Any]:
        status = answer["exit"]
        outcome: dict[str, Any] = {"run_id": self.run_id, "mlflow_run_id": self.mlflow_run_id}
        outcome.update(answer)
        tags = {"rf_ray.status": status}
        if answer.get("pruned_at") is not None:
            tags["rf_ray.pruned_at_chunk"] = str(answer["pruned_at"])
        if status in ("completed", "pruned", "stopped") and self.placed_on is not None:
            # The adapter as the run left it, loadable with PeftModel.from_pretrained.
            path = await self.executors[self.placed_on].export.remote(
                self.run_id, str(self.run_dir / "adapter")
            )
            outcome["adapter_path"] = path
            tags["rf_ray.adapter_path"] = path
            await self.scheduler.set_adapter_path.remote(self.run_id, path)
        await self._evict()
        tracker.set_tags(self.mlflow_run_id, tags)
        tracker.finish(self.mlflow_run_id, _MLFLOW_STATUS.get(status, "KILLED"))
        return outcome


def _executor_lost(exc: BaseException) -> bool:
    """True when the executor process died or is restarting (not the run's own error)."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return isinstance(exc, (ActorDiedError, ActorUnavailableError, RayActorError))


def _describe(exc: BaseException) -> str:
    """The root cause of a (possibly Ray-wrapped) exception: its type and message."""
    cause = getattr(exc, "cause", None) or exc
    text = f"{type(cause).__name__}: {cause}".strip()
    return text if len(text) <= 2000 else text[:2000] + "..."
