"""DPO through TRL's own ``DPOTrainer``: its preference collation, loss and reward metrics.

The reference policy is the shared base with adapters disabled (TRL does this itself for a
``PeftModel`` without a ``ref_model``), so no second copy of the base weights exists.
"""

from __future__ import annotations

from typing import Any

from actors.engine.algorithms import base_as_reference, with_formatted_columns
from actors.engine.spec import RunSpec


def make_trainer(
    spec: RunSpec, args: Any, model: Any, tokenizer: Any, train_dataset: Any, eval_dataset: Any
) -> Any:
    from trl import DPOTrainer

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
