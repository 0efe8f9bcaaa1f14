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
    from actors.engine.gen_eval import GenerationEval
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
    generation_eval: GenerationEval | None = None
    """Generation metrics at each chunk end (``actors.engine.gen_eval``), or None."""

    @property
    def adapter_name(self) -> str:
        """The PEFT adapter name of this run on its base model."""
        return f"run_{self.run_id}"

    @property
    def fusion_key(self) -> str | None:
        """Runs with equal keys may share one fused pass over their base (``actors.engine.fused``;
        ``policies.fusion.fusion_key``); ``None``: the run is always time-sliced (DoRA has no
        fused kernel; eval_strategy="steps" evaluates between the run's own steps; GRPO whose
        generation settings are unknown or run outside the model). The executor re-checks what
        only the built trainer knows (``actors.engine.eligibility``)."""
        from policies.fusion import fusion_key

        reason = None
        if getattr(self.lora_config, "use_dora", False):
            reason = "DoRA"
        elif getattr(self.trl_args, "eval_strategy", "no") == "steps":
            reason = "evaluations inside a chunk run between this run's own steps"
        generation = None
        if self.trainer_type == "GRPO" and hasattr(self.trl_args, "num_generations"):
            generation = vars(self.trl_args)
        return fusion_key(self.model_key, self.trainer_type, generation, reason)

    @property
    def fusion_tokens(self) -> int:
        """The most tokens one micro-batch of this run puts through the base: rows x max length
        (a DPO row is a chosen and a rejected sequence). The fusion budget counts these."""
        rows = int(self.trl_args.per_device_train_batch_size)
        if self.trainer_type == "DPO":
            rows *= 2
        return rows * int(getattr(self.trl_args, "max_length", None) or 1024)
