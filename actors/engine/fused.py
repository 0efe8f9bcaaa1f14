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

``fusable`` says whether a run can take part. When it cannot (DoRA, a custom loss, gradient
checkpointing with dropout, GRPO with vLLM...), the executor time-slices it.
"""

from __future__ import annotations

import contextlib
import math
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from policies.errors import RunFailedError

FUSABLE_TRAINERS = ("SFT", "DPO", "GRPO")


class NotFusableError(Exception):
    """Raised when a group cannot be trained in one pass; the executor time-slices it instead."""


# ---------------------------------------------------------------------------- eligibility
def fusable(record: Any, model: Any) -> str | None:  # noqa: C901, PLR0911  one return per reason a run cannot be fused
    """``None`` if the run can be trained fused, else the reason it cannot (for logs and docs)."""
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.lora.layer import LoraLayer

    spec, trainer = record.spec, record.trainer
    if spec.trainer_type not in FUSABLE_TRAINERS:
        return f"{spec.trainer_type} is time-sliced"
    if spec.trainer_type == "GRPO":
        from actors.engine import fused_grpo

        reason = fused_grpo.fusable(trainer)
        if reason is not None:
            return reason
    if spec.trainer_type == "SFT":
        if trainer.compute_loss_func is not None or trainer.label_smoother is not None:
            return "a custom loss or label smoothing needs the full logits"
        if getattr(trainer, "aux_loss_enabled", False):
            return "MoE auxiliary loss"
    if spec.trainer_type == "DPO" and (
        trainer.ld_alpha is not None
        or trainer.precompute_ref_logps
        or trainer.ref_model is not None
    ):
        return "DPO with ld_alpha, precomputed or separate reference model"
    if trainer.accelerator.gradient_accumulation_steps != 1:
        return "accelerate-side gradient accumulation"
    name = spec.adapter_name
    # transformers 5 renamed it; the old name warns (FutureWarning) on every call.
    checkpointing = bool(getattr(model, "is_activation_checkpointing", False))
    for module in model.modules():
        if isinstance(module, LoraLayer) and name in module.lora_A:
            if not isinstance(module, LoraLinear):
                return f"LoRA on {type(module).__name__} layers (only Linear layers are fused)"
            if name in module.lora_variant or module.merged:
                return "DoRA or another LoRA variant, or merged weights"
            dropout = module.lora_dropout[name]
            if checkpointing and _dropout_p(dropout) > 0:
                # Recomputation in backward would redraw a run's own dropout masks differently.
                return "gradient checkpointing with LoRA dropout"
    return None


def _dropout_p(module: Any) -> float:
    return float(module.p) if isinstance(module, torch.nn.Dropout) else 0.0


# ---------------------------------------------------------------------------- LoRA row segments
@dataclass
class Segment:
    """Rows ``start:stop`` of the fused batch belong to adapter ``adapter``."""

    adapter: str
    start: int
    stop: int
    generator: torch.Generator | None = None
    """The run's dropout stream (on the device of the activations)."""


def _segmented_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``lora.Linear.forward`` over a fused batch: the base layer once over all rows, then each
    run's adapter over its own rows (PEFT's vanilla-LoRA arithmetic, per segment)."""
    kwargs.pop("adapter_names", None)
    result = self.base_layer(x, *args, **kwargs)
    if self.disable_adapters:
        return result
    out_dtype = result.dtype
    parts = []
    for seg in self._rf_segments:
        rows = result[seg.start : seg.stop]
        if seg.adapter in self.lora_A:
            down = self.lora_A[seg.adapter]
            xs = self._cast_input_dtype(x[seg.start : seg.stop], down.weight.dtype)
            dropout = self.lora_dropout[seg.adapter]
            p = _dropout_p(dropout)
            if p > 0 and dropout.training:
                keep = torch.empty_like(xs).bernoulli_(1 - p, generator=seg.generator)
                xs = xs * keep / (1 - p)
            rows = rows + self.lora_B[seg.adapter](down(xs)) * self.scaling[seg.adapter]
        parts.append(rows)
    return torch.cat(parts, dim=0).to(out_dtype)


@contextlib.contextmanager
def segmented_lora(model: Any, segments: list[Segment]) -> Iterator[None]:
    """Within the block every LoRA Linear layer of ``model`` applies each segment's adapter to
    that segment's rows. Keep it open through backward (gradient checkpointing recomputes)."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    patched = [m for m in model.modules() if isinstance(m, LoraLinear)]
    for module in patched:
        module._rf_segments = segments
        module.forward = types.MethodType(_segmented_forward, module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward
            del module._rf_segments


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


_PAD_VALUES = {"labels": -100, "attention_mask": 0, "completion_mask": 0}


def concat_rows(calls: list[dict[str, Any]], pad_id: int) -> tuple[dict[str, Any], list[int]]:
    """Concatenate several runs' forward kwargs along the batch; right-pad 2-D integer tensors to
    the longest sequence. Returns the combined kwargs and each run's sequence length."""
    keys = set(calls[0])
    if any(set(c) != keys for c in calls):
        raise NotFusableError("the runs' forward arguments differ")
    lengths = [int(c["input_ids"].shape[1]) for c in calls]
    longest = max(lengths)
    combined: dict[str, Any] = {}
    for key in sorted(keys):
        values = [c[key] for c in calls]
        if not isinstance(values[0], torch.Tensor):
            if any(v != values[0] for v in values):
                raise NotFusableError(f"the runs pass different {key!r}")
            combined[key] = values[0]
            continue
        if any(v.dim() != 2 or v.is_floating_point() for v in values):
            raise NotFusableError(f"forward argument {key!r} is not a 2-D integer tensor")
        pad = _PAD_VALUES.get(key, pad_id if key == "input_ids" else 0)
        combined[key] = torch.cat(
            [torch.nn.functional.pad(v, (0, longest - v.shape[1]), value=pad) for v in values]
        )
    return combined, lengths


def slice_outputs(outputs: Any, start: int, stop: int, trim: int) -> Any:
    """One run's rows of a fused forward's outputs, with the padding columns cut off. The fused
    scalars (``loss``, ``aux_loss``) mix runs and are dropped."""
    fields = {}
    for key, value in outputs.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            fields[key] = value[start:stop, : value.shape[1] - trim]
    return type(outputs)(**fields)


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
        from actors.engine import algorithms

        trainer = self.record.trainer
        assert self.loss is not None
        loss_value = float(self.loss)
        trainer.accelerator.gradient_state._set_sync_gradients(True)
        max_norm = trainer.args.max_grad_norm
        grad_norm = trainer.accelerator.clip_grad_norm_(
            self.params, max_norm if max_norm and max_norm > 0 else float("inf")
        )
        trainer.optimizer.step()
        learning_rate = trainer._get_learning_rate()
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
    cursor.num_items = trainer._get_num_items_in_batch(cursor.batches, trainer.args.device)
    cursor.tokens = sum(
        int(b["attention_mask"].sum()) for b in cursor.batches if "attention_mask" in b
    )
    cursor.tokens_seen = trainer.state.num_input_tokens_seen
    cursor.micro = 0
    cursor.loss = torch.zeros((), device=trainer.args.device)


def fused_micro_step(  # noqa: C901  the step order (capture, fused forward, losses, backward) reads top to bottom
    model: Any, cursors: list[Cursor], pad_id: int
) -> int:
    """One micro-batch of each run in ``cursors``: one fused forward (and, for DPO, one fused
    reference forward), each run's own TRL loss, one backward. Returns how many of the runs'
    input-preparation model calls (GRPO: generation, old and reference log-probs) were served
    from a shared pass."""
    started = time.perf_counter()
    shared = 0
    if any(c.record.spec.trainer_type == "GRPO" for c in cursors):
        from actors.engine import fused_grpo

        # Generation and scoring, each run by its own trainer, model calls served together.
        prepared, served = fused_grpo.prepare_inputs(model, cursors, pad_id)
        shared = served.fused_calls + served.multi_generations
        ready = [(c, x) for c, x in zip(cursors, prepared) if c.error is None]
        if not ready:
            return shared
        cursors = [c for c, _ in ready]
        inputs = [x for _, x in ready]
    else:
        inputs = [c.record.trainer._prepare_inputs(c.batches[c.micro]) for c in cursors]
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
        # DPO's reference: the base with adapters disabled, once for every run's rows.
        with torch.no_grad(), model.disable_adapter():
            ref = model(**combined)
        for (lo, hi), x, length in zip(bounds, inputs, lengths):
            logps = slice_outputs(ref, lo, hi, longest - length).log_probs.sum(dim=1)
            x["ref_chosen_logps"], x["ref_rejected_logps"] = logps.chunk(2, dim=0)

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
        total = None
        for trainer, cursor, x, (lo, hi), length in zip(trainers, cursors, inputs, bounds, lengths):
            replay = _ReplayingModel(slice_outputs(outputs, lo, hi, longest - length))
            with _reference_from_inputs(trainer), trainer.compute_loss_context_manager():
                loss = trainer.compute_loss(replay, x, num_items_in_batch=cursor.num_items)
            if not _loss_is_scaled(trainer, cursor.num_items):
                loss = loss / trainer.current_gradient_accumulation_steps
            value = float(loss.detach())
            if not math.isfinite(value):
                # This run fails alone; the others' losses still train them.
                cursor.error = RunFailedError(
                    f"run {cursor.record.spec.run_id}: loss became {value} at optimizer step "
                    f"{cursor.step + 1}; lower the learning rate or enable gradient clipping "
                    "(max_grad_norm)"
                )
                continue
            assert cursor.loss is not None
            cursor.loss += loss.detach()
            total = loss if total is None else total + loss
        if total is not None:
            total.backward()
    seconds = (time.perf_counter() - started) / len(cursors)
    for cursor, trainer in zip(cursors, trainers):
        if cursor.record.spec.trainer_type == "GRPO":
            from actors.engine import fused_grpo

            fused_grpo.after_micro_step(trainer, seconds)
    return shared


@contextlib.contextmanager
def _reference_from_inputs(trainer: Any) -> Iterator[None]:
    """Have a DPO trainer read the reference log-probs from its inputs (TRL's precompute path)."""
    if not hasattr(trainer, "precompute_ref_logps"):
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
