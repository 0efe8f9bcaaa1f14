"""The plain description of one run that the driver hands to the actors.

``rf_ray`` resolves a user's knob spaces into concrete configs and builds the TRL and PEFT config
objects (validating them before any actor starts); the actors only ever see this record. It is
plain data plus the user's callables, so Ray can ship it to any process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from policies.chunking import ChunkPlan


@dataclass
class RunSpec:
    """Everything an executor needs to train one run; nothing in it refers to an actor."""

    run_id: int
    """Experiment-unique run id (1, 2, ...)."""
    model_key: str
    """Identifies the base model: runs with equal keys share one resident copy."""
    model_config: Any
    """Passed as-is to the user's ``create_model_fn`` (once per model_key per executor)."""
    trainer_type: str
    """"SFT", "DPO" or "GRPO"."""
    trl_args: Any
    """A TRL config instance (``SFTConfig`` ...) with the run's concrete values."""
    lora_config: Any
    """A ``peft.LoraConfig`` for the run's adapter."""
    plan: ChunkPlan
    """How the run's data is cut into optimizer steps and chunks."""
    seed: int
    """Data-order seed of the experiment (the run's training seed is ``trl_args.seed``)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Flat, JSON-able view of the run's config (MLflow params, leaderboard)."""
    formatting_func: Callable[..., Any] | None = None
    compute_metrics: Callable[..., Any] | None = None
    reward_funcs: list[Callable[..., Any]] | None = None
    parent_run_id: int | None = None
    """The run this one was cloned from, if any."""

    @property
    def adapter_name(self) -> str:
        """The PEFT adapter name of this run on its base model."""
        return f"run_{self.run_id}"
