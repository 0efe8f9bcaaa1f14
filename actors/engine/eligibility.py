"""Which runs may share a fused pass: what only the built trainer and the model know.

The scheduler groups runs by their spec (``RunSpec.fusion_key``, ``policies.fusion``); once a
run's TRL trainer and PEFT adapter exist, ``fusable`` re-checks what only they can say: a custom
loss that needs the full logits, DPO with a separate or precomputed reference, GRPO generating
outside the shared model, LoRA on a layer the kernel (``actors.engine.lora_kernel``) does not
segment, gradient checkpointing with LoRA dropout. A run that is not fusable is time-sliced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from actors.engine.algorithms import trl_internals
from actors.engine.lora_kernel import dropout_probability

if TYPE_CHECKING:
    from actors.engine.registry import AdapterRegistry

FUSABLE_TRAINERS = ("SFT", "DPO", "GRPO")


def fusable(record: Any, model: Any) -> str | None:  # noqa: C901, PLR0911  one return per reason a run cannot be fused
    """``None`` if the run can be trained fused, else the reason it cannot (for logs and docs)."""
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.lora.layer import LoraLayer

    spec, trainer = record.spec, record.trainer
    if spec.trainer_type not in FUSABLE_TRAINERS:
        return f"{spec.trainer_type} is time-sliced"
    if spec.trainer_type == "GRPO":
        reason = grpo_fusable(trainer)
        if reason is not None:
            return reason
    if spec.trainer_type == "SFT":
        if trainer.compute_loss_func is not None or trainer.label_smoother is not None:
            return "a custom loss or label smoothing needs the full logits"
        if getattr(trainer, "aux_loss_enabled", False):
            return "MoE auxiliary loss"
    if spec.trainer_type == "DPO" and (
        trainer.ld_alpha is not None
        or trainer.precompute_ref_logps
        or trainer.ref_model is not None
    ):
        return "DPO with ld_alpha, precomputed or separate reference model"
    if trainer.accelerator.gradient_accumulation_steps != 1:
        return "accelerate-side gradient accumulation"
    name = spec.adapter_name
    checkpointing = bool(getattr(model, "is_activation_checkpointing", False))
    for module in model.modules():
        if isinstance(module, LoraLayer) and name in module.lora_A:
            if not isinstance(module, LoraLinear):
                return f"LoRA on {type(module).__name__} layers (only Linear layers are fused)"
            if name in module.lora_variant or module.merged:
                return "DoRA or another LoRA variant, or merged weights"
            dropout = module.lora_dropout[name]
            if checkpointing and dropout_probability(dropout) > 0:
                # Recomputation in backward would redraw a run's own dropout masks differently.
                return "gradient checkpointing with LoRA dropout"
    return None


def grpo_fusable(trainer: Any) -> str | None:
    """``None`` if a GRPO trainer's generation and scoring can run in a lane, else why not."""
    args = trainer.args
    if getattr(trainer, "use_vllm", False) or getattr(args, "use_vllm", False):
        return "GRPO with vLLM generates outside the shared model"
    if getattr(args, "use_transformers_continuous_batching", False) or getattr(
        args, "use_transformers_paged", False
    ):
        return "GRPO with transformers' continuous batching"
    if getattr(trainer, "tools", None) or getattr(trainer, "rollout_func", None) is not None:
        return "GRPO with tools or a rollout function"
    if trl_internals.grpo_is_vlm(trainer):
        return "GRPO on a vision-language model"
    if getattr(trainer, "aux_loss_enabled", False):
        return "MoE auxiliary loss"
    return None


def run_fusable(registry: AdapterRegistry, run_id: int) -> str | None:
    """``fusable`` for a run of ``registry``: ``None``, or why it cannot share a fused pass."""
    record = registry[run_id]
    return fusable(record, registry.model_of(record))


def fused_group(registry: AdapterRegistry, run_ids: list[int]) -> list[int]:
    """The runs of ``run_ids`` that share one fused pass: those ``fusable`` on one base model;
    empty when fewer than two are (the caller time-slices them all)."""
    group = [r for r in run_ids if run_fusable(registry, r) is None]
    if len(group) < 2 or len({registry[r].spec.model_key for r in group}) > 1:
        return []
    return group
