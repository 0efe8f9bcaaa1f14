"""The segmented-LoRA kernel: several adapters applied to their own rows of one batch.

Leaf module: it imports torch (and PEFT's LoRA layer inside functions) and nothing of rf-ray.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


class NotFusableError(Exception):
    """Raised when a group cannot be trained in one pass; the executor time-slices it instead."""


def dropout_probability(module: Any) -> float:
    """The drop probability of a LoRA dropout module (0 for ``nn.Identity``)."""
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
            p = dropout_probability(dropout)
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
