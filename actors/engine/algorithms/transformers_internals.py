"""The transformers privates rf-ray uses, each behind one function (see ``internals``).

rf-ray's slice loop is ``Trainer._run_epoch`` unrolled (``actors.engine.time_sliced``): to match
``Trainer.train()`` bit for bit it counts a step's items, clips and reads the learning rate the
way the trainer does, through the trainer's own private helpers rather than copies of them.
"""

from __future__ import annotations

from typing import Any

from actors.engine.algorithms.internals import Private

VERSION = "transformers 5.25.0"

PRIVATES = (
    Private("transformers.trainer:Trainer", "_get_num_items_in_batch",
            ("batch_samples", "device"), VERSION),
    Private("transformers.trainer:Trainer", "_clip_grad_norm", ("model",), VERSION),
    Private("transformers.trainer:Trainer", "_get_grad_norm", ("model",), VERSION),
    Private("transformers.trainer:Trainer", "_get_learning_rate", (), VERSION),
    Private("transformers.trainer:Trainer", "_remove_unused_columns",
            ("dataset", "description"), VERSION),
    Private("transformers.trainer:Trainer", "_prepare_inputs", ("inputs",), VERSION),
    Private("transformers.generation.utils:GenerationMixin", "_prepare_generation_config",
            ("generation_config",), VERSION),
)  # fmt: skip


def num_items_in_batch(trainer: Any, batches: list[Any]) -> Any:
    """The number of label tokens in one optimizer step's micro-batches: what ``train()``
    divides each micro-batch's loss by (``Trainer._get_num_items_in_batch``)."""
    return trainer._get_num_items_in_batch(batches, trainer.args.device)


def clip_grad_norm(trainer: Any, model: Any) -> Any:
    """Clip the gradients to ``max_grad_norm`` as ``train()`` does; the norm before clipping."""
    return trainer._clip_grad_norm(model)


def grad_norm(trainer: Any, model: Any) -> Any:
    """The gradient norm without clipping (``max_grad_norm`` unset), as ``train()`` logs it."""
    return trainer._get_grad_norm(model)


def learning_rate(trainer: Any) -> float:
    """The learning rate ``train()`` logs for the step about to be taken."""
    return float(trainer._get_learning_rate())


def model_columns(trainer: Any, dataset: Any) -> Any:
    """``dataset`` with only the columns the model's forward takes (what the trainer's train
    dataloader feeds the collator)."""
    return trainer._remove_unused_columns(dataset, "training")


def prepare_inputs(trainer: Any, batch: Any) -> Any:
    """A collated micro-batch made ready for the loss: moved to the device, and for GRPO
    generated, scored and buffered (``GRPOTrainer`` overrides ``Trainer._prepare_inputs``)."""
    return trainer._prepare_inputs(batch)


def resolve_generation_config(model: Any, config: Any) -> Any:
    """``config`` with its unset fields filled as ``generate`` fills them (the model's own
    generation config, then transformers' defaults); ``config`` itself for a model that is not
    a transformers ``GenerationMixin``. The one place transformers resolves this precedence;
    re-implementing it would drift."""
    prepare = getattr(model, "_prepare_generation_config", None)
    if prepare is None:
        return config
    resolved, _ = prepare(config)
    return resolved
