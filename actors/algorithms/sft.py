"""SFT through TRL's own ``SFTTrainer``: its dataset preparation, collator, loss and metrics."""

from __future__ import annotations

from typing import Any

from actors.spec import RunSpec


def make_trainer(
    spec: RunSpec, args: Any, model: Any, tokenizer: Any, train_dataset: Any, eval_dataset: Any
) -> Any:
    from trl import SFTTrainer

    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        formatting_func=spec.formatting_func,
        compute_metrics=spec.compute_metrics,
    )
