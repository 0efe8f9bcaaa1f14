"""Which engine serves a local generator (``RFvLLMModelConfig``): the selector.

Two engines can complete a local pipeline's prompts:

* ``"vllm"``: a vLLM engine (``vllm_generator.VllmGenerator``) where vLLM is installed and a CUDA
  GPU is there: the user's ``model_config`` as vLLM's engine arguments, their
  ``sampling_params`` as vLLM's, an adapter as a ``LoRARequest``;
* ``"transformers"``: the executor's resident model with transformers' ``generate``, every
  pipeline of a shard in one batched call (``generate.generate_group``): everywhere else.

``select`` decides from a ``Platform`` (what this machine has), so the rule is tested without
either. The driver decides once per experiment, when ``run_evals`` builds the pipelines, and
says in one line which engine serves each generator it could not give vLLM (``notes``); the
choice is stored in each pipeline's spec, so a resume, a clone and a restarted executor keep it.
An executor that cannot honour a stored ``"vllm"`` (its process lacks vLLM or the GPU) serves the
pipeline with transformers and logs why (``vllm_generator.usable_here``).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.engine.evals.spec import GeneratorSpec, PipelineSpec
from actors.storage.checkpoint import EXPORTED_CONFIG

VLLM = "vllm"
TRANSFORMERS = "transformers"
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""The ``max_lora_rank`` values vLLM's engine accepts (``LoRAConfig``)."""


@dataclass(frozen=True)
class Platform:
    """What decides the engine: is vLLM importable, is there a CUDA GPU."""

    vllm_installed: bool
    cuda: bool

    @classmethod
    def detect(cls) -> Platform:
        """This process's platform (vLLM is looked up, not imported)."""
        import torch

        return cls(importlib.util.find_spec("vllm") is not None, torch.cuda.is_available())


def select(generator: GeneratorSpec, platform: Platform) -> tuple[str, str | None]:
    """The engine for a local generator on ``platform``, and why it is not vLLM (None when it
    is, or when the generator never asked for it)."""
    if generator.kind != "local" or not generator.wants_vllm:
        return TRANSFORMERS, None
    if not platform.vllm_installed:
        why = "vLLM is not installed"
    elif not platform.cuda:
        why = "there is no CUDA GPU"
    else:
        return VLLM, None
    return TRANSFORMERS, why


def choose(specs: list[PipelineSpec], platform: Platform) -> None:
    """Set each local pipeline's engine (``GeneratorSpec.backend``) and, for vLLM, the LoRA
    settings its engine needs to serve every adapter of the pipelines on the same model."""
    adapters: dict[str, set[str]] = {}
    for spec in specs:
        g = spec.generator
        g.backend, g.backend_note = select(g, platform)
        if g.backend != VLLM:
            continue
        # One vLLM engine per distinct engine arguments, shared by the pipelines that use them.
        spec.model_key = f"{VLLM}:{json.dumps(g.vllm_config, sort_keys=True, default=repr)}"
        if spec.adapter is not None:
            adapters.setdefault(spec.model_key, set()).add(spec.adapter)
    for spec in specs:
        if spec.generator.backend == VLLM:
            spec.generator.vllm_lora = lora_settings(sorted(adapters.get(spec.model_key, ())))


def notes(specs: list[PipelineSpec]) -> list[str]:
    """One line per generator that asked for vLLM and is served by the executor instead."""
    seen: dict[str, str] = {}
    for spec in specs:
        g = spec.generator
        if g.backend_note is not None and g.model_name not in seen:
            seen[g.model_name] = (
                f"RFvLLMModelConfig({g.model_name}): {g.backend_note}, so the executor serves it "
                "with its resident model (transformers generate, every pipeline of a shard in "
                "one batched call)"
            )
    return list(seen.values())


def lora_settings(adapters: list[str]) -> dict[str, Any]:
    """vLLM engine arguments to serve ``adapters`` (PEFT directories): LoRA on, as many
    resident as there are adapters, the smallest allowed ``max_lora_rank`` that holds the
    largest rank. Empty without adapters (LoRA off)."""
    if not adapters:
        return {}
    ranks = [int(json.loads((Path(a) / EXPORTED_CONFIG).read_text())["r"]) for a in adapters]
    rank = next((r for r in LORA_RANKS if r >= max(ranks)), None)
    if rank is None:
        raise ValueError(
            f"adapter rank {max(ranks)} is above vLLM's largest max_lora_rank {LORA_RANKS[-1]}"
        )
    return {"enable_lora": True, "max_loras": len(adapters), "max_lora_rank": rank}


def engine_args(generator: GeneratorSpec) -> dict[str, Any]:
    """``vllm.LLM``'s arguments: the user's ``model_config`` (vLLM engine arguments, as
    RapidFire AI passes them), the LoRA settings, statistics logging off unless asked."""
    return {"disable_log_stats": True, **generator.vllm_config, **generator.vllm_lora}


def sampling_args(sampling: dict[str, Any], seed: int | None, row: int) -> dict[str, Any]:
    """``vllm.SamplingParams``'s arguments for the prompt of eval-set row ``row`` (its position
    in the shuffled eval set): the user's ``sampling_params`` (vLLM's own names, checked by
    ``rf_ray.evals.build``), ``max_tokens`` 16 by default as in vLLM, and with a pipeline seed
    a seed per row, so a row's sample is the same however rows are batched or resumed."""
    args = {"max_tokens": 16, **{k: v for k, v in sampling.items() if k != "seed"}}
    if seed is not None:
        args["seed"] = (int(seed) * 1_000_003 + row) % (2**63 - 1)
    return args


__all__ = [
    "LORA_RANKS",
    "TRANSFORMERS",
    "VLLM",
    "Platform",
    "choose",
    "engine_args",
    "lora_settings",
    "notes",
    "sampling_args",
    "select",
]
