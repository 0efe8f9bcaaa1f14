"""The TRL privates rf-ray uses, each behind one function (see ``internals``).

TRL's trainers keep their per-step metrics and token count in private members and log them
from ``log()``; GRPO counts its micro-steps to know when to generate again. rf-ray steps the
trainers itself, so it reads and advances these the way ``train()`` would.
"""

from __future__ import annotations

from typing import Any

from actors.engine.algorithms.internals import Private

VERSION = "trl 1.16.0"
_SFT = "trl.trainer.sft_trainer:SFTTrainer"
_DPO = "trl.trainer.dpo_trainer:DPOTrainer"
_GRPO = "trl.trainer.grpo_trainer:GRPOTrainer"

PRIVATES = (
    *(Private(owner, name, None, VERSION, instance_only=True)
      for owner in (_SFT, _DPO, _GRPO) for name in ("_metrics", "_total_train_tokens")),
    Private(_GRPO, "_step", None, VERSION, instance_only=True),
    Private(_GRPO, "_buffered_inputs", None, VERSION, instance_only=True),
    Private(_GRPO, "_current_train_step_time", None, VERSION, instance_only=True),
    Private(_GRPO, "_is_vlm", None, VERSION, instance_only=True),
)  # fmt: skip


def train_metric_lists(trainer: Any) -> dict[str, list[float]]:
    """The per-micro-batch metrics the trainer collected since its last ``log()``, by name (TRL
    averages and clears them there); empty for a trainer that collects none."""
    store = getattr(trainer, "_metrics", None) or {}
    return store.get("train", {})  # type: ignore[no-any-return]


def total_train_tokens(trainer: Any) -> int:
    """The running token count TRL logs as ``num_tokens``."""
    return int(trainer._total_train_tokens or 0)


def set_total_train_tokens(trainer: Any, tokens: int) -> None:
    """Restore the running token count (a run placed from its checkpoint)."""
    trainer._total_train_tokens = tokens


def grpo_count_micro_step(trainer: Any, seconds: float) -> None:
    """What ``GRPOTrainer.training_step`` does after the loss: count the micro-step (its
    generation cadence and buffer index read ``_step``) and log the step time when an
    accumulation window closes."""
    trainer._step += 1
    trainer._current_train_step_time += seconds
    if trainer._step % trainer.current_gradient_accumulation_steps == 0:
        trainer._metrics["train"]["step_time"].append(trainer._current_train_step_time)
        trainer._current_train_step_time = 0.0


def grpo_regenerate_at(trainer: Any, micro_step: int) -> None:
    """Put a GRPO trainer at ``micro_step`` with an empty generation buffer, so it generates
    afresh at its next micro-step (what TRL does on ``resume_from_checkpoint``)."""
    trainer._step = micro_step
    trainer._buffered_inputs = None


def grpo_is_vlm(trainer: Any) -> bool:
    """Whether a GRPO trainer works on a vision-language model (its processor has images)."""
    return bool(trainer._is_vlm)
