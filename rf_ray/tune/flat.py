"""Flat knob names for Tune: ``{"learning_rate": 1e-4, "lora.r": 8}`` <-> a ``RunConfig``.

Tune's search spaces and searchers speak in flat dicts; these functions map them onto an rf-ray
run and back, with the same knob names as ``clone_modify`` (``rf_ray.ops.modified``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from policies.errors import ConfigError, UnknownKnobError
from rf_ray import ops
from rf_ray.configs import LORA_SHORTHAND, RFModelConfig
from rf_ray.search import RFGridSearch, validate_run
from rf_ray.specs import RunConfig

_SECTIONS = ("lora.", "model_kwargs.", "tokenizer_kwargs.", "generation_config.")


# ---------------------------------------------------------------------------- flat <-> RunConfig
def plain(value: Any) -> Any:
    """NumPy scalars (Tune/Optuna may hand them out) as Python numbers."""
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (list, dict)):
        with contextlib.suppress(TypeError, ValueError):
            return value.item()
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return value


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"lora": {"r": 8}, "learning_rate": 1e-4}`` -> ``{"lora.r": 8, "learning_rate": 1e-4}``
    (only the sections above nest; any other dict value is a value)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str):
            raise ConfigError(f"config keys must be str, got {key!r}")
        if isinstance(value, Mapping) and f"{key}." in _SECTIONS and not prefix:
            out.update(flatten(value, f"{key}."))
        else:
            out[prefix + key] = plain(value)
    return out


def flat_knobs(run: RunConfig) -> dict[str, Any]:
    """A run's concrete knobs, flat, with their real values (``lora.r``, ``learning_rate``)."""
    out: dict[str, Any] = {"model_name": run.model_name}
    out.update(run.training_args)
    for section in _SECTIONS:
        values = getattr(run, section[:-1]) or {}
        out.update({section + k: v for k, v in values.items()})
    return out


def apply_flat(run: RunConfig, flat: Mapping[str, Any]) -> RunConfig:
    """``run`` with the flat knob values of ``flat`` set; validated (TRL and PEFT build it).

    Keys: TRL field names, LoRA shorthand (``lora_rank``) or ``lora.<field>``,
    ``model_kwargs.<kw>``, ``tokenizer_kwargs.<kw>``, ``generation_config.<kw>``, ``model_name``.
    Raises ``UnknownKnobError`` naming a key that is none of these.
    """
    import dataclasses

    changes = flatten(dict(flat))
    fields: dict[str, Any] = {}
    if "model_name" in changes:
        fields["model_name"] = changes.pop("model_name")
    for section in ("tokenizer_kwargs.", "generation_config."):
        picked = {k: v for k, v in changes.items() if k.startswith(section)}
        if picked:
            base = dict(getattr(run, section[:-1]) or {})
            base.update({k.removeprefix(section): v for k, v in picked.items()})
            fields[section[:-1]] = base
            for k in picked:
                changes.pop(k)
    if fields:
        run = dataclasses.replace(run, **fields)
    if changes:
        try:
            run = ops.modified(run, changes)
        except UnknownKnobError as e:
            bad = [k for k in changes if f"{k!r}" in str(e) or f"[{k!r}]" in str(e)]
            name = bad[0] if bad else "?"
            raise UnknownKnobError(
                f"config key {name!r} is not an rf-ray knob: {e} Keys are TRL field names "
                f"(learning_rate), LoRA shorthand ({', '.join(LORA_SHORTHAND)}) or lora.<field>, "
                "model_kwargs.<kw>, tokenizer_kwargs.<kw>, generation_config.<kw>, model_name."
            ) from None
    validate_run(run)
    return run


def concrete(base: Any) -> RunConfig:
    """The one run of a config without knobs (an RFModelConfig or a RunConfig)."""
    if isinstance(base, RunConfig):
        validate_run(base)
        return base
    if not isinstance(base, RFModelConfig):
        raise ConfigError(f"base must be an RFModelConfig, got {type(base).__name__}")
    runs = RFGridSearch(base).expand()
    if len(runs) != 1:
        raise ConfigError(
            f"base expands to {len(runs)} runs; give a base without List/Range knobs and put "
            "the knobs to tune in the Tune search space"
        )
    return runs[0]
