"""SFT through TRL's own ``SFTTrainer``: its dataset preparation, collator, loss and metrics.

``formatting_func`` comes in two shapes. TRL's returns the example's text. RapidFire AI's
returns new columns (``{"prompt": [...messages], "completion": [...]}``), applied to every row
before training; TRL then reads those columns as any prompt-completion dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actors.engine.spec import RunSpec


def make_trainer(
    spec: RunSpec, args: Any, model: Any, tokenizer: Any, train_dataset: Any, eval_dataset: Any
) -> Any:
    from trl import SFTTrainer

    formatting_func = spec.formatting_func
    if (
        formatting_func is not None
        and len(train_dataset)
        and isinstance(formatting_func(train_dataset[0]), Mapping)
    ):
        train_dataset = _columns_from(formatting_func, train_dataset)
        if eval_dataset is not None:
            eval_dataset = _columns_from(formatting_func, eval_dataset)
        formatting_func = None
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        formatting_func=formatting_func,
        compute_metrics=spec.compute_metrics,
    )


def _columns_from(formatting_func: Any, dataset: Any) -> Any:
    """The dataset with each row replaced by the columns ``formatting_func`` returns for it
    (RapidFire's shape); row order is kept, so chunking and equivalence are unchanged."""
    return dataset.map(formatting_func, remove_columns=dataset.column_names)
