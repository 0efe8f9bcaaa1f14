"""DPO through TRL's own ``DPOTrainer``: its preference collation, loss and reward metrics.

The reference policy is the shared base with adapters disabled (TRL does this itself for a
``PeftModel`` without a ``ref_model``), so no second copy of the base weights exists. A
``formatting_func`` adds its columns to every row first (``with_formatted_columns``).

A config whose loss can only be infinite fails its run here, at its start, with the reason:
TRL only logs a warning for the robust loss with ``label_smoothing >= 0.5`` (it divides by
``1 - 2 * label_smoothing``), and the run would fail at its first step on a NaN loss.
"""

from __future__ import annotations

from typing import Any

from actors.engine.algorithms.columns import with_formatted_columns
from actors.engine.algorithms.reference import base_as_reference
from actors.engine.spec import RunSpec
from policies.errors import RunFailedError


def make_trainer(
    spec: RunSpec, args: Any, model: Any, tokenizer: Any, train_dataset: Any, eval_dataset: Any
) -> Any:
    from trl import DPOTrainer

    losses = [args.loss_type] if isinstance(args.loss_type, str) else list(args.loss_type)
    if "robust" in losses and not 0 <= args.label_smoothing < 0.5:
        raise RunFailedError(
            f"run {spec.run_id}: loss_type includes 'robust', which divides by "
            f"1 - 2 * label_smoothing, and label_smoothing={args.label_smoothing!r}: its loss "
            "is infinite. Use a label_smoothing in [0, 0.5)"
        )
    train_dataset, eval_dataset = with_formatted_columns(spec, train_dataset, eval_dataset)
    with base_as_reference(model, spec.adapter_name):
        return DPOTrainer(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            compute_metrics=spec.compute_metrics,
        )
