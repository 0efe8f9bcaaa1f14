"""What a user writes to describe runs: model configs, LoRA and trainer configs, and their knobs.

A user writes knob spaces in the RapidFire AI style::

    RFModelConfig(
        model_name="tiny-llama",
        peft_config=RFLoraConfig(r=List([8, 16]), lora_alpha=16),
        training_args=RFSFTConfig(learning_rate=List([1e-4, 2e-4]), max_length=128),
    )

``List`` is a choice among values, ``Range`` a numeric interval (random search only; both in
``rf_ray.knobs``). Plain Python lists inside a config are literal values
(``target_modules=["q_proj", "v_proj"]``). ``rf_ray.search`` expands such a space into
``RunConfig`` objects (``rf_ray.specs``), one per run, with no knobs left. Every field name and
value is checked as it is set (``rf_ray.fields``), so a bad value fails before any actor starts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from policies.errors import ConfigError
from policies.redact import shown
from rf_ray.compat import IgnoredFieldWarning, rapidfire_fields
from rf_ray.fields import (
    LORA_RULES,
    LORA_SHORTHAND,
    TRAINER_RULES,
    TRAINER_TYPES,
    check_kwargs_dict,
    check_lora_field,
    check_trainer_field,
    check_value,
    is_callable_list,
)
from rf_ray.knobs import List, Range, is_knob

# Set when a search names no model (the article's short form): the engine's create_model_fn
# decides which model that is.
UNNAMED_MODEL = ""


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


class TrainerKnobs(_Overrides):
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


class RFSFTConfig(TrainerKnobs):
    """Knobs for ``trl.SFTConfig`` (supervised fine-tuning)."""

    trainer_type = "SFT"


class RFDPOConfig(TrainerKnobs):
    """Knobs for ``trl.DPOConfig`` (direct preference optimisation)."""

    trainer_type = "DPO"


class RFGRPOConfig(TrainerKnobs):
    """Knobs for ``trl.GRPOConfig`` (group relative policy optimisation)."""

    trainer_type = "GRPO"


TRAINER_KNOB_CLASSES: dict[str, type[TrainerKnobs]] = {
    "SFT": RFSFTConfig,
    "DPO": RFDPOConfig,
    "GRPO": RFGRPOConfig,
}


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

    ``compute_metrics`` follows RapidFire: beside a ``generation_config`` it scores generated
    text, ``f((predictions, references)) -> dict`` over every eval row at each chunk end
    (``rf_ray.metrics.split_compute_metrics``); without one it is TRL's hook on logits, and
    ``rf_ray.metrics.LogitsMetrics(f)`` keeps it TRL's beside a ``generation_config``.
    ``formatting_func`` may return a dict of columns for every trainer type (RapidFire's shape:
    they are added to each row), or the text of a row for SFT (TRL's shape).

    RapidFire fields rf-ray handles its own way: ``tokenizer`` (create_model_fn loads the
    tokenizer with the model), ``model_type`` (only "causal_lm"), ``ref_model_name`` /
    ``ref_model_type`` / ``ref_model_kwargs`` (DPO's reference policy is the resident base with
    adapters disabled, so only the base model itself is accepted), ``num_gpus`` (each run
    trains on one executor; ``run_fit(num_executors=...)`` sets how many GPUs are used).
    Accepted values that rf-ray does not use are reported by ``run_fit`` as one
    ``IgnoredFieldWarning`` each.
    """

    def __init__(  # noqa: PLR0913  RapidFire AI's RFModelConfig signature
        self,
        model_name: str | List,
        peft_config: RFLoraConfig | List | Sequence[RFLoraConfig] | None = None,
        training_args: TrainerKnobs | List | Sequence[TrainerKnobs] | None = None,
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
        # Generation metrics at each chunk end (actors.engine.gen_eval, rf_ray.metrics)
        self.generation_eval = _generation_eval(eval_metrics_fn, eval_generations, eval_prompts_fn)
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
        self.training_choices: tuple[TrainerKnobs, ...] = (
            ()
            if training_args is None
            else _choices(
                "training_args", training_args, TrainerKnobs,
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
            if not all(is_callable_list(c) for c in choices):
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
        self.model_kwargs = check_kwargs_dict("model_kwargs", model_kwargs)
        self.tokenizer_kwargs = check_kwargs_dict("tokenizer_kwargs", tokenizer_kwargs)
        self.reward_funcs = reward_funcs
        self.generation_config = (
            None
            if generation_config is None
            else check_kwargs_dict("generation_config", generation_config)
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
    from actors.engine.gen_eval import GenerationEval
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
    return ", ".join(f"{k}={shown(k, v)}" for k, v in kwargs.items())


__all__ = [
    "LORA_SHORTHAND",
    "TRAINER_KNOB_CLASSES",
    "TRAINER_TYPES",
    "UNNAMED_MODEL",
    "IgnoredFieldWarning",
    "List",
    "RFDPOConfig",
    "RFGRPOConfig",
    "RFLoraConfig",
    "RFModelConfig",
    "RFSFTConfig",
    "Range",
    "TrainerKnobs",
    "is_knob",
]
