"""Multi-adapter generation: several runs' prompts decoded in ONE batched ``generate`` call.

Every run is a LoRA adapter on the same resident base. ``generate_multi`` stacks the rows of all
requests into one batch and calls the model's own ``generate`` (so the KV cache, position ids
from the attention mask, end-of-sequence handling and padding of finished rows are transformers'
own) inside ``actors.engine.lora_kernel.segmented_lora``: at every decoding step each LoRA
layer runs the base once over all rows and adds each request's adapter to its own rows only.

What differs between requests is handled per row, not by splitting the batch:

* ``max_new_tokens``: a stopping criterion finishes each request's rows at its own limit
  (transformers then pads them, as it pads rows that emitted end-of-sequence).
* Sampling settings (``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``min_p``,
  ``repetition_penalty``): one logits processor applies each request's own transformers
  processors to its rows, in the order ``GenerationMixin._get_logits_processor`` builds them,
  and for a sampling request draws its rows' next tokens with ``torch.multinomial`` from the
  request's own ``generator`` (the call ``GenerationMixin._sample`` makes with the global RNG).
  The batch itself decodes greedily, so the drawn token is the one that comes out. A request
  stops drawing once all its rows are finished, so its generator advances exactly as it would
  alone.

Hence a request's output equals ``model.generate`` with its adapter alone: greedy gives the same
tokens; sampling gives the same tokens as ``generate`` seeded with the generator's state (up to
float rounding of the logits, which a batch of different shape sums in another order).
Requests that set anything else (beam search, ``no_repeat_ngram_size``, stop strings...), or whose
end-of-sequence or pad ids differ from the rest, are generated in their own ``generate`` call with
their adapter active (the exact fallback); requests with different special ids form sub-batches.
So is every request on a model whose LoRA layers are not all plain ``lora.Linear`` (a quantized
base): ``segmented_lora`` would not reach them.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import transformers

from actors.engine.algorithms import transformers_internals
from actors.engine.lora_kernel import Segment, segmented_lora

# GenerationConfig fields the batched path honours per request; any other non-default field
# sends the request to its own ``generate`` call.
BATCHABLE_FIELDS = frozenset(
    {
        "max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p",
        "repetition_penalty", "eos_token_id", "pad_token_id", "bos_token_id", "use_cache",
        "transformers_version", "_from_model_config", "output_attentions",
        "output_hidden_states",
    }
)  # fmt: skip


NEUTRAL_SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}
"""Sampling fields at the values that change nothing: set in a greedy config, they keep a
chat model's own sampling defaults (``generation_config.json``) out of it, and transformers'
warning about flags greedy decoding ignores with them."""


@dataclass
class GenRequest:
    """One run's prompts to complete with its adapter."""

    adapter: str
    """PEFT adapter name of the run."""
    input_ids: torch.Tensor
    """``[n, L]`` left-padded prompts."""
    attention_mask: torch.Tensor
    generation_config: transformers.GenerationConfig
    generator: torch.Generator | None = None
    """The run's own RNG stream when sampling (``None``: a fresh unseeded draw from the global
    RNG's current state)."""


def generate_multi(model: Any, requests: list[GenRequest]) -> list[torch.Tensor]:
    """Per request, the generated ids ``[n, L + new]`` as ``model.generate`` would give them with
    that request's adapter alone (see the module docstring)."""
    outputs: list[torch.Tensor | None] = [None] * len(requests)
    batches: dict[tuple[Any, Any], list[int]] = {}
    resolved = []
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_defaults = getattr(base, "generation_config", None)
    defaults_ok = model_defaults is None or batchable(model_defaults, check_length=False)
    defaults_ok = defaults_ok and segments_reach_every_lora_layer(model)
    for i, req in enumerate(requests):
        _check(req, i)
        config = resolve_config(model, req.generation_config)
        resolved.append(config)
        # Judged on what was set (the request's and the model's own generation config), not on
        # the resolved config: that one carries every global default too.
        if defaults_ok and batchable(req.generation_config):
            batches.setdefault((_ids(config.eos_token_id), config.pad_token_id), []).append(i)
        else:
            outputs[i] = generate_alone(model, req)
    for indices in batches.values():
        picked = [(requests[i], resolved[i]) for i in indices]
        for i, out in zip(indices, _generate_batch(model, picked)):
            outputs[i] = out
    return [out for out in outputs if out is not None]


def segments_reach_every_lora_layer(model: Any) -> bool:
    """Whether ``segmented_lora`` patches every LoRA layer of ``model``: it patches PEFT's plain
    ``lora.Linear``. A LoRA layer of another kind (on a bitsandbytes-quantized base: PEFT's
    ``Linear4bit``/``Linear8bitLt``) would apply the active adapter to every row, so such a
    model generates each request alone."""
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.lora.layer import LoraLayer

    return all(isinstance(m, LoraLinear) for m in model.modules() if isinstance(m, LoraLayer))


def resolve_config(
    model: Any, config: transformers.GenerationConfig
) -> transformers.GenerationConfig:
    """``config`` with its unset fields filled as ``generate`` fills them: from the model's own
    generation config, then transformers' global defaults (``top_k=50`` when sampling)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return transformers_internals.resolve_generation_config(base, copy.deepcopy(config))


def batchable(config: transformers.GenerationConfig, check_length: bool = True) -> bool:
    """Whether the batched path honours every setting ``config`` makes (and, with
    ``check_length``, whether it bounds the new tokens by ``max_new_tokens``)."""
    if not set(config.to_diff_dict()) <= BATCHABLE_FIELDS:
        return False
    return not check_length or config.max_new_tokens is not None


def _check(req: GenRequest, index: int) -> None:
    if req.input_ids.dim() != 2 or req.input_ids.shape != req.attention_mask.shape:
        raise ValueError(
            f"requests[{index}] ({req.adapter}): input_ids {tuple(req.input_ids.shape)} and "
            f"attention_mask {tuple(req.attention_mask.shape)} must both be [n, L]"
        )


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (int(value),)


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _global_rng_from(generator: torch.Generator | None) -> Iterator[None]:
    """Run with the global RNG of the generator's device set to the generator's state, and hand
    the advanced state back to the generator (``generate`` samples from the global RNG)."""
    if generator is None:
        yield
        return
    cuda = generator.device.type == "cuda"
    saved = torch.cuda.get_rng_state(generator.device) if cuda else torch.get_rng_state()
    if cuda:
        torch.cuda.set_rng_state(generator.get_state(), generator.device)
    else:
        torch.set_rng_state(generator.get_state())
    try:
        yield
    finally:
        generator.set_state(
            torch.cuda.get_rng_state(generator.device) if cuda else torch.get_rng_state()
        )
        if cuda:
            torch.cuda.set_rng_state(saved, generator.device)
        else:
            torch.set_rng_state(saved)


def generate_alone(model: Any, req: GenRequest) -> torch.Tensor:
    """The exact fallback: the request's own ``generate`` call with its adapter active."""
    device = _device(model)
    previous = model.active_adapter
    model.set_adapter(req.adapter)
    try:
        with _eval_mode(model), _global_rng_from(req.generator):
            return model.generate(
                input_ids=req.input_ids.to(device),
                attention_mask=req.attention_mask.to(device),
                generation_config=req.generation_config,
            )
    finally:
        model.set_adapter(previous)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------- the batched path
@dataclass
class _Rows:
    """Where one request sits in the stacked batch."""

    request: GenRequest
    start: int
    stop: int
    left: int
    """Extra left-padding columns added to reach the batch's prompt length."""
    new_tokens: int
    processors: transformers.LogitsProcessorList
    eos: tuple[int, ...]
    sample: bool

    def finished(self, input_ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
        """Per row of this request: has it emitted end-of-sequence or reached its limit?"""
        generated = input_ids[self.start : self.stop, prompt_len:]
        done = torch.zeros(self.stop - self.start, dtype=torch.bool, device=input_ids.device)
        if generated.shape[1] >= self.new_tokens:
            done[:] = True
        for token in self.eos:
            done |= (generated == token).any(dim=1)
        return done

    def own_columns(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The request's rows without the batch's extra left padding (what it sees alone)."""
        return input_ids[self.start : self.stop, self.left :]


def _processors(config: transformers.GenerationConfig) -> transformers.LogitsProcessorList:
    """The request's processors, in ``GenerationMixin._get_logits_processor``'s order."""
    out = transformers.LogitsProcessorList()
    penalty = config.repetition_penalty
    if penalty is not None and penalty != 1.0:
        out.append(transformers.RepetitionPenaltyLogitsProcessor(penalty=penalty))
    if config.do_sample:
        if config.temperature is not None and config.temperature != 1.0:
            out.append(transformers.TemperatureLogitsWarper(config.temperature))
        if config.top_k is not None and config.top_k != 0:
            out.append(transformers.TopKLogitsWarper(top_k=config.top_k, min_tokens_to_keep=1))
        if config.top_p is not None and config.top_p < 1.0:
            out.append(transformers.TopPLogitsWarper(top_p=config.top_p, min_tokens_to_keep=1))
        if config.min_p is not None:
            out.append(transformers.MinPLogitsWarper(min_p=config.min_p, min_tokens_to_keep=1))
    return out


class _PerRequestLogits(transformers.LogitsProcessor):
    """Applies each request's own processors to its rows; for a sampling request, draws the next
    token from the request's generator and leaves only that token selectable."""

    def __init__(self, rows: list[_Rows], prompt_len: int) -> None:
        self.rows = rows
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = scores.clone()
        for r in self.rows:
            if bool(r.finished(input_ids, self.prompt_len).all()):
                continue  # alone, its generate would have stopped: draw nothing more
            own = r.processors(r.own_columns(input_ids), scores[r.start : r.stop])
            if r.sample:
                probs = torch.nn.functional.softmax(own, dim=-1)
                picked = torch.multinomial(probs, 1, generator=r.request.generator)
                own = torch.full_like(own, -float("inf")).scatter_(1, picked, 0.0)
            out[r.start : r.stop] = own
        return out


class _PerRequestLimit(transformers.StoppingCriteria):
    """Finishes each request's rows at the request's own ``max_new_tokens``."""

    def __init__(self, rows: list[_Rows], prompt_len: int) -> None:
        self.rows = rows
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        new = input_ids.shape[1] - self.prompt_len
        for r in self.rows:
            if new >= r.new_tokens:
                done[r.start : r.stop] = True
        return done


def _generate_batch(
    model: Any, picked: list[tuple[GenRequest, transformers.GenerationConfig]]
) -> list[torch.Tensor]:
    device = _device(model)
    requests = [req for req, _ in picked]
    first = picked[0][1]
    # generate pads finished rows with pad_token_id, or the first eos id when there is none.
    pad = first.pad_token_id
    if pad is None:
        pad = (_ids(first.eos_token_id) or (0,))[0]
    prompt_len = max(int(r.input_ids.shape[1]) for r in requests)
    ids, masks, rows, start = [], [], [], 0
    for req, resolved in picked:
        left = prompt_len - int(req.input_ids.shape[1])
        ids.append(torch.nn.functional.pad(req.input_ids.to(device), (left, 0), value=pad))
        masks.append(torch.nn.functional.pad(req.attention_mask.to(device), (left, 0), value=0))
        n = int(req.input_ids.shape[0])
        rows.append(
            _Rows(
                request=req, start=start, stop=start + n, left=left,
                new_tokens=int(resolved.max_new_tokens),
                processors=_processors(resolved),
                eos=_ids(resolved.eos_token_id),
                sample=bool(resolved.do_sample),
            )
        )  # fmt: skip
        start += n
    config = transformers.GenerationConfig(
        max_new_tokens=max(r.new_tokens for r in rows),
        do_sample=False,
        **NEUTRAL_SAMPLING,
        eos_token_id=first.eos_token_id,
        pad_token_id=pad,
        bos_token_id=first.bos_token_id,
        repetition_penalty=1.0,  # each request's own penalty is applied to its rows alone
    )
    segments = [Segment(r.request.adapter, r.start, r.stop) for r in rows]
    with _eval_mode(model), segmented_lora(model, segments):
        out = model.generate(
            input_ids=torch.cat(ids),
            attention_mask=torch.cat(masks),
            generation_config=config,
            logits_processor=transformers.LogitsProcessorList(
                [_PerRequestLogits(rows, prompt_len)]
            ),
            stopping_criteria=transformers.StoppingCriteriaList(
                [_PerRequestLimit(rows, prompt_len)]
            ),
        )
    return [_trim(out, r, prompt_len) for r in rows]


def _trim(out: torch.Tensor, r: _Rows, prompt_len: int) -> torch.Tensor:
    """The request's rows and columns: its own prompt width, and as many new tokens as its own
    ``generate`` would have run (until its last row finished)."""
    generated = out[r.start : r.stop, prompt_len:]
    steps = min(generated.shape[1], r.new_tokens)
    if r.eos and generated.shape[1]:
        is_eos = torch.zeros_like(generated, dtype=torch.bool)
        for token in r.eos:
            is_eos |= generated == token
        hit = is_eos.any(dim=1)
        first = torch.where(
            hit, is_eos.int().argmax(dim=1) + 1, torch.full_like(hit, steps, dtype=torch.long)
        )
        steps = min(steps, int(first.max()))
    return out[r.start : r.stop, r.left : prompt_len + steps]
