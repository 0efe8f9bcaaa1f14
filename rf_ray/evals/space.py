"""Evals config sets as knob templates: what ``RFGridSearch`` / ``RFRandomSearch`` expand.

A config set (``{"vllm_config": RFvLLMModelConfig(...), "batch_size": 8, ...}``) becomes one
``PipelineTemplate`` per choice of generator config (a ``List`` of them, or a plain list, as
RapidFire AI allows) and, within it, the ``KnobTemplate`` machinery of ``rf_ray.knob_template``
enumerates every ``List`` knob in four sections:

    set        the config set's own keys (batch_size, the functions, adapter, ...)
    generator  the generator config's arguments (model_config, sampling_params, ...)
    rag        the RFLangChainRagSpec's arguments (text_splitter, embedding_cfg, ...)
    prompt     the RFPromptManager's arguments

A concrete choice is a ``PipelineConfig`` (``rf_ray.evals.build``), checked whole there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from policies.errors import ConfigError
from rf_ray.evals.build import PipelineConfig, check_pipeline, describe
from rf_ray.evals.configs import (
    GENERATOR_KEYS,
    SET_KEYS,
    GeneratorConfig,
    RFLangChainRagSpec,
    RFPromptManager,
)
from rf_ray.knob_template import KnobTemplate, Slot, get_path, knob_paths, set_path
from rf_ray.knobs import List, is_knob


def is_evals_config(item: Any) -> bool:
    """A RapidFire AI evals config set: a dict holding a generator config."""
    return isinstance(item, dict) and any(k in item for k in GENERATOR_KEYS)


def _copy_dicts(value: Any) -> Any:
    """Dicts copied at every level; any other value (a LangChain object, a function) shared."""
    if isinstance(value, dict):
        return {k: _copy_dicts(v) for k, v in value.items()}
    return value


def _choices(value: Any) -> list[Any]:
    if isinstance(value, List):
        return list(value.values)
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


@dataclass
class PipelineTemplate(KnobTemplate):
    """One generator config (with its rag spec and prompt manager) with its knobs located."""

    generator_cls: type = object
    has_rag: bool = False
    has_prompt: bool = False

    def resolve(self, chosen: dict[Slot, Any]) -> PipelineConfig:
        c = {s: _copy_dicts(v) for s, v in self.sections.items()}
        for (section, keys), value in chosen.items():
            set_path(c[section], keys, value)
        return PipelineConfig(
            generator_cls=self.generator_cls,
            generator=c["generator"],
            rag=c["rag"] if self.has_rag else None,
            prompt=c["prompt"] if self.has_prompt else None,
            settings=c["set"],
        )

    def validate(self, config: PipelineConfig) -> None:
        check_pipeline(config, self.where)

    def key(self, config: PipelineConfig) -> tuple[Any, ...]:
        funcs = [config.settings.get(k) for k in SET_KEYS if k.endswith("_fn")]
        return (json.dumps(describe(config), sort_keys=True, default=repr),
                tuple(id(f) for f in funcs))  # fmt: skip


def pipeline_templates(where: str, config_set: dict[str, Any]) -> list[PipelineTemplate]:
    """One template per generator config (and rag spec / prompt manager choice) of the set."""
    keys = [k for k in GENERATOR_KEYS if k in config_set]
    if len(keys) > 1:
        raise ConfigError(f"{where}config set has {keys}: give one generator key")
    unknown = sorted(set(config_set) - set(SET_KEYS) - set(GENERATOR_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}config set has unknown key(s) {unknown}; its keys are "
            f"{', '.join((*GENERATOR_KEYS, *SET_KEYS))}"
        )
    settings = {k: v for k, v in config_set.items() if k in SET_KEYS and v is not None}
    online = settings.get("online_strategy_kwargs")
    if (isinstance(online, dict) and any(is_knob(v) for v in online.values())) or is_knob(online):
        raise ConfigError(
            f"{where}online_strategy_kwargs={online!r}: a List is not allowed here; the "
            "confidence intervals must be computed alike to be compared"
        )
    templates = []
    generators = _choices(config_set[keys[0]])
    for i, generator in enumerate(generators):
        label = f"{where}{keys[0]}[{i}]." if len(generators) > 1 else f"{where}"
        if not isinstance(generator, GeneratorConfig):
            raise ConfigError(
                f"{label}{keys[0]}={generator!r} must be an RFvLLMModelConfig or "
                "RFAPIModelConfig (or a List of them)"
            )
        templates.extend(_templates_of(label, generator, settings))
    return templates


def _templates_of(
    where: str, generator: GeneratorConfig, settings: dict[str, Any]
) -> list[PipelineTemplate]:
    params = dict(generator.params)
    rags = _choices(params.pop("rag", None))
    prompts = _choices(params.pop("prompt_manager", None))
    templates = []
    for rag in rags:
        for prompt in prompts:
            if rag is not None and not isinstance(rag, RFLangChainRagSpec):
                raise ConfigError(f"{where}rag={rag!r} must be an RFLangChainRagSpec")
            if prompt is not None and not isinstance(prompt, RFPromptManager):
                raise ConfigError(f"{where}prompt_manager={prompt!r} must be an RFPromptManager")
            written = {
                "set": dict(settings),
                "generator": params,
                "rag": dict(rag.params) if rag is not None else {},
                "prompt": dict(prompt.params) if prompt is not None else {},
            }
            for sections in _split_nested(written):
                slots = [(s, p) for s, v in sections.items() for p in knob_paths(v)]
                templates.append(
                    PipelineTemplate(where, sections, slots, type(generator), rag is not None,
                                     prompt is not None)
                )  # fmt: skip
    return templates


def _split_nested(sections: dict[str, dict[str, Any]]) -> list[dict[str, dict[str, Any]]]:
    """One copy of ``sections`` per choice of a ``List`` whose choices hold knobs of their own
    (RapidFire's ``embedding_cfg=List([{"class": ..., "model": List([a, b])}, {...}])``), so
    the inner knobs are expanded too; ``sections`` alone when there is none."""
    for section, values in sections.items():
        for path in knob_paths(values):
            knob = get_path(values, path)
            if not isinstance(knob, List) or not any(
                is_knob(v) or (isinstance(v, dict) and knob_paths(v)) for v in knob.values
            ):
                continue
            out = []
            for choice in knob.values:
                copied = {s: _copy_dicts(v) for s, v in sections.items()}
                set_path(copied[section], path, choice)
                out.extend(_split_nested(copied))
            return out
    return [sections]


__all__ = ["PipelineTemplate", "is_evals_config", "pipeline_templates"]
