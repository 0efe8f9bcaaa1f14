"""The segmented-LoRA kernel: several runs' adapters applied to their own rows of one batch.

Everything in rf-ray that shares a pass of the base model between runs goes through the five
names of ``__all__``: the fused training step (``actors.engine.fused``), the lanes' fused
forwards in evaluation and GRPO input preparation (``actors.engine.lockstep``) and batched
multi-adapter generation (``actors.engine.generation``). This module is a leaf: it imports
torch, and PEFT's ``lora.Linear`` inside ``segmented_lora``, nothing of rf-ray (vLLM keeps its
multi-LoRA kernels behind ``vllm/lora/punica_wrapper`` the same way).

The math. A batch of ``N`` rows is cut into segments ``S_k = [start_k, stop_k)``, each owned by
one adapter ``a_k`` (a run). For a LoRA ``Linear`` layer with frozen base weight ``W`` and bias
``b``, and row ``x_i`` of its input, inside ``segmented_lora``::

    y_i = W x_i + b + s_a * B_a A_a d_a(x_i)        for i in S_k, a = a_k

with ``A_a`` (r x in) and ``B_a`` (out x r) the adapter's LoRA matrices, ``s_a`` PEFT's
``scaling[a]`` (``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with rsLoRA) and ``d_a`` the
adapter's inverted dropout: ``d_a(x) = x * m / (1 - p_a)``, ``m ~ Bernoulli(1 - p_a)`` drawn from
the segment's own generator while training, ``d_a(x) = x`` otherwise. The base term ``W x + b``
is ONE matrix product over all ``N`` rows; only the rank-``r`` terms are per segment. A segment
whose adapter is not on the layer gets ``W x_i + b``; with adapters disabled every row does.
So row ``i`` gets exactly what PEFT's own ``lora.Linear.forward`` gives it with ``a_k`` the only
active adapter, and the gradient of a loss over ``S_k``'s rows reaches ``A_a``, ``B_a`` only.

``concat_rows`` builds such a batch from K calls' forward arguments (each ``[n_k, L_k]``): rows
stacked, sequences right-padded to ``L = max L_k`` with neutral values (``pad_id`` for
``input_ids``, -100 for ``labels``, 0 for masks). ``slice_outputs`` hands call ``k`` its rows of
the outputs with the padding columns cut (``[start_k:stop_k, :L_k]``). In a causal model a real
token attends to no later position, so right padding changes a real token's outputs only by
float rounding, from kernels that see another shape.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["NotFusableError", "Segment", "concat_rows", "segmented_lora", "slice_outputs"]


class NotFusableError(Exception):
    """The calls cannot share one batch (their arguments differ in kind); serve them apart."""


def dropout_probability(module: Any) -> float:
    """The drop probability of a LoRA dropout module (0 for ``nn.Identity``)."""
    return float(module.p) if isinstance(module, torch.nn.Dropout) else 0.0


# ---------------------------------------------------------------------------- LoRA row segments
@dataclass
class Segment:
    """Rows ``start:stop`` of the batch belong to adapter ``adapter`` (``S_k`` and ``a_k``)."""

    adapter: str
    start: int
    stop: int
    generator: torch.Generator | None = None
    """The run's dropout stream ``m`` (on the device of the activations); ``None``: the global
    RNG."""


def _segmented_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``lora.Linear.forward`` over a segmented batch: ``y_i`` of the module docstring."""
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
            xs = x[seg.start : seg.stop]
            if getattr(self, "cast_input_dtype_enabled", True) and xs.dtype != down.weight.dtype:
                xs = xs.to(down.weight.dtype)  # PEFT's own input cast, switch included
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
    """Within the block every LoRA ``Linear`` layer of ``model`` computes ``y_i`` of the module
    docstring over ``segments`` (which cover the batch's rows in order). Keep the block open
    through backward: gradient checkpointing recomputes forwards there."""
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
    """Stack K calls' forward kwargs along the batch: each 2-D integer tensor ``[n_k, L_k]``
    right-padded to ``[n_k, max L_k]`` with its neutral value, then concatenated; non-tensor
    arguments must be equal. Returns the combined kwargs and each call's ``L_k``. Raises
    ``NotFusableError`` when the calls pass different keys, different non-tensor values, or a
    tensor that is not 2-D integer."""
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
    """One call's rows ``start:stop`` of a combined forward's outputs, with ``trim`` padding
    columns cut off the end (``trim = max L - L_k``). Scalars (``loss``, ``aux_loss``) mix the
    calls' rows and are dropped."""
    fields = {}
    for key, value in outputs.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            fields[key] = value[start:stop, : value.shape[1] - trim]
    return type(outputs)(**fields)
