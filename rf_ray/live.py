"""The live terminal view of a running experiment: a progress bar and a small leaderboard; and
``chunk_progress``, how every view (this one, ``rf-ray status``, the dashboard) says where a run
is: chunk within its epoch, and epoch ("chunk 3/4, epoch 1/3"), since ``num_chunks`` is per epoch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from policies.redact import redact
from policies.settings import stored_settings


def chunk_progress(chunks_done: int, total_chunks: int, per_epoch: int | None) -> str:
    """Where a run is, for people: ``"chunk 3/4, epoch 1/3"`` after 3 chunks of a run of
    3 epochs cut in 4 chunks each (``per_epoch``: the experiment's ``num_chunks``), or
    ``"chunk 3/4"`` for a run of one epoch (or unknown ``per_epoch``). The chunk counts the
    chunks done in the epoch of the last one done; a last, partial epoch (fractional
    ``num_train_epochs``, ``max_steps``) counts only the chunks it has."""
    if not per_epoch or per_epoch < 1 or total_chunks <= per_epoch:
        return f"chunk {chunks_done}/{total_chunks}"
    epochs = -(-total_chunks // per_epoch)
    epoch = min(max(chunks_done - 1, 0) // per_epoch, epochs - 1)
    start = epoch * per_epoch
    in_epoch = min(per_epoch, total_chunks - start)
    return f"chunk {chunks_done - start}/{in_epoch}, epoch {epoch + 1}/{epochs}"


def chunks_per_epoch(exp_dir: Path | None) -> int | None:
    """The experiment's ``num_chunks`` (chunks per epoch) as its store records it, or None."""
    if exp_dir is None:
        return None
    from actors.storage.store import Store

    try:
        with Store(exp_dir, readonly=True) as store:
            value = stored_settings(store.meta()).get("num_chunks")
    except Exception:  # no store (yet): the view says chunks only
        return None
    return value if isinstance(value, int) else None


class LiveView:
    """Renders the scheduler's snapshot with ``rich``; a no-op when disabled.

    Disabled by ``live_view=False`` or ``RF_RAY_LIVE=0``. When stdout is not a terminal (CI,
    Ray Job logs) it prints one line per completed chunk instead of redrawing.
    """

    def __init__(
        self,
        name: str,
        params: dict[int, dict[str, Any]],
        differing: list[str],
        enabled: bool = True,
        exp_dir: Path | None = None,
    ) -> None:
        self.enabled = enabled and os.environ.get("RF_RAY_LIVE", "1") != "0"
        self.params = {run_id: redact(p) for run_id, p in params.items()}
        self.differing = differing[:4]
        self.name = name
        self._live: Any = None
        self._seen: dict[int, tuple[int, str]] = {}
        self.exp_dir = exp_dir
        """Where the runs' samples.json are: their generation metrics get columns."""
        self._per_epoch: int | None = None
        self._evals: tuple[Any, Any] = (None, None)
        """(what it was read at, the ``EvalsView``) of an evals experiment: shards and
        intervals (``_evals_view``)."""

    def __enter__(self) -> LiveView:
        if self.enabled and sys.stdout.isatty():
            from rich.live import Live

            self._live = Live(refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def update(self, snapshot: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        if self._live is not None:
            self._live.update(self.render(snapshot))
            return
        evals = self._evals_view(snapshot)
        for row in snapshot:  # plain log lines
            key = (row["chunks_done"], row["status"])
            if self._seen.get(row["run_id"]) != key:
                self._seen[row["run_id"]] = key
                gen = self._generated([row]).get(row["run_id"], {})
                extra = "".join(f", {k} {_fmt(v)}" for k, v in sorted(gen.items()))
                if evals is not None:  # a pipeline: shards, its metrics with their intervals
                    extra += "".join(
                        f", {k} {evals.cell(row['run_id'], k)}" for k in evals.columns()
                    )
                print(
                    f"[rf-ray {self.name}] run {row['run_id']}: {row['status']}, "
                    f"{self._progress(row)}, metric {_fmt(row['last_metric'])}{extra}",
                    flush=True,
                )

    def _progress(self, row: dict[str, Any]) -> str:
        if self._evals[1] is not None:
            return str(self._evals[1].progress(row))
        if self._per_epoch is None:
            self._per_epoch = chunks_per_epoch(self.exp_dir) or 0
        return chunk_progress(row["chunks_done"], row["total_chunks"], self._per_epoch)

    def _evals_view(self, snapshot: list[dict[str, Any]]) -> Any:
        """The ``rf_ray.evals.progress.EvalsView`` of an evals experiment (read again when a
        run closed a shard), None for a fit one."""
        if self.exp_dir is None or not snapshot:
            return None
        at = tuple((r["run_id"], r["chunks_done"]) for r in snapshot)
        if self._evals[0] != at and self._evals != ("fit", None):
            from rf_ray.evals.progress import EvalsView

            view = EvalsView.read(self.exp_dir, [r["run_id"] for r in snapshot])
            self._evals = (at, view) if view is not None else ("fit", None)
        return self._evals[1]

    def _generated(self, snapshot: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
        """The runs' last generation metrics (``rf_ray.samples``), if any."""
        if self.exp_dir is None:
            return {}
        from rf_ray.samples import generation_metrics

        return generation_metrics(self.exp_dir, [r["run_id"] for r in snapshot])

    def render(self, snapshot: list[dict[str, Any]]) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        done = sum(r["chunks_done"] for r in snapshot)
        total = sum(
            r["total_chunks"] if r["status"] in ("pending", "running", "completed")
            else r["chunks_done"]
            for r in snapshot
        )  # fmt: skip
        evals = self._evals_view(snapshot)
        interval = evals.columns()[:1] if evals is not None else []
        table = Table(title=f"rf-ray: {self.name}", expand=False)
        table.add_column("run", justify="right")
        for key in self.differing:
            table.add_column(key)
        table.add_column("progress", justify="right")
        table.add_column("metric", justify="right")
        for key in interval:
            table.add_column(f"{key} [interval]", justify="right")
        generated = self._generated(snapshot)
        gen_columns = sorted({k for m in generated.values() for k in m})[:2]
        for key in gen_columns:
            table.add_column(key, justify="right")
        table.add_column("status")
        order = sorted(snapshot, key=_rank)
        for row in order:
            params = self.params.get(row["run_id"], {})
            gen = generated.get(row["run_id"], {})
            table.add_row(
                str(row["run_id"]),
                *[str(params.get(k, "")) for k in self.differing],
                self._progress(row),
                _fmt(row["last_metric"]),
                *[evals.cell(row["run_id"], k) for k in interval],
                *[_fmt(gen.get(k)) for k in gen_columns],
                row["status"],
            )
        header = Text(f"chunks trained, all runs: {done}/{max(total, 1)}")
        return Group(header, ProgressBar(total=max(total, 1), completed=done), table)


def _rank(row: dict[str, Any]) -> tuple[int, float]:
    metric = row["last_metric"]
    return (-row["chunks_done"], metric if metric is not None else float("inf"))


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"
