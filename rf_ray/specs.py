"""From a concrete run to what the actors train: ``RunConfig`` -> TRL/PEFT configs -> ``RunSpec``.

``RunConfig`` is one run with no knobs left (``rf_ray.search`` expands a search into these).
``build_trl_config`` and ``build_lora_config`` turn it into the TRL and PEFT objects (which
validates them); ``build_specs`` makes each run's ``RunSpec`` (``actors.engine.spec``): those
objects, the run's chunk plan (``policies.chunking.ChunkPlan``) and its flat params.
``to_jsonable`` is the package's one JSON sanitiser.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from actors.engine.spec import RunSpec
from actors.storage.layout import ExperimentDir
from policies.chunking import ChunkPlan, repeat_sampler_length
from policies.errors import ConfigError
from policies.redact import redact, shown
from rf_ray.compat import IGNORED_TRAINER_FIELDS, RETIRED_TRAINER_FIELDS, forwarded_reporters
from rf_ray.fields import (
    LORA_RULES,
    LORA_SHORTHAND,
    TRAINER_RULES,
    TRAINER_TYPES,
    check_kwargs_dict,
    check_lora_field,
    check_trainer_field,
    check_value,
    init_fields,
    is_callable_list,
    trl_config_class,
)
from rf_ray.knobs import is_knob
from rf_ray.legacy import modernize_model_kwargs, modernize_training_args


def _find_knob(value: Any) -> bool:
    if is_knob(value):
        return True
    if isinstance(value, dict):
        return any(_find_knob(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_find_knob(v) for v in value)
    return False


def to_jsonable(value: Any, path: str | None = None) -> Any:
    """``value`` in JSON types: the package's one JSON sanitiser.

    Enums become their value, a torch dtype its name (which ``from_pretrained`` takes), tuples
    lists, dict keys str. With ``path`` (a run's stored config, which must round-trip) any other
    value raises ``ConfigError`` naming ``path``. Without (params, status output), any other
    value becomes its ``repr``, and NaN or inf becomes None (``json.dumps`` would write them as
    invalid JSON).
    """
    if path is None and isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, enum.Enum):  # before str: a str enum must not travel as itself
        return to_jsonable(value.value, path)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, _at(path, f".{k}")) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, _at(path, f"[{i}]")) for i, v in enumerate(value)]
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        return str(value).removeprefix("torch.")
    if path is None:
        return repr(value)
    raise ConfigError(
        f"{path}={shown(path, value)} cannot be stored as JSON; use a str, number, bool, list or "
        "dict (for a torch dtype, its name such as 'bfloat16' works too)"
    )


def _at(path: str | None, step: str) -> str | None:
    return None if path is None else path + step


def _flat_value(value: Any) -> str | int | float | bool:
    if isinstance(value, enum.Enum):  # a str enum (PEFT's TaskType) pickles its library along
        return _flat_value(value.value)
    if isinstance(value, (bool, int, float, str)):
        return value
    if value is None:
        return "None"
    if callable(value):
        return str(getattr(value, "__qualname__", type(value).__qualname__))
    if isinstance(value, (list, tuple)):
        return ",".join(str(_flat_value(v)) for v in value)
    if isinstance(value, dict):
        return json.dumps(to_jsonable(value), sort_keys=True)
    return str(to_jsonable(value))


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
    """Generation metrics at each chunk end (an ``actors.engine.gen_eval.GenerationEval``), or
    None."""
    ignored: dict[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    """RFModelConfig fields accepted but not used: field -> what rf-ray does instead (not
    stored: ``run_fit`` warns about them once)."""
    legacy: dict[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    """Fields of older TRL/transformers releases, rewritten today's way (``rf_ray.legacy``):
    field -> the warning ``run_fit`` shows once. Not stored: the config holds today's names."""
    _built: tuple[str, Any, Any] | None = dataclasses.field(
        default=None, init=False, compare=False, repr=False
    )
    """``build_run_configs``'s TRL and PEFT objects, with the ``to_json`` they were built from."""

    def __post_init__(self) -> None:
        if self.trainer_type not in TRAINER_TYPES:
            raise ConfigError(
                f"trainer_type={self.trainer_type!r} is not one of {', '.join(TRAINER_TYPES)}"
            )
        if not isinstance(self.model_name, str):
            raise TypeError(f"model_name must be a str, got {self.model_name!r}")
        for field in ("training_args", "lora", "model_kwargs", "tokenizer_kwargs"):
            check_kwargs_dict(field, getattr(self, field))
        self.training_args, renamed = modernize_training_args(self.training_args)
        self.model_kwargs, moved = modernize_model_kwargs(self.model_kwargs)
        self.legacy = {**self.legacy, **renamed, **moved}
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
        if self.reward_funcs is not None and not is_callable_list(self.reward_funcs):
            raise TypeError(
                f"reward_funcs must be a list of callables or None, got {self.reward_funcs!r}"
            )
        for field in ("formatting_func", "compute_metrics"):  # as RFModelConfig checks them
            value = getattr(self, field)
            if value is not None and not callable(value):
                raise TypeError(f"{field} must be a callable or None, got {value!r}")

    def trl_fields(self) -> frozenset[str]:
        """The field names of this run's TRL config class."""
        return init_fields(trl_config_class(self.trainer_type))

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
        if self.generation_eval is not None:
            out["eval_metrics_fn"] = self.generation_eval.name
            prompts = self.generation_eval.num_prompts
            out["eval_generations"] = "all" if prompts is None else prompts
        return out

    def model_key(self) -> str:
        """Identifies the base model: runs with equal keys can share one resident copy."""
        return self.model_name + json.dumps(to_jsonable(self.model_kwargs), sort_keys=True)

    def to_json(self) -> str:
        """The JSON-able part as a JSON string; raises ConfigError naming a non-JSON value."""
        data = {
            f: to_jsonable(getattr(self, f), f)
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
_RUN_CONFIG_KEYS = tuple(
    f.name for f in dataclasses.fields(RunConfig) if f.name not in ("ignored", "legacy") and f.init
)


def differing_keys(flats: Sequence[Mapping[str, Any]]) -> list[str]:
    """Keys whose values differ across flat param dicts (a missing key differs), in first-seen
    order; for the live view, ``rf-ray status`` and Tune's ``RFSearcher``. The package's one
    "keys that differ between runs" (one dict, or none, has none)."""
    keys = list(dict.fromkeys(k for f in flats for k in f))
    return [k for k in keys if len({repr(f.get(k, _MISSING)) for f in flats}) > 1]


def differing_params(configs: Sequence[RunConfig]) -> list[str]:
    """Keys of ``flat_params`` whose values differ across ``configs`` (a missing key differs)."""
    return differing_keys([c.flat_params() for c in configs])


def describe(run: RunConfig) -> str:
    """A one-line ``key=value`` summary of a run, for error messages and logs (secret-looking
    values masked: ``policies.redact``)."""
    return ", ".join(f"{k}={v!r}" for k, v in redact(run.flat_params()).items())


# --------------------------------------------------------------------------- TRL / PEFT objects
UNPLACED = "rf-ray-unplaced"
"""The ``output_dir`` of a TRL config built before its run has an id (``build_specs`` sets it)."""


def build_run_configs(run: RunConfig) -> tuple[Any, Any]:
    """The run's TRL and PEFT config objects, built (so validated by TRL and PEFT) ONCE per run:
    validation (``rf_ray.search.validate_run``) builds them, ``build_specs`` reuses them.

    They are built before the run has a place: ``output_dir`` is ``UNPLACED`` and the seed is
    the user's (or TRL's default); ``build_specs`` sets both on a copy. Neither takes part in
    TRL's ``__post_init__`` beyond ``expanduser``, so this equals building with them set.
    """
    key = run.to_json()
    if run._built is None or run._built[0] != key:
        run._built = (key, build_trl_config(run, UNPLACED, True), build_lora_config(run))
    return run._built[1], run._built[2]


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
            # TRL's own default trips this transformers deprecation notice on every build; a
            # user's gradient_checkpointing was renamed, with one LegacyFieldWarning (legacy.py).
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


# --------------------------------------------------------------------------- run specs


def build_specs(
    runs: list[RunConfig],
    experiment_dir: Path,
    train_rows: int,
    num_chunks: int,
    seed: int,
    first_run_id: int = 1,
) -> list[RunSpec]:
    """One ``RunSpec`` per run, validating TRL/PEFT configs and the chunking of each. A run
    without its own ``seed`` trains with the experiment's (stored in its config)."""
    specs = []
    for i, run in enumerate(runs):
        run_id = first_run_id + i
        built, lora = build_run_configs(run)
        args = copy.copy(built)  # this run's place and seed go on a copy of the built config
        args.output_dir = str(ExperimentDir(experiment_dir).run(run_id).path)
        if "seed" not in run.training_args:
            args.seed = seed
        training_args = {**run.training_args, "seed": run.training_args.get("seed", seed)}
        concrete = dataclasses.replace(run, training_args=training_args)
        try:
            chunks = _chunk_plan(run.trainer_type, args, train_rows, num_chunks)
        except ConfigError as e:
            raise ConfigError(f"run {run_id} ({describe(run)}): {e}") from e
        specs.append(
            RunSpec(
                run_id=run_id,
                model_key=concrete.model_key(),
                model_config=concrete,
                trainer_type=run.trainer_type,
                trl_args=args,
                lora_config=lora,
                plan=chunks,
                seed=seed,
                params=concrete.flat_params(),
                formatting_func=run.formatting_func,
                compute_metrics=run.compute_metrics,
                reward_funcs=run.reward_funcs,
                generation_eval=run.generation_eval,
            )
        )
    return specs


def _chunk_plan(trainer_type: str, args: Any, train_rows: int, num_chunks: int) -> ChunkPlan:
    """The run's ChunkPlan, counting micro-batches as its TRL trainer's dataloader yields them.

    SFT and DPO batch dataset rows. GRPO's dataloader yields generation batches of
    ``generation_batch_size`` rows from TRL's ``RepeatSampler`` (each prompt ``num_generations``
    times, each group of prompts ``num_iterations * steps_per_generation`` times), so its plan
    counts that sampler's stream (``repeat_sampler_length``).
    """
    common = dict(
        grad_accum=args.gradient_accumulation_steps,
        num_chunks=num_chunks,
        num_train_epochs=float(args.num_train_epochs),
        max_steps=int(args.max_steps),
        drop_last=bool(args.dataloader_drop_last),
    )
    if trainer_type != "GRPO":
        return ChunkPlan(
            num_examples=train_rows, batch_size=args.per_device_train_batch_size, **common
        )
    prompts_per_batch = args.generation_batch_size // args.num_generations
    if train_rows < prompts_per_batch:
        raise ConfigError(
            f"GRPO needs at least one generation batch of {prompts_per_batch} prompts "
            f"(generation_batch_size={args.generation_batch_size} / "
            f"num_generations={args.num_generations}), but train_dataset has {train_rows}; "
            "use more prompts or a smaller per_device_train_batch_size x "
            "gradient_accumulation_steps"
        )
    repeat = args.num_iterations * args.steps_per_generation
    samples = repeat_sampler_length(
        train_rows, args.num_generations, args.generation_batch_size, repeat
    )
    try:
        return ChunkPlan(num_examples=samples, batch_size=args.generation_batch_size, **common)
    except ConfigError as e:
        steps = -(-(samples // args.generation_batch_size) // args.gradient_accumulation_steps)
        raise ConfigError(
            f"{e} (GRPO counts generation batches: {train_rows} prompts make "
            f"{train_rows // prompts_per_batch} groups of {prompts_per_batch} prompts x "
            f"{args.num_generations} generations, each used {repeat} times "
            f"(num_iterations x steps_per_generation), i.e. {steps} optimizer steps per epoch)"
        ) from e


__all__ = [
    "RunConfig",
    "build_lora_config",
    "build_specs",
    "build_trl_config",
    "describe",
    "differing_keys",
    "differing_params",
]
