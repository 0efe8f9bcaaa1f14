"""The columns a DPO or GRPO trainer reads, made by the run's ``formatting_func`` (RapidFire AI's
semantics: ``dataset.map(formatting_func)`` for every trainer type). SFT applies its function
through TRL's own ``formatting_func`` (``actors.engine.algorithms.sft``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actors.engine.spec import RunSpec
from policies.errors import RunFailedError


def with_formatted_columns(spec: RunSpec, train_dataset: Any, eval_dataset: Any) -> tuple[Any, Any]:
    """DPO and GRPO: the datasets with the run's ``formatting_func`` applied as RapidFire AI
    applies it for every trainer type (``dataset.map(formatting_func)``): the dict it returns
    for a row adds those columns to the row, replacing any of the same name (so it can build
    ``prompt`` from raw columns, and the raw ones stay for the reward functions). Row order is
    kept. ``rf_ray.data.check_columns`` has checked the result's columns before the start."""
    func = spec.formatting_func
    if func is None:
        return train_dataset, eval_dataset
    first = func(train_dataset[0]) if len(train_dataset) else {}
    if not isinstance(first, Mapping):
        raise RunFailedError(
            f"run {spec.run_id}: formatting_func {getattr(func, '__qualname__', func)!r} "
            f"returned {type(first).__name__}; for {spec.trainer_type} it must return a dict of "
            "columns (e.g. {'prompt': ...})"
        )
    train_dataset = train_dataset.map(func)
    if eval_dataset is not None:
        eval_dataset = eval_dataset.map(func)
    return train_dataset, eval_dataset
