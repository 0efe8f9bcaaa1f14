"""DPO through TRL's own ``DPOTrainer``: its preference collation, loss and reward metrics.

The reference policy is the shared base with adapters disabled (TRL does this itself for a
``PeftModel`` without a ``ref_model``), so no second copy of the base weights exists.
"""

from __future__ import annotations

from typing import Any

from actors.spec import RunSpec


def make_trainer(
    spec: RunSpec, args: Any, model: Any, tokenizer: Any, train_dataset: Any, eval_dataset: Any
) -> Any:
    from trl import DPOTrainer

    # Given a PeftModel, DPOTrainer assumes its "default" adapter may be pretrained and adds a
    # frozen "ref" copy of it. rf-ray's adapters are fresh, so the reference is the base with
    # adapters disabled (what TRL does when it wraps the model itself): satisfy the lookup, then
    # drop the copy, and TRL falls back to ``use_adapter(model, None)`` (adapters disabled).
    model.peft_config["default"] = model.peft_config[spec.adapter_name]
    try:
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            compute_metrics=spec.compute_metrics,
        )
    finally:
        del model.peft_config["default"]
    if "ref" in model.peft_config:
        model.delete_adapter("ref")
    model.set_adapter(spec.adapter_name)
    return trainer
