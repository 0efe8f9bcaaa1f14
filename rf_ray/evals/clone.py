"""Clone-modify of an evals pipeline: a new pipeline from a running one's spec with changes.

    experiment.clone_modify(2, {"search_cfg": {"k": 3}, "reranker_cfg": {"top_n": 1}})
    experiment.clone_modify(2, {"sampling_params.temperature": 0.2})

Changes (each merged into the parent's value, then checked as ``run_evals`` checks it):
``search_cfg`` and ``reranker_cfg`` keys (the index is shared, so no rebuild), ``sampling_params``
keys, ``batch_size``, and the functions (``preprocess_fn``, ``postprocess_fn``,
``compute_metrics_fn``, ``accumulate_metrics_fn``). A clone starts at the first shard (cold): a
pipeline has no trained state to carry over.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from actors.engine.evals.spec import PipelineSpec
from policies.errors import ConfigError
from rf_ray.evals.build import FUNCTION_KEYS, check_search, check_settings, generation_settings

CHANGEABLE = ("search_cfg", "reranker_cfg", "sampling_params", "batch_size", *FUNCTION_KEYS)


def _flat_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """``{"search_cfg.k": 3}`` and ``{"search_cfg": {"k": 3}}`` alike, as nested dicts."""
    nested: dict[str, Any] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        elif isinstance(value, dict):
            nested.setdefault(head, {}).update(value)
        else:
            nested[head] = value
    unknown = sorted(set(nested) - set(CHANGEABLE))
    if unknown:
        raise ConfigError(
            f"clone_modify of a pipeline cannot change {unknown}; it changes "
            f"{', '.join(CHANGEABLE)} (to compare other components, run another run_evals)"
        )
    return nested


def modified_pipeline(parent: PipelineSpec, changes: dict[str, Any], run_id: int) -> PipelineSpec:
    """The clone's spec (checked): ``parent`` with ``changes``, a new id, at its first shard."""
    nested = _flat_changes(changes)
    spec = copy.copy(parent)
    spec.run_id, spec.parent_run_id = run_id, parent.run_id
    params = dict(parent.params)
    if "search_cfg" in nested or "reranker_cfg" in nested:
        if parent.rag is None:
            raise ConfigError(f"pipeline {parent.run_id} has no rag spec to change")
        rag = dataclasses.replace(parent.rag)
        search = {"type": rag.search_type, **rag.search_kwargs, **nested.get("search_cfg", {})}
        rag.search_type, rag.search_kwargs = check_search(search, "clone_modify ")
        rag.reranker_kwargs = {**rag.reranker_kwargs, **nested.get("reranker_cfg", {})}
        top_n = rag.reranker_kwargs.get("top_n")
        if isinstance(top_n, int) and top_n > rag.search_kwargs["k"]:
            raise ConfigError(f"clone_modify: reranker top_n={top_n} > search k")
        params.update({f"rag.search.{k}": v for k, v in search.items()})
        params.update({f"rag.reranker.{k}": v for k, v in nested.get("reranker_cfg", {}).items()})
        spec.rag = rag
    if "sampling_params" in nested:
        sampling = {**parent.generator.vllm_sampling, **nested["sampling_params"]}
        generation, seed = generation_settings(sampling, "clone_modify ")
        spec.generator = dataclasses.replace(
            parent.generator, generation=generation, seed=seed, vllm_sampling=sampling
        )
        params.update({f"sampling.{k}": v for k, v in sampling.items()})
    settings = {k: nested[k] for k in ("batch_size", *FUNCTION_KEYS) if k in nested}
    check_settings(settings)
    for key, value in settings.items():
        setattr(spec, key, value)
        params[key] = value if key == "batch_size" else getattr(value, "__qualname__", str(value))
    spec.params = params
    return spec


__all__ = ["CHANGEABLE", "modified_pipeline"]
