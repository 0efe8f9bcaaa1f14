"""What a user writes to describe runs, and the plain per-run config the engine consumes.

A user writes knob spaces in the RapidFire AI style::

    RFModelConfig(
        model_name="tiny-llama",
        peft_config=RFLoraConfig(r=List([8, 16]), lora_alpha=16),
        training_args=RFSFTConfig(learning_rate=List([1e-4, 2e-4]), max_length=128),
    )

``List`` is a choice among values, ``Range`` a numeric interval (random search only). Plain
Python lists inside a config are literal values (``target_modules=["q_proj", "v_proj"]``).
``rf_ray.search`` expands such a space into ``RunConfig`` objects, one per run, with no knobs
left; ``build_trl_config`` and ``build_lora_config`` turn a ``RunConfig`` into the TRL and PEFT
objects. Every check runs on construction, so a bad value fails before any actor starts.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import functools
import json
import math
import random
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from policies.errors import ConfigError, UnknownKnobError
from rf_ray.compat import (
    IGNORED_TRAINER_FIELDS,
    REFUSED_TRAINER_FIELDS,
    RETIRED_TRAINER_FIELDS,
    IgnoredFieldWarning,
    forwarded_reporters,
    rapidfire_fields,
)

TRAINER_TYPES = ("SFT", "DPO", "GRPO")

# Shorthand LoRA fields a trainer config accepts (the article's `RFSFTConfig(lora_rank=64)`),
# mapped to their peft.LoraConfig names.
LORA_SHORTHAND = {
    "lora_rank": "r",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "target_modules": "target_modules",
}

# Set when a search names no model (the article's short form): the engine's create_model_fn
# decides which model that is.
UNNAMED_MODEL = ""


# --------------------------------------------------------------------------- knobs


class List:
    """A choice knob: grid search tries every value, random search draws one uniformly."""

    def __init__(self, values: Sequence[Any]) -> None:
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ConfigError(
                f"List(values={values!r}) needs a list or tuple of values, e.g. List([1e-4, 2e-4])"
            )
        if not values:
            raise ConfigError("List([]) is empty: give it at least one value, e.g. List([1e-4])")
        for v in values:
            if isinstance(v, (List, Range)):
                raise ConfigError(
                    f"List values cannot be knobs (got {v!r}); flatten them into one List"
                )
        self.values: tuple[Any, ...] = tuple(values)

    def __repr__(self) -> str:
        return f"List({list(self.values)!r})"


class Range:
    """A numeric interval knob, valid only under random search (and ``RFOptuna``).

    ``low`` and ``high`` are both included. With ``log=True`` values are drawn log-uniformly,
    which is what learning rates usually want; with ``step`` they are ``low + k * step``.
    ``dtype`` is ``int`` or ``float`` (or RapidFire's ``"int"`` / ``"float"``); left out, it is
    ``int`` when both bounds are ints, as in RapidFire AI (``Range(8, 64)`` draws ranks).
    """

    def __init__(
        self,
        low: float,
        high: float,
        log: bool = False,
        dtype: type | str | None = None,
        step: float | None = None,
    ) -> None:
        if dtype is None:
            ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high))
            dtype = int if ints else float
        dtype = {"int": int, "float": float}.get(dtype, dtype) if isinstance(dtype, str) else dtype
        if dtype not in (int, float):
            raise ConfigError(f"Range(dtype={dtype!r}) must be int or float ('int' or 'float')")
        for name, v in (("low", low), ("high", high)):
            if not _is_number(v) or (dtype is int and v != int(v)):
                kind = "an integer" if dtype is int else "a finite number"
                raise ConfigError(f"Range({name}={v!r}) must be {kind}")
        if low > high or (dtype is float and low == high):
            rel = "<=" if dtype is int else "<"
            raise ConfigError(f"Range(low={low!r}, high={high!r}) needs low {rel} high")
        if log and low <= 0:
            raise ConfigError(f"Range(low={low!r}, log=True) needs low > 0; raise low or drop log")
        if step is not None and (not _is_number(step) or step <= 0 or log):
            raise ConfigError(
                f"Range(step={step!r}) must be a number > 0, and cannot be used with log=True"
            )
        self.low = dtype(low)
        self.high = dtype(high)
        self.log = log
        self.dtype = dtype
        self.step = step

    def sample(self, rng: random.Random) -> int | float:
        """Draw one value in [low, high] from ``rng`` (log-uniformly when ``log``)."""
        if self.step is not None:
            k = rng.randint(0, math.floor((self.high - self.low) / self.step + 1e-9))
            return self.dtype(min(self.low + k * self.step, self.high))
        if self.dtype is int and not self.log:
            return rng.randint(int(self.low), int(self.high))
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        if self.dtype is int:
            value = round(value)
        # exp(log(x)) can land a hair outside [low, high]; clamp so the bounds hold exactly.
        return self.dtype(min(max(value, self.low), self.high))

    def __repr__(self) -> str:
        step = "" if self.step is None else f", step={self.step!r}"
        return (
            f"Range({self.low!r}, {self.high!r}, log={self.log}, dtype={self.dtype.__name__}{step})"
        )


def is_knob(value: Any) -> bool:
    """True for a ``List`` or ``Range``, the only values a search expands."""
    return isinstance(value, (List, Range))


# --------------------------------------------------------------------------- value rules


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclasses.dataclass(frozen=True)
class _Rule:
    check: Callable[[Any], bool]
    must: str
    integer: bool = False


_POSITIVE = _Rule(lambda v: _is_number(v) and v > 0, "a number > 0")
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
    "lora_dropout": _Rule(lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
}


def _bad_value(path: str, value: Any, must: str) -> ConfigError:
    field = path.rsplit(".", 1)[-1]
    hint = ""
    if isinstance(value, (list, tuple)):
        hint = f" To search over several values, wrap them in List({list(value)!r})."
    return ConfigError(f"{path}={value!r} is invalid: {field} must be {must}.{hint}")


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
                f"{path}={value!r} is invalid: {path.rsplit('.', 1)[-1]} is an integer; "
                f"use Range({value.low!r}, {value.high!r}, dtype=int)"
            )
        for end in (value.low, value.high):
            if not rule.check(end):
                raise _bad_value(path, value, f"{rule.must} at both ends of the Range")
    elif not rule.check(value):
        raise _bad_value(path, value, rule.must)


@functools.cache
def _init_fields(cls: type) -> frozenset[str]:
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

    return _init_fields(peft.LoraConfig)


def check_trainer_field(trainer_type: str, name: str, path: str) -> None:
    """Raise unless ``name`` is a TRL config field for ``trainer_type`` that users may set
    (fields in ``IGNORED_TRAINER_FIELDS`` are accepted; ``REFUSED_TRAINER_FIELDS`` are not)."""
    if name in REFUSED_TRAINER_FIELDS:
        raise ConfigError(f"{path}: {name}= is not supported: {REFUSED_TRAINER_FIELDS[name]}.")
    if name in IGNORED_TRAINER_FIELDS:
        return  # accepted whether or not this TRL release still has it; never passed to TRL
    cls = trl_config_class(trainer_type)
    if name not in _init_fields(cls) and name in RETIRED_TRAINER_FIELDS:
        return  # an older TRL's field: ignored, with a warning (rf_ray.compat)
    if name not in _init_fields(cls):
        extra = ""
        if name in _lora_fields():
            extra = f" {name!r} is a LoRA field: set it in RFLoraConfig({name}=...)."
        raise _unknown(name, path, _init_fields(cls), f"trl.{cls.__name__}", extra)


def check_lora_field(name: str, path: str) -> None:
    """Raise unless ``name`` is a peft.LoraConfig field."""
    if name not in _lora_fields():
        raise _unknown(name, path, _lora_fields(), "peft.LoraConfig")


# --------------------------------------------------------------------------- user-facing configs


class _Overrides:
    """The fields a user set on one config class, each possibly a knob, in ``.kwargs``.

    As RapidFire AI's configs (subclasses of the real ones) allow, a field can also be read and
    set as an attribute (``cfg.r = 32``, checked like a keyword), and ``copy()`` gives an
    independent copy (the tutorials derive variants with ``base.copy()`` and assignments).
    """

    _INTERNAL: ClassVar[frozenset[str]] = frozenset({"kwargs", "lora_kwargs"})

    def __init__(self, **kwargs: Any) -> None:
        object.__setattr__(self, "kwargs", {})
        for name, value in kwargs.items():
            self._set(name, value)

    def _set(self, name: str, value: Any) -> None:
        raise NotImplementedError

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._INTERNAL or name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self._set(name, value)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: a field the user set.
        values = {**self.__dict__.get("kwargs", {}), **self.__dict__.get("lora_kwargs", {})}
        if name in values:
            return values[name]
        raise AttributeError(f"{type(self).__name__} has no field {name!r} set")

    def copy(self) -> Any:
        """An independent copy (knobs and literals deep-copied; functions shared)."""
        values = {**self.kwargs, **getattr(self, "lora_kwargs", {})}
        return type(self)(**copy.deepcopy(values))


class RFLoraConfig(_Overrides):
    """LoRA settings for a run; each value may be a ``List`` or ``Range`` knob.

    ``peft.LoraConfig`` is already the dataclass, with PEFT's defaults and checks. Mirroring its
    40-odd fields here would copy those defaults and drift with every PEFT release, and a
    dataclass field typed ``int`` cannot hold ``List([8, 16])``. So this holds only the
    overrides the user wrote, in ``.kwargs``, checked against ``dataclasses.fields(LoraConfig)``
    by name; ``build_lora_config`` later hands the concrete values to ``LoraConfig`` itself.
    ``target_modules`` left unset means PEFT infers them (``q_proj``, ``v_proj`` for Llama).
    """

    def _set(self, name: str, value: Any) -> None:
        check_lora_field(name, f"peft_config.{name}")
        check_value(f"peft_config.{name}", value, LORA_RULES.get(name))
        self.kwargs[name] = value

    def __repr__(self) -> str:
        return f"RFLoraConfig({_kwargs_repr(self.kwargs)})"


class _TrainerKnobs(_Overrides):
    """Overrides of one TRL config class, each possibly a knob, plus LoRA shorthand.

    Holds kwargs rather than mirroring the TRL dataclass for the same reasons as
    ``RFLoraConfig``. Shorthand LoRA fields (``lora_rank``, ``lora_alpha``, ``lora_dropout``,
    ``target_modules``) go to ``.lora_kwargs`` under their own names; everything else to
    ``.kwargs``.
    """

    trainer_type: ClassVar[str]

    def __init__(self, **kwargs: Any) -> None:
        object.__setattr__(self, "lora_kwargs", {})
        super().__init__(**kwargs)

    def _set(self, name: str, value: Any) -> None:
        path = f"training_args.{name}"
        if name in LORA_SHORTHAND:
            check_value(path, value, LORA_RULES.get(LORA_SHORTHAND[name]))
            self.lora_kwargs[name] = value
        else:
            check_trainer_field(self.trainer_type, name, path)
            check_value(path, value, TRAINER_RULES.get(name))
            self.kwargs[name] = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_kwargs_repr({**self.kwargs, **self.lora_kwargs})})"


class RFSFTConfig(_TrainerKnobs):
    """Knobs for ``trl.SFTConfig`` (supervised fine-tuning)."""

    trainer_type = "SFT"


class RFDPOConfig(_TrainerKnobs):
    """Knobs for ``trl.DPOConfig`` (direct preference optimisation)."""

    trainer_type = "DPO"


class RFGRPOConfig(_TrainerKnobs):
    """Knobs for ``trl.GRPOConfig`` (group relative policy optimisation)."""

    trainer_type = "GRPO"


TRAINER_KNOB_CLASSES: dict[str, type[_TrainerKnobs]] = {
    "SFT": RFSFTConfig,
    "DPO": RFDPOConfig,
    "GRPO": RFGRPOConfig,
}


def _check_kwargs_dict(field: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"{field} must be a dict with str keys or None, got {value!r}")
    return dict(value)


def _is_callable_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(callable(f) for f in value)


def _choices(field: str, value: Any, kind: type, what: str) -> tuple[Any, ...]:
    """The alternatives of a field that takes one ``kind`` or a List (or plain list) of them."""
    if isinstance(value, List):
        items: tuple[Any, ...] = value.values
    elif isinstance(value, (list, tuple)):
        items = tuple(value)
    else:
        items = (value,)
    if not items:
        raise ConfigError(f"{field}=[] is empty: give at least one {what}")
    for item in items:
        name = type(item).__name__
        if not isinstance(item, kind) and name in ("SFTConfig", "DPOConfig", "GRPOConfig",
                                                   "LoraConfig"):  # fmt: skip
            # A TRL script's own config object: its __post_init__ has already filled derived
            # fields, so what the user wrote cannot be told from them. Say how to write it.
            raise ConfigError(
                f"{field} is a {type(item).__module__.split('.')[0]}.{name}; rf-ray takes the "
                f"same keyword arguments in RF{name}(...) (e.g. RF{name}(learning_rate=2e-4) "
                f"for {name}(learning_rate=2e-4)), where any of them may be a List or Range"
            )
        if not isinstance(item, kind):
            raise TypeError(f"{field} must be {what}, or a List of them, got {item!r}")
    return items


def _fn_choice(field: str, value: Any) -> None:
    choices = value.values if isinstance(value, List) else (value,)
    for fn in choices:
        if fn is not None and not callable(fn):
            raise TypeError(f"{field} must be a callable, a List of callables, or None, got {fn!r}")


class RFModelConfig:
    """One family of runs: a base model, its LoRA and trainer knobs, and the user's callables.

    Field names follow RapidFire AI's ``RFModelConfig``. ``peft_config`` and ``training_args``
    each take one config or a ``List`` (or plain list) of them: a search tries each. So do
    ``formatting_func`` and ``compute_metrics`` (a ``List`` of callables).
    ``training_args=None`` means ``RFSFTConfig()`` (or, under a search given
    ``trainer_type``, that trainer's empty config; ``default_training_args`` records this).
    LoRA is set either by ``peft_config`` or by shorthand in ``training_args``, not both.
    ``reward_funcs`` (GRPO) is a list of callables, or a ``List`` of such lists.

    RapidFire fields rf-ray handles its own way: ``tokenizer`` (create_model_fn loads the
    tokenizer with the model), ``model_type`` (only "causal_lm"), ``ref_model_name`` /
    ``ref_model_type`` / ``ref_model_kwargs`` (DPO's reference policy is the resident base with
    adapters disabled, so only the base model itself is accepted), ``num_gpus`` (each run
    trains on one executor; ``run_fit(num_executors=...)`` sets how many GPUs are used).
    Accepted values that rf-ray does not use are reported by ``run_fit`` as one
    ``IgnoredFieldWarning`` each.
    """

    def __init__(
        self,
        model_name: str | List,
        peft_config: RFLoraConfig | List | Sequence[RFLoraConfig] | None = None,
        training_args: _TrainerKnobs | List | Sequence[_TrainerKnobs] | None = None,
        formatting_func: Callable[..., Any] | List | None = None,
        compute_metrics: Callable[..., Any] | List | None = None,
        model_kwargs: dict[str, Any] | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
        reward_funcs: Sequence[Callable[..., Any]] | List | None = None,
        generation_config: dict[str, Any] | None = None,
        *,
        tokenizer: str | None = None,
        model_type: str | None = "causal_lm",
        ref_model_name: str | None = None,
        ref_model_type: str | None = None,
        ref_model_kwargs: dict[str, Any] | None = None,
        num_gpus: int | None = None,
        eval_metrics_fn: Callable[..., Any] | str | Sequence[str] | None = None,
        eval_generations: int = 32,
        eval_prompts_fn: Callable[..., Any] | None = None,
    ) -> None:
        # --- gen: generation metrics at each chunk end (actors.gen_eval, rf_ray.metrics)
        self.generation_eval = _generation_eval(eval_metrics_fn, eval_generations, eval_prompts_fn)
        # --- end gen
        names = model_name.values if isinstance(model_name, List) else (model_name,)
        for name in names:
            if not isinstance(name, str) or not name:
                raise TypeError(
                    f"model_name must be a non-empty str or a List of them, got {name!r}"
                )
        self.peft_choices: tuple[RFLoraConfig | None, ...] = (
            (None,)
            if peft_config is None
            else _choices("peft_config", peft_config, RFLoraConfig, "an RFLoraConfig")
        )
        self.training_choices: tuple[_TrainerKnobs, ...] = (
            ()
            if training_args is None
            else _choices(
                "training_args", training_args, _TrainerKnobs,
                "an RFSFTConfig, RFDPOConfig or RFGRPOConfig",
            )
        )  # fmt: skip
        if len({t.trainer_type for t in self.training_choices}) > 1:
            raise ConfigError(
                f"training_args={training_args!r} mixes trainer types; one RFModelConfig trains "
                "with one trainer: put the other configs in their own RFModelConfig"
            )
        _fn_choice("formatting_func", formatting_func)
        _fn_choice("compute_metrics", compute_metrics)
        if reward_funcs is not None:
            choices = reward_funcs.values if isinstance(reward_funcs, List) else (reward_funcs,)
            if not all(_is_callable_list(c) for c in choices):
                raise TypeError(
                    "reward_funcs must be None, a non-empty list of callables, or a List of "
                    f"such lists, got {reward_funcs!r}"
                )
        self.default_training_args = training_args is None
        if not self.training_choices:
            self.training_choices = (RFSFTConfig(),)
        self.training_args = self.training_choices[0]
        self.peft_config = self.peft_choices[0]
        for lora in self.peft_choices:
            for knobs in self.training_choices:
                if lora is not None and knobs.lora_kwargs:
                    raise ConfigError(
                        f"LoRA is set twice: peft_config={lora!r} and shorthand "
                        f"{sorted(knobs.lora_kwargs)} in training_args; pick one "
                        "(move the shorthand into RFLoraConfig, e.g. lora_rank -> r)"
                    )
        self.model_name = model_name
        self.formatting_func = formatting_func
        self.compute_metrics = compute_metrics
        self.model_kwargs = _check_kwargs_dict("model_kwargs", model_kwargs)
        self.tokenizer_kwargs = _check_kwargs_dict("tokenizer_kwargs", tokenizer_kwargs)
        self.reward_funcs = reward_funcs
        self.generation_config = (
            None
            if generation_config is None
            else _check_kwargs_dict("generation_config", generation_config)
        )
        self.ignored = rapidfire_fields(
            set(names), tokenizer, model_type, ref_model_name, ref_model_type, ref_model_kwargs,
            num_gpus,
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"RFModelConfig(model_name={self.model_name!r}, peft_config={self.peft_config!r}, "
            f"training_args={self.training_args!r})"
        )


def _generation_eval(metrics_fn: Any, generations: Any, prompts_fn: Any) -> Any:
    """``RFModelConfig``'s generation-metric fields as one ``GenerationEval`` (or None)."""
    from actors.gen_eval import GenerationEval
    from rf_ray.metrics import resolve_metrics_fn

    if is_knob(metrics_fn):
        raise ConfigError(
            f"eval_metrics_fn={metrics_fn!r} is a knob; runs are compared on one metric, so "
            "give one function or metric name(s) for the whole search"
        )
    checked = GenerationEval(lambda *_: {}, generations, prompts_fn)  # field checks
    if metrics_fn is None:
        if prompts_fn is not None:
            raise ConfigError(
                f"eval_prompts_fn={prompts_fn!r} is set but eval_metrics_fn is None; set "
                "eval_metrics_fn (e.g. 'rougeL') to score generations, or drop eval_prompts_fn"
            )
        return None
    resolved = resolve_metrics_fn(metrics_fn)
    assert resolved is not None  # metrics_fn is not None here
    return GenerationEval(resolved, checked.num_prompts, prompts_fn)


def _kwargs_repr(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


# --------------------------------------------------------------------------- concrete run


def _find_knob(value: Any) -> bool:
    if is_knob(value):
        return True
    if isinstance(value, dict):
        return any(_find_knob(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_find_knob(v) for v in value)
    return False


def _to_jsonable(value: Any, path: str) -> Any:
    """``value`` in JSON types; a torch dtype becomes its name, which from_pretrained takes."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return _to_jsonable(value.value, path)
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        return str(value).removeprefix("torch.")
    raise ConfigError(
        f"{path}={value!r} cannot be stored as JSON; use a str, number, bool, list or dict "
        "(for a torch dtype, its name such as 'bfloat16' works too)"
    )


def _flat_value(value: Any) -> str | int | float | bool:
    if isinstance(value, (bool, int, float, str)):
        return value
    if value is None:
        return "None"
    if callable(value):
        return str(getattr(value, "__qualname__", type(value).__qualname__))
    if isinstance(value, (list, tuple)):
        return ",".join(str(_flat_value(v)) for v in value)
    if isinstance(value, dict):
        return json.dumps(_to_jsonable_loose(value), sort_keys=True)
    return str(_to_jsonable_loose(value))


def _to_jsonable_loose(value: Any) -> Any:
    try:
        return _to_jsonable(value, "value")
    except ConfigError:
        if isinstance(value, dict):
            return {str(k): _to_jsonable_loose(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_to_jsonable_loose(v) for v in value]
        return repr(value)


@dataclasses.dataclass
class RunConfig:
    """One concrete run: no knobs left. This is what the engine consumes.

    ``to_json``/``from_json`` cover the JSON-able part only; the callables
    (``formatting_func``, ``compute_metrics``, ``reward_funcs``) are code, not data, so
    ``from_json`` takes them back as keyword arguments.
    """

    model_name: str
    """Base model name or path ("" when the search named none: create_model_fn's model)."""
    trainer_type: str = "SFT"
    """Which TRL trainer runs it: "SFT", "DPO" or "GRPO"."""
    training_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Concrete TRL config overrides the user gave (LoRA shorthand removed)."""
    lora: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Concrete peft.LoraConfig kwargs, shorthand folded in (lora_rank -> r)."""
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments for loading the base model."""
    tokenizer_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments for loading the tokenizer."""
    formatting_func: Callable[..., Any] | None = None
    """SFT example formatter, or None."""
    compute_metrics: Callable[..., Any] | None = None
    """Eval metrics function, or None."""
    reward_funcs: list[Callable[..., Any]] | None = None
    """GRPO reward functions, or None."""
    generation_config: dict[str, Any] | None = None
    """Generation settings (GRPO sampling, evaluation), or None."""
    generation_eval: Any = None
    """Generation metrics at each chunk end (an ``actors.gen_eval.GenerationEval``), or None."""
    ignored: dict[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    """RFModelConfig fields accepted but not used: field -> what rf-ray does instead (not
    stored: ``run_fit`` warns about them once)."""

    def __post_init__(self) -> None:
        if self.trainer_type not in TRAINER_TYPES:
            raise ConfigError(
                f"trainer_type={self.trainer_type!r} is not one of {', '.join(TRAINER_TYPES)}"
            )
        if not isinstance(self.model_name, str):
            raise TypeError(f"model_name must be a str, got {self.model_name!r}")
        for field in ("training_args", "lora", "model_kwargs", "tokenizer_kwargs"):
            _check_kwargs_dict(field, getattr(self, field))
        for name, value in self.training_args.items():
            if name in LORA_SHORTHAND:
                raise ConfigError(
                    f"training_args.{name}: shorthand belongs in lora as {LORA_SHORTHAND[name]!r}"
                )
            check_trainer_field(self.trainer_type, name, f"training_args.{name}")
            check_value(f"training_args.{name}", value, TRAINER_RULES.get(name))
        for name, value in self.lora.items():
            check_lora_field(name, f"lora.{name}")
            check_value(f"lora.{name}", value, LORA_RULES.get(name))
        for field in (
            "training_args",
            "lora",
            "model_kwargs",
            "tokenizer_kwargs",
            "generation_config",
        ):
            if _find_knob(getattr(self, field)):
                raise ConfigError(
                    f"{field}={getattr(self, field)!r} still holds a List or Range; a knob is only "
                    "expanded at the top level of a field, e.g. target_modules=List([[...], [...]])"
                )
        if self.reward_funcs is not None and not _is_callable_list(self.reward_funcs):
            raise TypeError(
                f"reward_funcs must be a list of callables or None, got {self.reward_funcs!r}"
            )

    def trl_fields(self) -> frozenset[str]:
        """The field names of this run's TRL config class."""
        return _init_fields(trl_config_class(self.trainer_type))

    def __getitem__(self, key: str) -> Any:
        """RapidFire AI's create_model_fn reads its model config as a dict
        (``model_config["model_name"]``, ``["model_kwargs"]``, ``["model_type"]``): the same
        keys work here. ``model_type`` is always "causal_lm"; ``peft_params`` is ``lora``;
        ``tokenizer`` is None (load the tokenizer from ``model_name``)."""
        aliases: dict[str, Any] = {"model_type": "causal_lm", "peft_params": self.lora,
                                   "tokenizer": None}  # fmt: skip
        if key in aliases:
            return aliases[key]
        if key in _RUN_CONFIG_KEYS:
            return getattr(self, key)
        raise KeyError(
            f"{key!r}: a run's model config has {', '.join([*_RUN_CONFIG_KEYS, *aliases])}"
        )

    def get(self, key: str, default: Any = None) -> Any:
        """``self[key]``, or ``default`` for a key it does not have (as ``dict.get``)."""
        try:
            return self[key]
        except KeyError:
            return default

    def flat_params(self) -> dict[str, str | int | float | bool]:
        """A flat, JSON-able, deterministic view for MLflow params and the leaderboard."""
        out: dict[str, str | int | float | bool] = {
            "model_name": self.model_name,
            "trainer_type": self.trainer_type,
        }
        sections = {"": self.training_args, "lora.": self.lora, "model_kwargs.": self.model_kwargs,
                    "tokenizer_kwargs.": self.tokenizer_kwargs,
                    "generation_config.": self.generation_config or {}}  # fmt: skip
        for prefix, values in sections.items():
            for key in sorted(values):
                out[prefix + key] = _flat_value(values[key])
        for field in ("formatting_func", "compute_metrics", "reward_funcs"):
            if getattr(self, field) is not None:
                out[field] = _flat_value(getattr(self, field))
        if self.generation_eval is not None:  # --- gen
            out["eval_metrics_fn"] = self.generation_eval.name
            out["eval_generations"] = self.generation_eval.num_prompts
        return out

    def model_key(self) -> str:
        """Identifies the base model: runs with equal keys can share one resident copy."""
        return self.model_name + json.dumps(_to_jsonable_loose(self.model_kwargs), sort_keys=True)

    def to_json(self) -> str:
        """The JSON-able part as a JSON string; raises ConfigError naming a non-JSON value."""
        data = {
            f: _to_jsonable(getattr(self, f), f)
            for f in ("model_name", "trainer_type", "training_args", "lora", "model_kwargs",
                      "tokenizer_kwargs", "generation_config")
        }  # fmt: skip
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(
        cls,
        text: str,
        *,
        formatting_func: Callable[..., Any] | None = None,
        compute_metrics: Callable[..., Any] | None = None,
        reward_funcs: list[Callable[..., Any]] | None = None,
        generation_eval: Any = None,
    ) -> RunConfig:
        """Rebuild from ``to_json`` output; pass the callables back in, they are not stored."""
        data = json.loads(text)
        return cls(
            **data,
            formatting_func=formatting_func,
            compute_metrics=compute_metrics,
            reward_funcs=reward_funcs,
            generation_eval=generation_eval,
        )


_MISSING = object()
_RUN_CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name != "ignored")


def differing_keys(flats: Sequence[dict[str, Any]]) -> list[str]:
    """Keys whose values differ across flat param dicts (a missing key differs), in first-seen
    order; for the leaderboard, ``rf-ray status`` and MLflow comparisons."""
    keys = list(dict.fromkeys(k for f in flats for k in f))
    return [k for k in keys if len({repr(f.get(k, _MISSING)) for f in flats}) > 1]


def differing_params(configs: Sequence[RunConfig]) -> list[str]:
    """Keys of ``flat_params`` whose values differ across ``configs`` (a missing key differs)."""
    return differing_keys([c.flat_params() for c in configs])


def describe(run: RunConfig) -> str:
    """A one-line ``key=value`` summary of a run, for error messages and logs."""
    return ", ".join(f"{k}={v!r}" for k, v in run.flat_params().items())


# --------------------------------------------------------------------------- TRL / PEFT objects


def build_trl_config(run: RunConfig, output_dir: str, use_cpu: bool) -> Any:
    """The TRL config object for ``run``, with the fields rf-ray owns set by rf-ray.

    Ignored fields (``IGNORED_TRAINER_FIELDS``) are left out; ``report_to`` keeps only the
    integrations rf-ray forwards that are installed (``forwarded_reporters``). TRL itself logs
    every step (``logging_steps=1``): the trial applies the user's ``logging_steps`` to MLflow.
    On CPU, bf16 and fp16 are forced off: TRL defaults to bf16 and raises on a CPU otherwise.
    """
    cls = trl_config_class(run.trainer_type)
    fields = run.trl_fields()
    kwargs = {
        k: v
        for k, v in run.training_args.items()
        if k not in IGNORED_TRAINER_FIELDS and (k in fields or k not in RETIRED_TRAINER_FIELDS)
    }
    reporters, _ = forwarded_reporters(run.training_args.get("report_to"))
    if kwargs.get("eval_strategy") == "steps" and "eval_steps" not in kwargs:
        # HF falls back to logging_steps, which rf-ray pins to 1 for TRL: use the user's.
        kwargs["eval_steps"] = run.training_args.get("logging_steps", 500)
    kwargs.update(output_dir=output_dir, report_to=reporters or "none", use_cpu=use_cpu,
                  save_strategy="no", logging_steps=1, disable_tqdm=True)  # fmt: skip
    if use_cpu:
        kwargs.update(bf16=False, fp16=False)
    if run.trainer_type == "GRPO":
        check_grpo(run, cls)
    try:
        with warnings.catch_warnings():
            if "gradient_checkpointing" not in run.training_args:
                # TRL's own default trips this transformers deprecation notice on every build.
                warnings.filterwarnings("ignore", "`gradient_checkpointing` is deprecated")
            return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"trl.{cls.__name__} rejected the run ({describe(run)}): {e}. "
            "Change this run's training_args knobs."
        ) from e


def check_grpo(run: RunConfig, cls: type) -> None:
    """GRPO needs whole prompt groups in each generation batch (reward_funcs: rf_ray.search).

    TRL's rule (``GRPOConfig.__post_init__``): ``generation_batch_size`` must be a multiple of
    ``num_generations``. Users rarely set ``generation_batch_size``; it defaults to
    ``per_device_train_batch_size x steps_per_generation`` (which defaults to
    ``gradient_accumulation_steps``), so the message spells that out with the run's numbers.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    args = {**defaults, **run.training_args}
    generations, batch = args["num_generations"], args["per_device_train_batch_size"]
    if not isinstance(generations, int) or isinstance(generations, bool) or generations < 2:
        raise ConfigError(
            f"training_args.num_generations={generations!r} is invalid: GRPO compares "
            "completions within a group, so it needs an integer >= 2"
        )
    gbs, spg = args["generation_batch_size"], args["steps_per_generation"]
    if gbs is not None:
        how = f"generation_batch_size={gbs}"
    else:
        spg = spg if spg is not None else args["gradient_accumulation_steps"]
        source = (
            "steps_per_generation"
            if args["steps_per_generation"] is not None
            else ("steps_per_generation, defaulting to gradient_accumulation_steps")
        )
        gbs = batch * spg
        how = (f"generation_batch_size = per_device_train_batch_size x steps_per_generation = "
               f"{batch} x {spg} ({source}) = {gbs}")  # fmt: skip
    if isinstance(gbs, int) and gbs % generations:
        raise ConfigError(
            f"training_args.num_generations={generations} does not divide the generation batch: "
            f"{how}, and TRL needs generation_batch_size % num_generations == 0 so that every "
            f"prompt's {generations} completions are scored together. Pick num_generations among "
            f"the divisors of {gbs}, or change per_device_train_batch_size / "
            "gradient_accumulation_steps"
        )


def build_lora_config(run: RunConfig) -> Any:
    """``peft.LoraConfig(task_type="CAUSAL_LM", **run.lora)``; a user task_type wins."""
    import peft

    try:
        return peft.LoraConfig(**{"task_type": "CAUSAL_LM", **run.lora})
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"peft.LoraConfig rejected the run ({describe(run)}): {e}. Change its LoRA knobs."
        ) from e


__all__ = [
    "TRAINER_TYPES",
    "IgnoredFieldWarning",
    "List",
    "RFDPOConfig",
    "RFGRPOConfig",
    "RFLoraConfig",
    "RFModelConfig",
    "RFSFTConfig",
    "Range",
    "RunConfig",
    "build_lora_config",
    "build_trl_config",
    "describe",
    "differing_params",
    "is_knob",
]
