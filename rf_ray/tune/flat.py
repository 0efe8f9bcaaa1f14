"""Flat knob names for Tune: ``{"learning_rate": 1e-4, "lora.r": 8}`` <-> a ``RunConfig``.

Tune's search spaces and searchers speak in flat dicts; these functions map them onto an rf-ray
run and back, with the same knob names as ``clone_modify`` (``rf_ray.ops.modified``).

A run also differs from another in what is not a value: its trainer and its functions
(``formatting_func``, ``compute_metrics``, ``reward_funcs``, ``eval_metrics_fn``). In a flat dict
these are *labels*: the trainer type, and one stable name per function (``FunctionNames``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from policies.errors import ConfigError, UnknownKnobError
from rf_ray import ops
from rf_ray.configs import LORA_SHORTHAND, RFModelConfig
from rf_ray.search import RFGridSearch, validate_run
from rf_ray.specs import RunConfig

_SECTIONS = ("lora.", "model_kwargs.", "tokenizer_kwargs.", "generation_config.")
FUNCTION_FIELDS = ("formatting_func", "compute_metrics", "reward_funcs")
LABELS = ("trainer_type", *FUNCTION_FIELDS, "eval_metrics_fn")
"""Flat keys that name what a run is rather than set a value: they pick a run, never change
one."""


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


# ---------------------------------------------------------------------------- labels
class FunctionNames:
    """One stable, distinct name per function of a set of runs, in the order first met:
    the function's ``__qualname__`` (``<locals>`` and angle brackets dropped), with ``#2``,
    ``#3``... after it when different functions share it (two lambdas)."""

    def __init__(self, runs: Sequence[RunConfig]) -> None:
        self.by_id: dict[int, str] = {}
        self.keep: list[Any] = []  # ids stay unique while the functions live
        for run in runs:
            for fn in _functions(run):
                if id(fn) not in self.by_id:
                    self._add(fn)

    def _add(self, fn: Any) -> None:
        base = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        base = base.replace("<locals>.", "").replace("<", "").replace(">", "")
        taken = set(self.by_id.values())
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}#{n}"
        self.by_id[id(fn)] = name
        self.keep.append(fn)

    def name(self, fn: Any) -> str:
        return self.by_id[id(fn)]


def _functions(run: RunConfig) -> list[Any]:
    fns = [run.formatting_func, run.compute_metrics, *(run.reward_funcs or [])]
    if run.generation_eval is not None:
        fns.append(run.generation_eval.metrics_fn)
    return [f for f in fns if f is not None]


def labels(run: RunConfig, names: FunctionNames) -> dict[str, Any]:
    """The run's labels (see module doc): ``trainer_type`` and a name per function it has."""
    out: dict[str, Any] = {"trainer_type": run.trainer_type}
    if run.formatting_func is not None:
        out["formatting_func"] = names.name(run.formatting_func)
    if run.compute_metrics is not None:
        out["compute_metrics"] = names.name(run.compute_metrics)
    if run.reward_funcs is not None:
        out["reward_funcs"] = [names.name(f) for f in run.reward_funcs]
    if run.generation_eval is not None:
        out["eval_metrics_fn"] = names.name(run.generation_eval.metrics_fn)
    return out


def identity(run: RunConfig, names: FunctionNames) -> dict[str, Any]:
    """Everything that tells ``run`` apart, flat: its knobs (``flat_knobs``) and labels."""
    return {**flat_knobs(run), **labels(run, names)}
