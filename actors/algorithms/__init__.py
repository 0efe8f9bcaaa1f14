"""TRL glue, one thin module per algorithm; the executor's slice loop is shared.

Each algorithm module exposes ``make_trainer(spec, args, model, tokenizer, train, eval)``
returning the TRL trainer whose collation, loss and metrics the slice loop drives.
"""

from __future__ import annotations

from typing import Any

from actors.spec import RunSpec


def make_trainer(
    spec: RunSpec, args: Any, model: Any, tokenizer: Any, train_dataset: Any, eval_dataset: Any
) -> Any:
    """Build the run's TRL trainer on the shared ``PeftModel``."""
    if spec.trainer_type == "SFT":
        from actors.algorithms import sft

        trainer = sft.make_trainer(spec, args, model, tokenizer, train_dataset, eval_dataset)
    elif spec.trainer_type == "DPO":
        from actors.algorithms import dpo

        trainer = dpo.make_trainer(spec, args, model, tokenizer, train_dataset, eval_dataset)
    else:
        raise NotImplementedError(f"trainer_type {spec.trainer_type!r} is not supported yet")
    _quiet(trainer)
    return trainer


def _quiet(trainer: Any) -> None:
    """rf-ray logs metrics itself: drop the callbacks that print or report them."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def drain_train_metrics(trainer: Any) -> dict[str, float]:
    """Average and clear the metrics TRL accumulated during the last optimizer step.

    TRL trainers collect per-micro-batch metrics in ``_metrics["train"]`` and average them in
    ``log()``; with ``logging_steps=1`` that is once per optimizer step, which this mirrors.
    """
    store = getattr(trainer, "_metrics", None)
    if not store or "train" not in store:
        return {}
    out = {k: float(sum(v) / len(v)) for k, v in store["train"].items() if v}
    store["train"].clear()
    return out
