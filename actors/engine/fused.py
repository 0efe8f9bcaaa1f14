"""Fused multi-adapter slices: several runs trained in one pass over the shared base model.

Time-slicing runs one run's micro-batch at a time through the frozen base. A fused slice
concatenates the micro-batches of K runs along the batch dimension and runs the base layers ONCE
over the combined batch; each LoRA layer adds each run's adapter to that run's rows only (one base
GEMM, then per-adapter row segments, as mLoRA/ASPEN's BatchLoRA does). Everything that makes a run
a run stays per run:

* **Loss:** each run's loss is its own TRL trainer's ``compute_loss`` over its own rows,
  normalised by its own token count. rf-ray does not re-implement it. The trainer is called once
  with a *capturing* model that records the forward arguments TRL builds, and once more with a
  *replaying* model that hands back the run's rows of the fused forward's output. The K losses
  are summed and back-propagated once. A run's adapter touches only its own rows, so the gradient
  of the sum with respect to it is the gradient of its own loss.
* **DPO's reference policy:** the base with adapters disabled. It is computed in one fused pass
  too and handed to each trainer as precomputed reference log-probs (TRL's own
  ``precompute_ref_log_probs`` path).
* **Per-run step:** each run keeps its own optimizer, LR schedule, gradient clipping (over its own
  parameters only) and gradient accumulation. Runs with different accumulation windows or batch
  sizes step at their own cadence: a run whose window closes steps, and zeroes only its own
  gradients.
* **Dropout:** each run's LoRA dropout draws from the run's own generator, so its stream does not
  depend on which runs it shares a pass with. It is not the same stream as a time-sliced slice's
  (torch's fused dropout kernel draws differently), so with dropout on, a fused run matches a
  time-sliced one statistically, not bit for bit.

Rows are right-padded to the group's longest sequence (attention mask 0, label -100). In a causal
model a token never attends to later positions, so padding changes a real token's outputs only
by float rounding, from kernels that see different shapes.

GRPO fuses too (``actors.engine.fused_grpo``): each run's input preparation (generation, reward
scoring, old and reference log-probs) runs in lock step with the others', their model calls served
together, and the loss then takes the same capture/replay path as SFT and DPO.

Whether a run can take part is ``actors.engine.eligibility.fusable``'s call. When it cannot
(DoRA, a custom loss, gradient checkpointing with dropout, GRPO with vLLM...), the executor
time-slices it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from actors.engine import algorithms, fused_grpo
from actors.engine.algorithms import accelerate_internals, transformers_internals, trl_internals
from actors.engine.lora_kernel import (
    NotFusableError,
    Segment,
    concat_rows,
    segmented_lora,
    slice_outputs,
)
from policies.errors import RunFailedError


# ---------------------------------------------------------------------------- capture / replay
class _CapturedCall(Exception):  # noqa: N818 (control flow, not an error)
    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__("captured")
        self.kwargs = kwargs


class _CapturingModel:
    """Stands in for the model in a TRL ``compute_loss`` call: records the forward's arguments
    and stops the call there."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            raise NotFusableError("the trainer calls the model with positional arguments")
        raise _CapturedCall(kwargs)


class _ReplayingModel:
    """Stands in for the model in the second ``compute_loss`` call: returns the run's rows of the
    fused forward's outputs. A trainer that calls the model twice is not fusable."""

    def __init__(self, outputs: Any) -> None:
        self.outputs = outputs
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls > 1:
            raise NotFusableError("the trainer calls the model more than once per micro-batch")
        return self.outputs


def capture_forward_kwargs(trainer: Any, inputs: dict[str, Any], num_items: Any) -> dict[str, Any]:
    """The keyword arguments ``trainer.compute_loss`` passes to the model for ``inputs``."""
    try:
        with trainer.compute_loss_context_manager():
            trainer.compute_loss(_CapturingModel(), dict(inputs), num_items_in_batch=num_items)
    except _CapturedCall as captured:
        return captured.kwargs
    raise NotFusableError("the trainer computed its loss without calling the model")


# ---------------------------------------------------------------------------- the fused slice
@dataclass
class Cursor:
    """Where one run of a fused slice stands: its optimizer step and accumulation window."""

    record: Any
    end_step: int
    generator: torch.Generator
    """The run's CPU RNG stream (epoch-start draws; dropout on the CPU)."""
    device_generator: torch.Generator
    """The run's dropout stream on the model's device (``generator`` itself on the CPU)."""
    params: list[torch.nn.Parameter]
    step: int = 0
    first_step: int = 0
    batches: list[Any] = field(default_factory=list)
    micro: int = 0
    num_items: Any = None
    loss: torch.Tensor | None = None
    tokens: int = 0
    tokens_seen: int = 0
    metrics: list[dict[str, float]] = field(default_factory=list)
    total_tokens: int = 0
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.error is not None or self.step >= self.end_step

    @classmethod
    def open(cls, record: Any, end_step: int, model: Any, device: torch.device) -> Cursor:
        """A run's place in a fused slice: its RNG streams (continuing the run's own) and its
        own parameters."""
        generator = torch.Generator()
        generator.set_state(record.rng_state)
        device_generator = generator
        if record.cuda_rng_state is not None:
            device_generator = torch.Generator(device=device)
            device_generator.set_state(record.cuda_rng_state)
        return cls(
            record=record,
            end_step=end_step,
            generator=generator,
            device_generator=device_generator,
            params=run_params(model, record.trainer),
            step=record.steps_done,
            first_step=record.steps_done,
        )

    def keep_rng(self) -> None:
        """Hand the RNG streams back to the run, for its next slice (fused or not)."""
        self.record.rng_state = self.generator.get_state()
        if self.record.cuda_rng_state is not None:
            self.record.cuda_rng_state = self.device_generator.get_state()

    def optimizer_step(self) -> None:
        """Close the run's accumulation window: clip its own gradients, step its own optimizer
        and schedule, clear its own gradients (other runs of the group may be mid-window)."""
        trainer = self.record.trainer
        assert self.loss is not None
        loss_value = float(self.loss)
        accelerate_internals.sync_gradients(trainer)
        max_norm = trainer.args.max_grad_norm
        grad_norm = trainer.accelerator.clip_grad_norm_(
            self.params, max_norm if max_norm and max_norm > 0 else float("inf")
        )
        trainer.optimizer.step()
        learning_rate = transformers_internals.learning_rate(trainer)
        trainer.lr_scheduler.step()
        for p in self.params:
            p.grad = None
        trainer.state.global_step += 1
        tokens = self.tokens or int(trainer.state.num_input_tokens_seen - self.tokens_seen)
        self.metrics.append(
            algorithms.step_metrics(trainer, self.step, loss_value, learning_rate, grad_norm)
        )
        self.total_tokens += tokens
        self.step += 1
        self.record.steps_done = self.step
        self.batches = []


def run_params(model: Any, trainer: Any) -> list[torch.nn.Parameter]:
    """The run's trainable parameters (those of its optimizer), in the model's order, as the
    time-sliced loop's ``model.parameters()`` would yield the ones holding gradients."""
    own = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    return [p for p in model.parameters() if id(p) in own]


def start_step(cursor: Cursor) -> None:
    """Fetch the micro-batches of the run's next optimizer step (with the run's RNG, as the
    time-sliced loop draws an epoch start from it)."""
    record = cursor.record
    trainer = record.trainer
    saved = torch.get_rng_state()
    torch.set_rng_state(cursor.generator.get_state())
    try:
        cursor.batches = record.batches.take(cursor.step)
    finally:
        cursor.generator.set_state(torch.get_rng_state())
        torch.set_rng_state(saved)
    trainer.current_gradient_accumulation_steps = len(cursor.batches)
    cursor.num_items = transformers_internals.num_items_in_batch(trainer, cursor.batches)
    cursor.tokens = sum(
        int(b["attention_mask"].sum()) for b in cursor.batches if "attention_mask" in b
    )
    cursor.tokens_seen = trainer.state.num_input_tokens_seen
    cursor.micro = 0
    cursor.loss = torch.zeros((), device=trainer.args.device)


def fused_micro_step(model: Any, cursors: list[Cursor], pad_id: int) -> int:
    """One micro-batch of each run in ``cursors``: one fused forward (and, for DPO, one fused
    reference forward), each run's own TRL loss, one backward. Returns how many of the runs'
    input-preparation model calls (GRPO: generation, old and reference log-probs) were served
    from a shared pass."""
    started = time.perf_counter()
    cursors, inputs, shared = _prepare(model, cursors, pad_id)
    if not cursors:
        return shared
    trainers = [c.record.trainer for c in cursors]
    calls = [
        capture_forward_kwargs(t, x, c.num_items) for t, x, c in zip(trainers, inputs, cursors)
    ]
    combined, lengths = concat_rows(calls, pad_id)
    longest = max(lengths)
    bounds, start = [], 0
    for call in calls:
        rows = int(call["input_ids"].shape[0])
        bounds.append((start, start + rows))
        start += rows
    if any(c.record.spec.trainer_type == "DPO" for c in cursors):
        _dpo_reference(model, combined, bounds, inputs, [longest - n for n in lengths])

    for c in cursors:
        # Leaving ``disable_adapter`` re-applies ``set_adapter``, which freezes all adapters
        # but the active one: every run of the group trains.
        for p in c.params:
            p.requires_grad_(True)
    segments = [
        Segment(c.record.spec.adapter_name, lo, hi, c.device_generator)
        for c, (lo, hi) in zip(cursors, bounds)
    ]
    with segmented_lora(model, segments):
        outputs = model(**combined)
        own = [slice_outputs(outputs, lo, hi, longest - n) for (lo, hi), n in zip(bounds, lengths)]
        total = _losses(cursors, inputs, own)
        if total is not None:
            total.backward()
    seconds = (time.perf_counter() - started) / len(cursors)
    for cursor, trainer in zip(cursors, trainers):
        if cursor.record.spec.trainer_type == "GRPO":
            # What GRPOTrainer.training_step does after the loss: count the micro-step (its
            # generation cadence reads it), log the step time when a window closes.
            trl_internals.grpo_count_micro_step(trainer, seconds)
    return shared


def _losses(cursors: list[Cursor], inputs: list[Any], rows: list[Any]) -> torch.Tensor | None:
    """Each run's own TRL loss (its trainer's ``compute_loss``, replayed on the run's rows of
    the fused outputs), scaled as ``Trainer.training_step`` scales it; the sum to
    back-propagate (``None``: no run has a finite loss). A run whose loss is not finite fails
    alone; the others' losses still train them."""
    total = None
    for cursor, x, own in zip(cursors, inputs, rows):
        trainer = cursor.record.trainer
        dpo = cursor.record.spec.trainer_type == "DPO"
        with _reference_from_inputs(trainer, dpo), trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(
                _ReplayingModel(own), x, num_items_in_batch=cursor.num_items
            )
        if not _loss_is_scaled(trainer, cursor.num_items):
            loss = loss / trainer.current_gradient_accumulation_steps
        value = float(loss.detach())
        if not math.isfinite(value):
            cursor.error = RunFailedError(
                f"run {cursor.record.spec.run_id}: loss became {value} at optimizer step "
                f"{cursor.step + 1}; lower the learning rate or enable gradient clipping "
                "(max_grad_norm)"
            )
            continue
        assert cursor.loss is not None
        cursor.loss += loss.detach()
        total = loss if total is None else total + loss
    return total


def _prepare(model: Any, cursors: list[Cursor], pad_id: int) -> tuple[list[Cursor], list[Any], int]:
    """Each run's micro-batch made ready for its loss by its own trainer: the runs still in
    the step, their inputs, and how many model calls were served from a shared pass. GRPO
    generates and scores here (``fused_grpo.prepare_inputs``: each run by its own trainer, the
    model calls served together); a run whose preparation raised drops out with its error."""
    if not any(c.record.spec.trainer_type == "GRPO" for c in cursors):
        inputs = [
            transformers_internals.prepare_inputs(c.record.trainer, c.batches[c.micro])
            for c in cursors
        ]
        return cursors, inputs, 0
    prepared, served = fused_grpo.prepare_inputs(model, cursors, pad_id)
    ready = [(c, x) for c, x in zip(cursors, prepared) if c.error is None]
    return (
        [c for c, _ in ready],
        [x for _, x in ready],
        served.fused_calls + served.multi_generations,
    )


def _dpo_reference(
    model: Any,
    combined: dict[str, Any],
    bounds: list[tuple[int, int]],
    inputs: list[Any],
    trims: list[int],
) -> None:
    """DPO's reference: the base with adapters disabled, once for every run's rows; each run's
    inputs get its reference log-probs (TRL's precomputed-reference path reads them)."""
    with torch.no_grad(), model.disable_adapter():
        ref = model(**combined)
    for (lo, hi), x, trim in zip(bounds, inputs, trims):
        logps = slice_outputs(ref, lo, hi, trim).log_probs.sum(dim=1)
        x["ref_chosen_logps"], x["ref_rejected_logps"] = logps.chunk(2, dim=0)


@contextlib.contextmanager
def _reference_from_inputs(trainer: Any, dpo: bool) -> Iterator[None]:
    """Have a DPO trainer read the reference log-probs from its inputs (TRL's precompute path)."""
    if not dpo:
        yield
        return
    trainer.precompute_ref_logps = True
    try:
        yield
    finally:
        trainer.precompute_ref_logps = False


def _loss_is_scaled(trainer: Any, num_items: Any) -> bool:
    """``Trainer.training_step``'s rule: was the loss already divided by the accumulation window?"""
    if trainer.loss_is_scaled_for_ga is not None:
        return bool(trainer.loss_is_scaled_for_ga)
    return bool(
        (trainer.model_accepts_loss_kwargs and num_items is not None)
        or trainer.compute_loss_func is not None
    )
