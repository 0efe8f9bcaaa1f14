"""TRL glue, one thin module per algorithm; the executor's slice loop is shared.

Each algorithm module exposes ``make_trainer(spec, args, model, tokenizer, train, eval)``
returning the TRL trainer whose collation, loss and metrics the slice loop drives.

Where an optimizer step's micro-batches come from differs by algorithm, so that is the one
other hook: ``make_batch_source(spec, trainer)`` returns an object whose ``take(step)`` gives the
micro-batches of optimizer step ``step``, exactly as ``Trainer._run_epoch`` would receive them
from ``get_batch_samples``. SFT and DPO collate the ``ChunkPlan``'s index lists (rf-ray's own
seed-shuffled order); GRPO reads its trainer's own dataloader (see
``actors.engine.algorithms.grpo``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import torch

from actors.engine.spec import RunSpec
from policies.errors import RunFailedError


@contextlib.contextmanager
def base_as_reference(model: Any, adapter_name: str) -> Iterator[None]:
    """Build a DPO or GRPO trainer inside this block: its reference policy is the shared base
    with adapters disabled, and ``adapter_name`` is the active adapter afterwards.

    Given a PeftModel (GRPO: with beta > 0), TRL's DPOTrainer and GRPOTrainer assume its
    "default" adapter may be pretrained and add a frozen "ref" copy of it. rf-ray's adapters are
    fresh, so the reference is the base with adapters disabled (what TRL does when it wraps the
    model itself): satisfy the lookup, then drop the copy, and TRL falls back to
    ``use_adapter(model, None)`` (adapters disabled).
    """
    model.peft_config["default"] = model.peft_config[adapter_name]
    try:
        yield
    finally:
        del model.peft_config["default"]
    if "ref" in model.peft_config:
        model.delete_adapter("ref")
    model.set_adapter(adapter_name)


def with_formatted_columns(spec: RunSpec, train_dataset: Any, eval_dataset: Any) -> tuple[Any, Any]:
    """DPO and GRPO: the datasets with the run's ``formatting_func`` applied as RapidFire AI
    applies it for every trainer type (``dataset.map(formatting_func)``): the dict it returns
    for a row adds those columns to the row, replacing any of the same name (so it can build
    ``prompt`` from raw columns, and the raw ones stay for the reward functions). Row order is
    kept. ``rf_ray.data.check_columns`` has checked the result's columns before the start."""
    func = spec.formatting_func
    if func is None:
        return train_dataset, eval_dataset
    if len(train_dataset) and not isinstance(func(train_dataset[0]), Mapping):
        raise RunFailedError(
            f"run {spec.run_id}: formatting_func {getattr(func, '__qualname__', func)!r} "
            f"returned {type(func(train_dataset[0])).__name__}; for {spec.trainer_type} it must "
            "return a dict of columns (e.g. {'prompt': ...})"
        )
    train_dataset = train_dataset.map(func)
    if eval_dataset is not None:
        eval_dataset = eval_dataset.map(func)
    return train_dataset, eval_dataset


class BatchSource(Protocol):
    """Yields the micro-batches of one run's optimizer steps, in order."""

    def take(self, step: int) -> list[Any]:
        """The micro-batches of global optimizer step ``step`` (called with step 0, 1, ...)."""
        ...


class PlanBatches:
    """SFT and DPO: the plan's micro-batches of dataset rows, collated by the TRL trainer.

    Rows come from rf-ray's seed-shuffled epoch order (``ChunkPlan.step_microbatches``), which is
    stateless: any step can be taken first, e.g. after a restore from a checkpoint.
    """

    def __init__(self, spec: RunSpec, trainer: Any) -> None:
        self.plan = spec.plan
        self.seed = spec.seed
        self.collate = trainer.data_collator
        # The trainer's prepared (tokenized, column-pruned) training set, indexed by dataset row.
        self.rows = trainer._remove_unused_columns(trainer.train_dataset, "training")

    def take(self, step: int) -> list[Any]:
        if step % self.plan.steps_per_epoch == 0:
            # A vanilla run builds a new DataLoader iterator at each epoch start, and torch's
            # iterator draws its base seed from the global RNG; draw it too, so dropout streams
            # line up with vanilla TRL.
            torch.empty((), dtype=torch.int64).random_()
        return [
            self.collate([self.rows[i] for i in rows])
            for rows in self.plan.step_microbatches(step, self.seed)
        ]


def make_trainer(
    spec: RunSpec, args: Any, model: Any, tokenizer: Any, train_dataset: Any, eval_dataset: Any
) -> Any:
    """Build the run's TRL trainer on the shared ``PeftModel``."""
    if spec.trainer_type == "SFT":
        from actors.engine.algorithms import sft

        trainer = sft.make_trainer(spec, args, model, tokenizer, train_dataset, eval_dataset)
    elif spec.trainer_type == "DPO":
        from actors.engine.algorithms import dpo

        trainer = dpo.make_trainer(spec, args, model, tokenizer, train_dataset, eval_dataset)
    elif spec.trainer_type == "GRPO":
        from actors.engine.algorithms import grpo

        trainer = grpo.make_trainer(spec, args, model, tokenizer, train_dataset, eval_dataset)
    else:
        raise NotImplementedError(f"trainer_type {spec.trainer_type!r} is not supported yet")
    _quiet(trainer)
    return trainer


def make_batch_source(spec: RunSpec, trainer: Any) -> BatchSource:
    """Where the run's micro-batches come from (see the module docstring)."""
    if spec.trainer_type == "GRPO":
        from actors.engine.algorithms import grpo

        return grpo.LoaderBatches(spec, trainer)
    return PlanBatches(spec, trainer)


def _quiet(trainer: Any) -> None:
    """rf-ray logs metrics itself: drop the callbacks that print or report them."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def drain_train_metrics(trainer: Any) -> dict[str, float]:
    """Average and clear the metrics TRL accumulated during the last optimizer step.

    TRL trainers collect per-micro-batch metrics in ``_metrics["train"]`` and average them in
    ``log()``; with ``logging_steps=1`` that is once per optimizer step, which this mirrors. NaN
    entries are left out of the mean as ``GRPOTrainer.log`` does (a reward function may return
    None, i.e. "not applicable", for a whole batch); a metric with no finite entry is omitted.
    """
    store = getattr(trainer, "_metrics", None)
    if not store or "train" not in store:
        return {}
    out = {}
    for key, values in store["train"].items():
        valid = [v for v in values if not math.isnan(v)]
        if valid:
            out[key] = float(sum(valid) / len(valid))
    store["train"].clear()
    return out


def step_metrics(
    trainer: Any, step: int, loss: float, learning_rate: float, grad_norm: Any
) -> dict[str, float]:
    """One optimizer step's metrics, as ``Trainer`` logs them with ``logging_steps=1``, plus the
    algorithm's own (``drain_train_metrics``)."""
    out = {"step": float(step + 1), "loss": loss, "learning_rate": float(learning_rate)}
    if grad_norm is not None:
        out["grad_norm"] = float(grad_norm)
    out.update(drain_train_metrics(trainer))
    return out
