"""Local pipelines served by vLLM: one engine per distinct engine arguments, LoRA per request.

Where ``serving.select`` chose vLLM (it is installed and a CUDA GPU is there), the executor does
not load the model with ``create_model_fn``: it builds one ``vllm.LLM`` from the user's
``model_config`` (vLLM's engine arguments, as RapidFire AI passes them) plus the LoRA settings
the experiment's adapters need, and hands it every pipeline's prompts of a batch in ONE
``LLM.generate`` call, which vLLM schedules with continuous batching. Each prompt carries its
pipeline's ``SamplingParams`` (vLLM's own names; with a pipeline seed, a seed per eval-set row,
``serving.sampling_args``) and, for a pipeline that names an adapter, its ``LoRARequest`` (one
integer id per adapter directory), so pipelines with and without adapters share the batch.
Chat prompts are rendered with the tokenizer's chat template, as on the transformers path.

Not exercised by the CPU test suite (no vLLM, no GPU there); ``serving``'s rules that build its
arguments are.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

from actors.engine.evals.generate import render
from actors.engine.evals.serving import engine_args, sampling_args
from actors.engine.evals.spec import GeneratorSpec

logger = logging.getLogger(__name__)


def usable_here() -> str | None:
    """None if this process can run vLLM, else why not (the executor then serves a pipeline
    the driver gave vLLM with transformers)."""
    import torch

    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed in the executor's environment"
    if not torch.cuda.is_available():
        return "the executor has no CUDA GPU"
    return None


@dataclass
class VllmRequest:
    """One pipeline's prompts of a batch."""

    prompts: list[Any]
    sampling: dict[str, Any]
    """The pipeline's ``sampling_params``."""
    seed: int | None
    rows: list[int]
    """Each prompt's position in the shuffled eval set (its seed's offset)."""
    adapter: str | None = None
    """A PEFT adapter directory to generate with."""
    new_tokens: int = 0
    """Set by ``generate``: tokens generated for this request."""


class VllmGenerator:
    """One ``vllm.LLM`` and the adapters it has been asked for."""

    def __init__(self, generator: GeneratorSpec) -> None:
        from vllm import LLM

        args = engine_args(generator)
        logger.info("starting a vLLM engine for %s (%s)", generator.model_name, sorted(args))
        self.llm = LLM(**args)
        self.tokenizer = self.llm.get_tokenizer()
        self._lora_ids: dict[str, int] = {}

    def _lora(self, path: str | None) -> Any:
        if path is None:
            return None
        from vllm.lora.request import LoRARequest

        lora_id = self._lora_ids.setdefault(path, len(self._lora_ids) + 1)  # ids start at 1
        return LoRARequest(f"adapter_{lora_id}", lora_id, path)

    def generate(self, requests: list[VllmRequest]) -> list[list[str]]:
        """Per request, the completions of its prompts, all requests in one engine call."""
        from vllm import SamplingParams

        prompts, params, loras = [], [], []
        for req in requests:
            lora = self._lora(req.adapter)
            for prompt, row in zip(req.prompts, req.rows):
                prompts.append(render(self.tokenizer, prompt))
                params.append(SamplingParams(**sampling_args(req.sampling, req.seed, row)))
                loras.append(lora)
        any_lora = any(x is not None for x in loras)
        outputs = self.llm.generate(
            prompts, sampling_params=params, lora_request=loras if any_lora else None,
            use_tqdm=False,
        )  # fmt: skip
        texts: list[list[str]] = []
        at = 0
        for req in requests:
            done = outputs[at : at + len(req.prompts)]
            at += len(req.prompts)
            req.new_tokens = sum(len(o.outputs[0].token_ids) for o in done)
            texts.append([o.outputs[0].text.strip() for o in done])
        return texts


__all__ = ["VllmGenerator", "VllmRequest", "usable_here"]
