"""The base-model executor: one frozen base model per distinct model, many runs as adapters.

``Executor`` is a plain object (``actors.base_model_actor.BaseModelActor`` is its thin Ray
shell), so slices are testable without Ray. It is built from parts, each owning its state, and
hands each request to the part whose job it is:

* ``registry`` (``AdapterRegistry``, ``actors.engine.registry``): the resident base models,
  loaded once each through the user's ``create_model_fn`` and wrapped in one ``PeftModel`` that
  carries every live run as a named LoRA adapter; one ``AdapterRecord`` per run (TRL trainer,
  optimizer, LR schedule, RNG state, step counter); which adapter is active;
* ``time_sliced`` (``TimeSliced``, ``actors.engine.time_sliced``): one run's slice, step by step
  as ``Trainer._run_epoch`` takes them;
* ``fused_slices`` (``FusedSlices``, ``actors.engine.fused_slice``): several runs' slices in one
  pass over their shared base, falling back to ``time_sliced``;
* ``evaluator`` (``Evaluator``, ``actors.engine.evaluation``): evaluation and generation
  metrics, alone or fused;
* ``runtime`` (``Runtime``, ``actors.engine.runtime``): the device, bf16 autocast, what the
  worker is doing now (``phase``), the counters (``stats``, ``actors.engine.stats``) and the
  timeline, shared by the parts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from actors.engine.evaluation import Evaluator
from actors.engine.fused_slice import FusedSlices, Grant, Outcome
from actors.engine.registry import AdapterRegistry, BaseEntry
from actors.engine.runtime import Runtime, quiet_libraries
from actors.engine.spec import RunSpec
from actors.engine.time_sliced import TimeSliced
from actors.messages import SliceResult


class Executor:
    """Owns the base models and the adapter registry; trains, evaluates and generates."""

    def __init__(
        self,
        create_model_fn: Callable[[Any], tuple[Any, Any]],
        train_dataset: Any,
        eval_dataset: Any = None,
        device: str | None = None,
    ) -> None:
        quiet_libraries()
        self.runtime = Runtime.on(device)
        self.registry = AdapterRegistry(create_model_fn, train_dataset, eval_dataset, self.runtime)
        self.evaluator = Evaluator(self.registry, self.runtime, eval_dataset)
        self.time_sliced = TimeSliced(self.registry, self.runtime, self.evaluator)
        self.fused_slices = FusedSlices(
            self.registry, self.runtime, self.time_sliced, self.evaluator
        )
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        """The datasets the executor was started with (its runs' trainers prepare their own
        copies; ``AdapterRegistry`` hands these to them)."""
        self.device: torch.device = self.runtime.device
        self.stats = self.runtime.stats
        """The executor's counters (``EngineStats``); ``summary`` reports them."""
        self.timeline = self.runtime.timeline

    @property
    def bases(self) -> dict[str, BaseEntry]:
        """The resident base models by model key (``AdapterRegistry.bases``)."""
        return self.registry.bases

    @property
    def use_bf16(self) -> bool:
        """Whether slices run under bf16 autocast (``Runtime.use_bf16``)."""
        return self.runtime.use_bf16

    @use_bf16.setter
    def use_bf16(self, value: bool) -> None:
        self.runtime.use_bf16 = value

    @property
    def phase(self) -> str:
        """What the executor is doing now, in words (``Runtime.phase``)."""
        return self.runtime.phase

    @phase.setter
    def phase(self, value: str) -> None:
        self.runtime.phase = value

    # ------------------------------------------------------------------ runs
    def load_base(self, spec: RunSpec) -> None:
        """Load ``spec``'s base model now (once per model; ``add_run`` finds it resident)."""
        self.registry.load_base(spec)

    def add_run(self, spec: RunSpec, state: dict[str, Any] | None = None) -> None:
        """Register a run (``AdapterRegistry.add``), restored from ``state`` if given."""
        self.registry.add(spec, state)

    def remove_run(self, run_id: int) -> None:
        """Drop a run's adapter, optimizer and trainer (``AdapterRegistry.remove``)."""
        self.registry.remove(run_id)

    # ------------------------------------------------------------------ slices
    def placement(self, run_id: int, start_step: int, end_step: int) -> SliceResult | None:
        """Where a grant stands against the run here (``TimeSliced.placement``)."""
        return self.time_sliced.placement(run_id, start_step, end_step)

    def run_slice(
        self, run_id: int, end_step: int, evaluate: bool = False, start_step: int | None = None
    ) -> SliceResult:
        """Train one run's slice alone (``TimeSliced.run``)."""
        return self.time_sliced.run(run_id, end_step, evaluate, start_step)

    def run_fused(self, grants: list[Grant]) -> dict[int, Outcome]:
        """Train several runs' slices in one fused pass (``FusedSlices.run``)."""
        return self.fused_slices.run(grants)

    # ------------------------------------------------------------------ introspection
    def resident_parameter_count(self) -> dict[str, int]:
        """Parameters held: base weights (counted once) and adapters."""
        return self.registry.resident_parameter_count()

    def summary(self) -> dict[str, Any]:
        """The counters, the resident runs, the device and its memory, as plain data."""
        return {
            **self.stats.to_dict(),
            "runs": sorted(self.registry),
            "device": str(self.device),
            "memory": self.runtime.memory(),
            "parameters": self.resident_parameter_count(),
        }
