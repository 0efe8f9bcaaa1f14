"""``InteractiveController``: RapidFire AI's panel of run controls under a notebook cell.

    experiment.run_fit(config_group, create_model, train, evals, num_chunks=4)  # background on
    controller = InteractiveController()                                      # Colab, or
    controller.display()                                                      # blocking=False

A dropdown of the experiment's runs, the selected run's status, chunk and config, and the
buttons Resume, Stop, Delete, Refresh Status and Clone (edit the config shown as JSON, optionally
warm-started, and submit), as in RapidFire (``rapidfireai/fit/utils/interactive_controller.py``).
It needs ipywidgets (``pip install "rf-ray[rapidfire]"``).

Which experiment: the one given (``InteractiveController(experiment)`` or
``experiment_name=`` / ``experiment_path=``), else the one whose ``run_fit`` started last in this
kernel. RapidFire's ``dispatcher_url=`` is accepted and ignored (rf-ray has no dispatcher).

How ops travel: they are ``rf_ray.ops``' ops, the same as ``rf-ray ops`` and the dashboard's.
When this kernel runs the experiment (its ``run_fit`` in the background, or
``blocking=False``), through the experiment's own scheduler handle; otherwise through a
short-lived ``rf-ray ops`` child process, so the kernel never attaches itself to another
process's private Ray cluster (a process attached to a cluster that goes away dies with it).
Reads (the run list, a run's status and config) come from the experiment's store, read-only.
"""

from __future__ import annotations

import html
import json
import logging
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

from policies.errors import ConfigError, OpError
from rf_ray.compat import IgnoredFieldWarning
from rf_ray.experiment import Experiment, latest_experiment

logger = logging.getLogger(__name__)

OP_TIMEOUT_S = 120.0
"""Bound on one op sent through a child process (it attaches to Ray, then asks the scheduler)."""
WIDGETS_EXTRA = 'pip install "rf-ray[rapidfire]"'
_COLORS = {"success": "#155724", "error": "#721c24", "info": "#0c5460", "warning": "#856404"}


class InteractiveController:
    """Stop, resume, delete and clone the runs of an experiment from a notebook (module doc)."""

    def __init__(
        self,
        experiment: Experiment | str | None = None,
        *,
        experiment_name: str | None = None,
        experiment_path: str | Path | None = None,
        dispatcher_url: str | None = None,
        op_timeout_s: float = OP_TIMEOUT_S,
    ) -> None:
        self.widgets = _import_widgets()
        if isinstance(experiment, str) and dispatcher_url is None:
            # RapidFire's constructor takes dispatcher_url first: its URL given positionally.
            experiment, dispatcher_url = None, experiment
        if dispatcher_url is not None:
            warnings.warn(
                f"dispatcher_url={dispatcher_url!r} is ignored: rf-ray has no dispatcher; the "
                "controller reaches the experiment this kernel started (or experiment_name=) "
                "through Ray",
                IgnoredFieldWarning,
                stacklevel=2,
            )
        self.experiment = _target(experiment, experiment_name, experiment_path)
        self.op_timeout_s = op_timeout_s
        self.run_id: int | None = None
        self.config: dict[str, Any] = {}
        self.status = "Unknown"
        self.chunk_number = 0
        self._refreshing: threading.Event | None = None
        self.last_message: tuple[str, str] = ("info", "")
        """(kind, text) of the message the panel shows last."""
        self._create_widgets()

    # ------------------------------------------------------------------ widgets
    def _create_widgets(self) -> None:
        w = self.widgets
        self.run_selector = w.Dropdown(options=[], description="", layout=w.Layout(width="300px"))
        self.load_btn = w.Button(description="Load Run", button_style="primary", icon="download")
        self.refresh_selector_btn = w.Button(
            description="Refresh List", button_style="info", icon="refresh"
        )
        self.status_label = w.HTML(value="<b>Status:</b> Not loaded")
        self.chunk_label = w.HTML(value="<b>Chunk:</b> N/A")
        self.run_id_label = w.HTML(value="<b>Run ID:</b> N/A")
        self.resume_btn = w.Button(description="Resume", button_style="success", icon="play")
        self.stop_btn = w.Button(description="Stop", button_style="danger", icon="stop")
        self.delete_btn = w.Button(description="Delete", button_style="danger", icon="trash")
        self.refresh_btn = w.Button(description="Refresh Status", button_style="info", icon="sync")
        self.config_text = w.Textarea(
            value="{}", disabled=True, layout=w.Layout(width="100%", height="200px")
        )
        self.warm_start_checkbox = w.Checkbox(
            value=False,
            description="Warm Start (continue from previous checkpoint)",
            disabled=True,
            style={"description_width": "initial"},
        )
        self.clone_btn = w.Button(description="Clone", button_style="primary")
        self.submit_clone_btn = w.Button(
            description="✓ Submit Clone", button_style="success", disabled=True
        )
        self.cancel_clone_btn = w.Button(description="✗ Cancel", disabled=True)
        self.status_message = w.HTML(value="", layout=w.Layout(width="100%", min_height="40px"))
        self.refresh_selector_btn.on_click(lambda _: self.fetch_all_runs())
        self.load_btn.on_click(lambda _: self._handle_load())
        self.resume_btn.on_click(lambda _: self._handle_op("resume"))
        self.stop_btn.on_click(lambda _: self._handle_op("stop"))
        self.delete_btn.on_click(lambda _: self._handle_op("delete"))
        self.refresh_btn.on_click(lambda _: self.load_run(self.run_id) if self.run_id else None)
        self.clone_btn.on_click(lambda _: self._enable_clone_mode())
        self.submit_clone_btn.on_click(lambda _: self._handle_clone())
        self.cancel_clone_btn.on_click(lambda _: self._handle_cancel_clone())
        self.run_selector.observe(self._on_run_selected, names="value")

    def display(self) -> None:
        """Show the panel under the cell and list the experiment's runs."""
        from IPython.display import display

        _enable_colab_widgets()
        w = self.widgets
        header = w.VBox(
            [
                w.HTML(f"<h3>Interactive Run Controller: {html.escape(self.experiment.name)}</h3>"),
                w.HBox([self.run_id_label, self.status_label, self.chunk_label]),
            ]
        )
        selector = w.VBox(
            [
                w.HTML("<b>Select a Run:</b>"),
                w.HBox([self.run_selector, self.load_btn, self.refresh_selector_btn]),
            ]
        )
        actions = w.HBox([self.resume_btn, self.stop_btn, self.delete_btn, self.refresh_btn])
        clone_row = w.HBox([self.clone_btn, self.submit_clone_btn, self.cancel_clone_btn])
        config = w.VBox(
            [
                w.HTML("<b>Configuration:</b>"),
                self.config_text,
                self.warm_start_checkbox,
                clone_row,
            ]
        )
        display(w.VBox([header, self.status_message, selector, actions, config]))
        self.fetch_all_runs()
        if self.run_id:
            self.load_run(self.run_id)

    # ------------------------------------------------------------------ reads (the store)
    def fetch_all_runs(self) -> None:
        """List the experiment's runs in the dropdown."""
        try:
            runs = self._runs()
        except ConfigError as e:
            self._show_message(str(e), "warning")
            return
        self.run_selector.options = [
            (f"Run {r['run_id']} - {r['status']}", r["run_id"]) for r in runs
        ]
        self._show_message(f"Found {len(runs)} runs" if runs else "No runs found", "info")

    def load_run(self, run_id: int) -> None:
        """Show run ``run_id``'s status, chunks done and config."""
        self.run_id = run_id
        try:
            row = next((r for r in self._runs() if r["run_id"] == run_id), None)
        except ConfigError as e:
            self._show_message(str(e), "warning")
            return
        if row is None:
            self._show_message(f"Run {run_id} is not in experiment {self.experiment.name}", "error")
            return
        self.config, self.status = dict(row["config"]), row["status"]
        self.chunk_number = row["chunks_done"]
        self._update_display()
        self._show_message(f"Loaded run {run_id}", "success")

    def _runs(self) -> list[dict[str, Any]]:
        info = self.experiment.get_runs_info()
        return [] if info.empty else info.to_dict("records")

    def _update_display(self) -> None:
        self.run_id_label.value = f"<b>Run ID:</b> {self.run_id}"
        self.status_label.value = f"<b>Status:</b> {html.escape(self.status)}"
        self.chunk_label.value = f"<b>Chunk:</b> {self.chunk_number}"
        self.config_text.value = json.dumps(self.config, indent=2, default=str)
        over = self.status in ("completed", "deleted", "failed")
        self.resume_btn.disabled = self.stop_btn.disabled = over
        self.delete_btn.disabled = self.status == "deleted"

    def _on_run_selected(self, change: dict[str, Any]) -> None:
        if change["new"] is not None:
            self.load_run(change["new"])

    def _handle_load(self) -> None:
        if self.run_selector.value is None:
            self._show_message("Please select a run first", "warning")
            return
        self.load_run(self.run_selector.value)

    # ------------------------------------------------------------------ ops
    def _handle_op(self, op: str) -> None:
        if self.run_id is None:
            self._show_message("Load a run first", "warning")
            return
        try:
            result = self._send(op, self.run_id)
        except (OpError, ConfigError, TimeoutError) as e:
            self._show_message(f"Error: {e}", "error")
            return
        self.load_run(self.run_id)
        self._show_message(f"{op.capitalize()}: run {self.run_id} is {result['status']}", "success")

    def _enable_clone_mode(self) -> None:
        for widget in (self.config_text, self.warm_start_checkbox):
            widget.disabled = False
        self.submit_clone_btn.disabled = self.cancel_clone_btn.disabled = False
        self.clone_btn.disabled = True
        self._show_message("Edit the config and click Submit to clone", "info")

    def _disable_clone_mode(self) -> None:
        self.config_text.disabled = self.warm_start_checkbox.disabled = True
        self.config_text.value = json.dumps(self.config, indent=2, default=str)
        self.warm_start_checkbox.value = False
        self.submit_clone_btn.disabled = self.cancel_clone_btn.disabled = True
        self.clone_btn.disabled = False

    def _handle_cancel_clone(self) -> None:
        self._disable_clone_mode()
        self._show_message("Cancelled clone", "info")

    def _handle_clone(self) -> None:
        """Clone the loaded run with the knobs edited in the JSON (only those that changed)."""
        if self.run_id is None:
            self._show_message("Load a run first", "warning")
            return
        try:
            edited = json.loads(self.config_text.value)
        except json.JSONDecodeError as e:
            self._show_message(f"Invalid JSON: {e}", "error")
            return
        if not isinstance(edited, dict):
            self._show_message("The config must be a JSON object of knob -> value", "error")
            return
        changes = {k: v for k, v in edited.items() if self.config.get(k) != v}
        if not changes:
            self._show_message("Nothing changed: edit a knob's value before cloning", "warning")
            return
        warm = bool(self.warm_start_checkbox.value)
        try:
            result = self._send("clone", self.run_id, changes, warm)
        except (OpError, ConfigError, TimeoutError) as e:
            self._show_message(f"Error: {e}", "error")
            return
        self._disable_clone_mode()
        self.fetch_all_runs()
        self._show_message(f"Cloned run {self.run_id} as run {result['run_id']}", "success")

    def _send(
        self, op: str, run_id: int, changes: dict[str, Any] | None = None, warm: bool = False
    ) -> dict[str, Any]:
        """One op through the experiment's scheduler: in this process when this kernel runs
        the experiment, else through a short-lived ``rf-ray ops`` child."""
        exp = self.experiment
        if exp.running:
            if op == "clone":
                return exp.clone_modify(run_id, changes or {}, warm_start=warm)
            apply = {"stop": exp.stop, "resume": exp.resume, "delete": exp.delete}[op]
            return dict(apply(run_id))
        return _ops_in_child(exp, op, run_id, changes or {}, warm, self.op_timeout_s)

    def _show_message(self, message: str, kind: str = "info") -> None:
        color = _COLORS.get(kind, _COLORS["info"])
        self.status_message.value = (
            f'<div style="color: {color}; font-weight: 600">{html.escape(message)}</div>'
        )
        self.last_message = (kind, message)

    def auto_refresh(self, interval: float = 5.0) -> None:
        """Refresh the loaded run every ``interval`` seconds while the experiment runs in this
        kernel (or until ``stop_auto_refresh()``)."""
        self.stop_auto_refresh()
        stop = self._refreshing = threading.Event()

        def loop() -> None:
            while not stop.wait(interval) and self.experiment.running:
                if self.run_id is not None:
                    self.load_run(self.run_id)

        threading.Thread(target=loop, name="rf-ray-controller-refresh", daemon=True).start()

    def stop_auto_refresh(self) -> None:
        if self._refreshing is not None:
            self._refreshing.set()


def _import_widgets() -> Any:
    try:
        import ipywidgets
    except ImportError:
        raise ConfigError(
            f"InteractiveController needs ipywidgets, which is not installed: {WIDGETS_EXTRA}"
        ) from None
    return ipywidgets


def _target(experiment: Any, name: str | None, path: str | Path | None) -> Experiment:
    if experiment is not None:
        if not isinstance(experiment, Experiment):
            raise ConfigError(f"experiment must be an rf_ray.Experiment, got {experiment!r}")
        return experiment
    if name is not None:
        return Experiment(name, experiment_path=path)
    latest = latest_experiment()
    if latest is None:
        raise ConfigError(
            "InteractiveController has no experiment: call run_fit in this kernel first "
            "(blocking=False, or in the background on Colab), or name one with "
            "InteractiveController(experiment_name=..., experiment_path=...)"
        )
    return latest


def _ops_in_child(
    exp: Experiment, op: str, run_id: int, changes: dict[str, Any], warm: bool, timeout: float
) -> dict[str, Any]:
    """``rf-ray ops`` in a child process: it attaches to the experiment's cluster and exits."""
    cmd = [sys.executable, "-m", "rf_ray.cli", "ops", op, exp.name, str(run_id)]
    cmd += [f"{key}={json.dumps(value)}" for key, value in changes.items()]
    cmd += ["--path", str(exp.dir.parent)] + (["--warm-start"] if warm else [])
    cmd += ["--trust"] if exp.trust else []  # the child checks the directory as exp does
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise TimeoutError(
            f"rf-ray ops {op} did not answer within {timeout:g} s; the op may still be applied: "
            "refresh the run before trying again"
        ) from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise OpError(lines[-1] if lines else f"rf-ray ops {op} exited {proc.returncode}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _enable_colab_widgets() -> None:
    """Colab renders ipywidgets only with its custom widget manager switched on."""
    if "google.colab" not in sys.modules:
        return
    try:
        from google.colab import output

        output.enable_custom_widget_manager()
    except (ImportError, AttributeError):  # an older Colab, or not Colab after all
        logger.debug("Colab widget manager not available", exc_info=True)


__all__ = ["OP_TIMEOUT_S", "InteractiveController"]
