"""``TrialActor``: one per run. It owns the run's lifecycle and its MLflow run.

Loop: ask the scheduler for a slice, have the executor train it (which also writes the run's
durable checkpoint), log the slice's metrics to MLflow, report to the scheduler; stop when the
scheduler says the run is over (completed, pruned, stopped, failed). An exception inside the
run's slice marks only this run failed. The trial never imports torch or TRL: the run spec
travels to the executor as opaque bytes.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_MLFLOW_STATUS = {
    "completed": "FINISHED",
    "failed": "FAILED",
    "pruned": "KILLED",
    "stopped": "KILLED",
    "deleted": "KILLED",
}


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
        self.mlflow_run_id: str | None = None
        self.placed_on: int | None = None

    async def run(self) -> dict[str, Any]:
        from actors.tracking import Tracker

        tracker = Tracker(self.tracking_uri, self.mlflow_experiment)
        self.mlflow_run_id = tracker.start_run(
            f"run-{self.run_id}", self.params, {**self.tags, "rf_ray.status": "running"}
        )
        outcome: dict[str, Any] = {"run_id": self.run_id, "mlflow_run_id": self.mlflow_run_id}
        while True:
            answer = await self.scheduler.request_slice.remote(self.run_id)
            if "exit" in answer:
                outcome.update(answer)
                break
            grant = answer["grant"]
            executor = self.executors[grant["executor"]]
            try:
                if self.placed_on != grant["executor"]:
                    await executor.add_run.remote(self.spec_blob, None)
                    self.placed_on = grant["executor"]
                result = await executor.run_slice.remote(
                    self.run_id, grant["end_step"], grant["evaluate"], str(self.run_dir)
                )
            except Exception as exc:  # one bad run never stops the others
                error = _describe(exc)
                logger.warning("run %s failed: %s", self.run_id, error)
                await self.scheduler.report_failure.remote(self.run_id, error)
                if self.placed_on is not None:  # free its adapter and optimizer state
                    await self.executors[self.placed_on].remove_run.remote(self.run_id)
                    self.placed_on = None
                tracker.set_tags(self.mlflow_run_id, {"rf_ray.error": error})
                continue
            extra = {
                "slice_seconds": result["seconds"],
                "slice_started_at": result["started_at"],
                "slice_ended_at": result["ended_at"],
                "tokens_per_second": result["tokens"] / max(result["train_seconds"], 1e-9),
                **result["memory"],
            }
            report = await self.scheduler.report.remote(
                self.run_id,
                result["end_step"],
                result["step_metrics"],
                result["eval_metrics"],
                extra,
                result["checkpoint"],
            )
            rows = [(int(m["step"]), m) for m in result["step_metrics"]]
            if report["chunk"] is not None:
                chunk_no, chunk_metrics = report["chunk"]
                rows.append(
                    (result["end_step"], {f"chunk/{k}": v for k, v in chunk_metrics.items()})
                )
                rows.append((result["end_step"], {"chunk": chunk_no}))
            tracker.log_metrics(self.mlflow_run_id, rows)
        status = outcome["exit"]
        tags = {"rf_ray.status": status}
        if outcome.get("pruned_at") is not None:
            tags["rf_ray.pruned_at_chunk"] = str(outcome["pruned_at"])
        if status == "completed" and self.placed_on is not None:
            path = await self.executors[self.placed_on].export.remote(
                self.run_id, str(self.run_dir / "adapter")
            )
            outcome["adapter_path"] = path
            tags["rf_ray.adapter_path"] = path
        tracker.set_tags(self.mlflow_run_id, tags)
        tracker.finish(self.mlflow_run_id, _MLFLOW_STATUS.get(status, "KILLED"))
        return outcome


def _describe(exc: BaseException) -> str:
    """The root cause of a (possibly Ray-wrapped) exception, one line plus its type."""
    cause = getattr(exc, "cause", None) or exc
    text = f"{type(cause).__name__}: {cause}".strip()
    if len(text) > 2000:
        text = text[:2000] + "..."
    if not str(cause):
        text += " | " + "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text
