"""Which fields a config may set and which values they take, checked as the user writes them.

Field names are checked against the real classes (``trl.SFTConfig`` ... and ``peft.LoraConfig``,
read with ``dataclasses.fields``), so a typo names the closest real field; the few fields whose
values rf-ray must know before TRL sees them (learning rate, batch sizes, LoRA rank, ...) have a
rule here. ``rf_ray.compat`` says which TRL fields rf-ray accepts but ignores or refuses, and
``rf_ray.legacy`` which older names it renames.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Callable
from typing import Any

from policies.errors import ConfigError, UnknownKnobError
from policies.redact import shown
from rf_ray.compat import IGNORED_TRAINER_FIELDS, REFUSED_TRAINER_FIELDS, RETIRED_TRAINER_FIELDS
from rf_ray.knobs import List, Range, is_number
from rf_ray.legacy import is_legacy_trainer_field

TRAINER_TYPES = ("SFT", "DPO", "GRPO")

# Shorthand LoRA fields a trainer config accepts (the article's `RFSFTConfig(lora_rank=64)`),
# mapped to their peft.LoraConfig names.
LORA_SHORTHAND = {
    "lora_rank": "r",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "target_modules": "target_modules",
}


@dataclasses.dataclass(frozen=True)
class _Rule:
    check: Callable[[Any], bool]
    must: str
    integer: bool = False


_POSITIVE = _Rule(lambda v: is_number(v) and v > 0, "a number > 0")
_COUNT = _Rule(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
               "an integer >= 1", integer=True)  # fmt: skip

TRAINER_RULES: dict[str, _Rule] = {
    "learning_rate": _Rule(_POSITIVE.check, "a number > 0 (e.g. 2e-4)"),
    "per_device_train_batch_size": _COUNT,
    "gradient_accumulation_steps": _COUNT,
    "num_train_epochs": _POSITIVE,
    # rf-ray reads logging_steps as a step count (HF's ratio form, a float < 1, is not taken).
    "logging_steps": _Rule(
        _COUNT.check,
        "an integer >= 1 (a step count; rf-ray does not take the ratio form)",
        integer=True,
    ),
    "eval_steps": _Rule(
        _COUNT.check,
        "an integer >= 1 (a step count; rf-ray does not take the ratio form)",
        integer=True,
    ),
}
LORA_RULES: dict[str, _Rule] = {
    "r": _Rule(_COUNT.check, "an integer > 0 (e.g. 8)", integer=True),
    "lora_alpha": _POSITIVE,
    "lora_dropout": _Rule(lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
}


def _bad_value(path: str, value: Any, must: str) -> ConfigError:
    field = path.rsplit(".", 1)[-1]
    hint = ""
    if isinstance(value, (list, tuple)):
        hint = f" To search over several values, wrap them in List({list(value)!r})."
    return ConfigError(f"{path}={shown(path, value)} is invalid: {field} must be {must}.{hint}")


def check_value(path: str, value: Any, rule: _Rule | None) -> None:
    """Check a concrete value, each value of a List, or both ends of a Range against ``rule``."""
    if rule is None:
        return
    if isinstance(value, List):
        for v in value.values:
            if not rule.check(v):
                raise _bad_value(path, v, rule.must)
    elif isinstance(value, Range):
        if rule.integer and value.dtype is not int:
            raise ConfigError(
                f"{path}={shown(path, value)} is invalid: {path.rsplit('.', 1)[-1]} is an integer; "
                f"use Range({value.low!r}, {value.high!r}, dtype=int)"
            )
        for end in (value.low, value.high):
            if not rule.check(end):
                raise _bad_value(path, value, f"{rule.must} at both ends of the Range")
    elif not rule.check(value):
        raise _bad_value(path, value, rule.must)


@functools.cache
def init_fields(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls) if f.init)


def _unknown(
    name: str, path: str, valid: frozenset[str], target: str, extra: str = ""
) -> Exception:
    close = difflib.get_close_matches(name, sorted(valid), n=3)
    did_you_mean = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return UnknownKnobError(
        f"{path}: {name!r} is not a field of {target}.{did_you_mean}{extra} "
        f"Check the spelling against the {target} documentation."
    )


@functools.cache
def trl_config_class(trainer_type: str) -> type:
    """The TRL config class for "SFT", "DPO" or "GRPO" (imported lazily: TRL is slow to load)."""
    import trl

    return {"SFT": trl.SFTConfig, "DPO": trl.DPOConfig, "GRPO": trl.GRPOConfig}[trainer_type]


def _lora_fields() -> frozenset[str]:
    import peft

    return init_fields(peft.LoraConfig)


def check_trainer_field(trainer_type: str, name: str, path: str) -> None:
    """Raise unless ``name`` is a TRL config field for ``trainer_type`` that users may set
    (fields in ``IGNORED_TRAINER_FIELDS`` are accepted; ``REFUSED_TRAINER_FIELDS`` are not)."""
    if name in REFUSED_TRAINER_FIELDS:
        raise ConfigError(f"{path}: {name}= is not supported: {REFUSED_TRAINER_FIELDS[name]}.")
    if name in IGNORED_TRAINER_FIELDS:
        return  # accepted whether or not this TRL release still has it; never passed to TRL
    cls = trl_config_class(trainer_type)
    if name not in init_fields(cls) and name in RETIRED_TRAINER_FIELDS:
        return  # an older TRL's field: ignored, with a warning (rf_ray.compat)
    if name not in init_fields(cls) and is_legacy_trainer_field(name):
        return  # an older release's name: renamed, with a warning (rf_ray.legacy)
    if name not in init_fields(cls):
        extra = ""
        if name in _lora_fields():
            extra = f" {name!r} is a LoRA field: set it in RFLoraConfig({name}=...)."
        raise _unknown(name, path, init_fields(cls), f"trl.{cls.__name__}", extra)


def check_lora_field(name: str, path: str) -> None:
    """Raise unless ``name`` is a peft.LoraConfig field."""
    if name not in _lora_fields():
        raise _unknown(name, path, _lora_fields(), "peft.LoraConfig")


def check_kwargs_dict(field: str, value: Any) -> dict[str, Any]:
    """``value`` as a dict with str keys (``{}`` for None); ``TypeError`` naming ``field``."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"{field} must be a dict with str keys or None, got {value!r}")
    return dict(value)


def is_callable_list(value: Any) -> bool:
    """A non-empty list or tuple of callables (GRPO's ``reward_funcs``)."""
    return isinstance(value, (list, tuple)) and bool(value) and all(callable(f) for f in value)


__all__ = [
    "LORA_RULES",
    "LORA_SHORTHAND",
    "TRAINER_RULES",
    "TRAINER_TYPES",
    "check_kwargs_dict",
    "check_lora_field",
    "check_trainer_field",
    "check_value",
    "init_fields",
    "is_callable_list",
    "trl_config_class",
]
