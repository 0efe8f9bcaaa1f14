"""TRL glue, one thin module per algorithm; the executor's slice loop is shared.

Each algorithm module exposes ``make_trainer(spec, args, model, tokenizer, train, eval)``
returning the TRL trainer whose collation, loss and metrics the slice loop drives.

Where an optimizer step's micro-batches come from differs by algorithm, so that is the one
other hook: ``make_batch_source(spec, trainer)`` returns an object whose ``take(step)`` gives the
micro-batches of optimizer step ``step``, exactly as ``Trainer._run_epoch`` would receive them
from ``get_batch_samples``. SFT and DPO collate the ``ChunkPlan``'s index lists (rf-ray's own
seed-shuffled order); GRPO reads its trainer's own dataloader (see
``actors.engine.algorithms.grpo``).

Here too: ``step_metrics`` (one optimizer step's metrics, as ``Trainer`` logs them) and
``forward_logs`` (those metrics to the integrations a run's ``report_to`` kept).

Files: ``sft.py``, ``dpo.py``, ``grpo.py`` (one per algorithm); ``reference.py`` (DPO's and
GRPO's reference policy: the base with adapters off); ``internals.py`` with
``transformers_internals.py``, ``accelerate_internals.py``, ``trl_internals.py`` and
``torch_internals.py``: every library private rf-ray touches, one module per library, each
checked by ``tests/actors/test_library_internals.py``.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch

from actors.engine.algorithms import transformers_internals, trl_internals
from actors.engine.spec import RunSpec


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
        self.rows = transformers_internals.model_columns(trainer, trainer.train_dataset)

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

    TRL trainers collect per-micro-batch metrics (``trl_internals.train_metric_lists``) and
    average them in ``log()``; with ``logging_steps=1`` that is once per optimizer step, which
    this mirrors. NaN entries are left out of the mean as ``GRPOTrainer.log`` does (a reward
    function may return None, i.e. "not applicable", for a whole batch); a metric with no finite
    entry is omitted.
    """
    lists = trl_internals.train_metric_lists(trainer)
    out = {}
    for key, values in lists.items():
        valid = [v for v in values if not math.isnan(v)]
        if valid:
            out[key] = float(sum(valid) / len(valid))
    lists.clear()
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


def forward_logs(trainer: Any, params: dict[str, Any], metrics: list[dict[str, float]]) -> None:
    """Hand a slice's step metrics to the TRL integrations the run's ``report_to`` kept (wandb,
    tensorboard; ``rf_ray.specs.build_trl_config``), as ``Trainer.log`` would: rf-ray drives
    the steps itself, so nothing else calls their ``on_log``. Same cadence as MLflow: every
    ``logging_steps`` steps, and every step that evaluated."""
    if not trainer.args.report_to or trainer.args.report_to == ["none"]:
        return
    every = params.get("logging_steps", 1)
    every = every if isinstance(every, int) and every >= 1 else 1
    current = trainer.state.global_step
    try:
        for m in metrics:
            step = int(m["step"])
            if step % every and not any(k.startswith("eval_") for k in m):
                continue
            trainer.state.global_step = step  # the integrations read the step from the state
            logs = {k: v for k, v in m.items() if k != "step"}
            trainer.control = trainer.callback_handler.on_log(
                trainer.args, trainer.state, trainer.control, logs
            )
    finally:
        trainer.state.global_step = current
