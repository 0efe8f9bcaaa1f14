"""Config groups: turn knob spaces into the list of concrete runs an experiment trains.

    group = RFGridSearch(
        List([RFModelConfig("tiny", training_args=RFSFTConfig(learning_rate=List([1e-4, 2e-4])))]),
    )
    runs = group.expand()   # list[RunConfig], fully validated, before any actor starts

``RFGridSearch`` takes the cartesian product of every ``List`` knob; ``RFRandomSearch`` draws
``num_runs`` distinct runs, sampling ``List`` and ``Range`` knobs from a seeded RNG. Both
implement ``ConfigGroup``, the one-method interface the engine reads, so other generators (a
Ray Tune searcher, say) can stand in for them.

A config group is an ``RFModelConfig``, a trainer config (``RFSFTConfig(...)``: the article's
short form, with the model named once by ``model_name=`` on the search or by
``create_model_fn``), or a ``List`` or plain Python list of these. Inside an ``RFModelConfig``,
``peft_config`` and ``training_args`` may each be a List of configs, and a knob may sit in any
field, nested dicts included (RapidFire AI's shapes).
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import itertools
import json
import logging
import math
import random
import warnings
from typing import Any

from policies.errors import ConfigError
from rf_ray.configs import (
    LORA_SHORTHAND,
    TRAINER_KNOB_CLASSES,
    TRAINER_TYPES,
    UNNAMED_MODEL,
    List,
    Range,
    RFLoraConfig,
    RFModelConfig,
    _TrainerKnobs,
    is_knob,
)
from rf_ray.metrics import split_compute_metrics
from rf_ray.specs import (
    UNPLACED,
    RunConfig,
    build_lora_config,
    build_run_configs,
    build_trl_config,
    describe,
)

logger = logging.getLogger(__name__)

# Beyond this many grid points a random search does not enumerate its space to count the
# distinct configs; the cap on draws catches a space too small instead.
_ENUMERATE_LIMIT = 20_000
# A random search gives up after this many draws per requested run.
_DRAWS_PER_RUN = 1000
# Options TRL checks against the hardware present; left out of the CPU dry run in validation.
_DEVICE_OPTIONS = ("bf16", "fp16", "tf32", "bf16_full_eval", "fp16_full_eval")


class ConfigGroup(abc.ABC):
    """Anything that yields the concrete runs of an experiment.

    A group that adds runs while the experiment runs (``rf_ray.tune.RFTuneSearch``) uses the
    two hooks ``run_fit`` calls on every group: ``hold_token`` keeps the experiment open with no
    live run until the group releases it (``Experiment.unhold``), and ``on_start`` is called
    once the experiment's actors run.
    """

    hold_token: str | None = None
    """A token that keeps the experiment open until ``Experiment.unhold(token)``; None: none."""

    @abc.abstractmethod
    def expand(self) -> list[RunConfig]:
        """All runs of the group, concrete and validated, in a deterministic order."""

    def on_start(self, experiment: Any) -> None:  # noqa: B027  (a hook: does nothing by default)
        """Called by ``run_fit`` once ``experiment``'s actors run and ``expand()``'s runs are
        added (``experiment.started_run_ids`` holds their ids)."""


Slot = tuple[str, tuple[str, ...]]
"""Where a knob sits: a section of the template and the key path inside it (a knob may sit in
a nested dict, e.g. ``model_kwargs={"quantization_config": {"bits": List([4, 8])}}``)."""


def _knob_paths(values: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Key paths of every knob in ``values``, in the order written, nested dicts included."""
    paths = []
    for key, value in values.items():
        if is_knob(value):
            paths.append((*prefix, key))
        elif isinstance(value, dict):
            paths.extend(_knob_paths(value, (*prefix, str(key))))
    return paths


def _get(values: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        values = values[key]
    return values


def _set(values: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        values = values[key]
    values[path[-1]] = value


@dataclasses.dataclass
class _Template:
    """One model config with its knobs located: ``_get(sections[section], path)`` is a knob."""

    where: str
    trainer_type: str
    sections: dict[str, dict[str, Any]]
    slots: list[Slot]  # every knob, in a stable order
    has_generation_config: bool
    ignored: dict[str, str] = dataclasses.field(default_factory=dict)

    def path(self, slot: Slot) -> str:
        section, keys = slot
        prefix = {
            "model": "",
            "callables": "",
            "lora": "peft_config.",
            "shorthand": "training_args.",
        }
        return f"{self.where}{prefix.get(section, section + '.')}{'.'.join(keys)}"

    def size(self) -> int:
        """Number of grid points (only meaningful when every knob is a List)."""
        return math.prod(len(self.knob(s).values) for s in self.slots)

    def has_range(self) -> bool:
        return any(isinstance(self.knob(s), Range) for s in self.slots)

    def knob(self, slot: Slot) -> Any:
        return _get(self.sections[slot[0]], slot[1])

    def grid(self) -> list[RunConfig]:
        for slot in self.slots:
            if isinstance(self.knob(slot), Range):
                raise ConfigError(
                    f"{self.path(slot)}={self.knob(slot)!r}: grid search cannot expand a Range; "
                    "use RFRandomSearch, or a List of the values to try"
                )
        choices = itertools.product(*(self.knob(s).values for s in self.slots))
        return [self.resolve(dict(zip(self.slots, c))) for c in choices]

    def draw(self, rng: random.Random) -> RunConfig:
        chosen = {}
        for slot in self.slots:
            knob = self.knob(slot)
            chosen[slot] = knob.sample(rng) if isinstance(knob, Range) else rng.choice(knob.values)
        return self.resolve(chosen)

    def resolve(self, chosen: dict[Slot, Any]) -> RunConfig:
        # Runs must not share mutable literals (a target_modules list, say) with each other;
        # callables are code and stay shared.
        c = {s: dict(v) if s == "callables" else copy.deepcopy(v) for s, v in self.sections.items()}
        for (section, keys), value in chosen.items():
            _set(c[section], keys, value if section == "callables" else copy.deepcopy(value))
        lora = c["lora"] or {LORA_SHORTHAND[k]: v for k, v in c["shorthand"].items()}
        reward_funcs = c["callables"]["reward_funcs"]
        generation_config = c["generation_config"] if self.has_generation_config else None
        # RapidFire's semantics: with a generation_config, compute_metrics scores generations.
        compute_metrics, generation_eval = split_compute_metrics(
            c["callables"]["compute_metrics"], generation_config,
            c["callables"]["generation_eval"], self.where or "RFModelConfig",
        )  # fmt: skip
        return RunConfig(
            model_name=c["model"]["model_name"],
            trainer_type=self.trainer_type,
            training_args=c["training_args"],
            lora=lora,
            model_kwargs=c["model_kwargs"],
            tokenizer_kwargs=c["tokenizer_kwargs"],
            formatting_func=c["callables"]["formatting_func"],
            compute_metrics=compute_metrics,
            reward_funcs=None if reward_funcs is None else list(reward_funcs),
            generation_config=generation_config,
            generation_eval=generation_eval,
            ignored=dict(self.ignored),
        )


def _normalize_trainer_type(trainer_type: str | None) -> str | None:
    if trainer_type is None:
        return None
    if not isinstance(trainer_type, str) or trainer_type.upper() not in TRAINER_TYPES:
        raise ConfigError(
            f"trainer_type={trainer_type!r} is not supported; use one of "
            f"{', '.join(repr(t) for t in TRAINER_TYPES)} or leave it None"
        )
    return trainer_type.upper()


def _templates(
    configs: Any, trainer_type: str | None, model_name: str | List | None
) -> list[_Template]:
    """Locate every knob of every config in the group, checking types and trainer types."""
    if isinstance(configs, List):
        items = list(configs.values)
    elif isinstance(configs, (list, tuple)):
        if not configs:
            raise ConfigError("configs is an empty list; give at least one RFModelConfig")
        items = list(configs)
    else:
        items = [configs]
    templates = []
    for i, item in enumerate(items):
        where = f"configs[{i}]." if len(items) > 1 else ""
        if isinstance(item, _TrainerKnobs):
            # A stand-in name lets RFModelConfig check the rest; the real one is set just below.
            item = RFModelConfig(
                model_name if model_name is not None else "unnamed", training_args=item
            )
            name: str | List = model_name if model_name is not None else UNNAMED_MODEL
        elif isinstance(item, RFModelConfig):
            if model_name is not None:
                raise ConfigError(
                    f"{where}model_name: the search's model_name={model_name!r} names the model "
                    "for bare trainer configs, but this RFModelConfig names its own; drop one"
                )
            name = item.model_name
        else:
            raise TypeError(
                f"configs[{i}] must be an RFModelConfig or RFSFTConfig/RFDPOConfig/RFGRPOConfig, "
                f"got {item!r}"
            )
        templates.extend(_template(where, item, name, trainer_type))
    return templates


def _template(
    where: str, cfg: RFModelConfig, model_name: str | List, trainer_type: str | None
) -> list[_Template]:
    """One template per (LoRA config, trainer config) pair of ``cfg`` (each may be a List)."""
    templates = []
    many = len(cfg.peft_choices) * len(cfg.training_choices) > 1
    for (i, lora), (j, knobs) in itertools.product(
        enumerate(cfg.peft_choices), enumerate(cfg.training_choices)
    ):
        label = f"{where}[peft_config {i}, training_args {j}] " if many else where
        templates.append(_one_template(label, cfg, lora, knobs, model_name, trainer_type))
    return templates


def _one_template(
    where: str,
    cfg: RFModelConfig,
    lora: RFLoraConfig | None,
    knobs: _TrainerKnobs,
    model_name: str | List,
    trainer_type: str | None,
) -> _Template:
    if trainer_type is not None and cfg.default_training_args:
        knobs = TRAINER_KNOB_CLASSES[trainer_type]()
    elif trainer_type is not None and knobs.trainer_type != trainer_type:
        raise ConfigError(
            f"{where}training_args is an {type(knobs).__name__} but the search has "
            f"trainer_type={trainer_type!r}; use {TRAINER_KNOB_CLASSES[trainer_type].__name__} "
            "or change trainer_type"
        )
    sections: dict[str, dict[str, Any]] = {
        "model": {"model_name": model_name},
        "model_kwargs": cfg.model_kwargs,
        "tokenizer_kwargs": cfg.tokenizer_kwargs,
        "lora": lora.kwargs if lora else {},
        "shorthand": knobs.lora_kwargs,
        "training_args": knobs.kwargs,
        "generation_config": cfg.generation_config or {},
        "callables": {
            "formatting_func": cfg.formatting_func,
            "compute_metrics": cfg.compute_metrics,
            "reward_funcs": cfg.reward_funcs,
            "generation_eval": cfg.generation_eval,
        },
    }
    slots = [(s, p) for s, values in sections.items() for p in _knob_paths(values)]
    return _Template(
        where, knobs.trainer_type, sections, slots, cfg.generation_config is not None,
        dict(cfg.ignored),
    )  # fmt: skip


def validate_run(run: RunConfig) -> None:
    """Everything that can be checked without a model: TRL and PEFT build the run's configs."""
    if run.trainer_type == "GRPO" and not run.reward_funcs:
        raise ConfigError(
            f"run ({describe(run)}) is GRPO but has no reward_funcs; "
            "pass RFModelConfig(reward_funcs=[...])"
        )
    if run.trainer_type != "GRPO" and run.reward_funcs:
        raise ConfigError(
            f"run ({describe(run)}) is {run.trainer_type} but sets reward_funcs, which only "
            "GRPO uses; drop reward_funcs or use RFGRPOConfig"
        )
    run.to_json()  # raises on a value the experiment store could not keep
    dry = {k: v for k, v in run.training_args.items() if k not in _DEVICE_OPTIONS}
    if dry == run.training_args:
        build_run_configs(run)  # built once: build_specs reuses these objects
        return
    # A device option is checked against the hardware of THIS machine: a CPU dry run leaves it
    # out (the run's real build, in build_specs, keeps it).
    build_lora_config(run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRL's deprecation notices show again on the real build
        build_trl_config(dataclasses.replace(run, training_args=dry), UNPLACED, True)


def _run_key(run: RunConfig) -> tuple[Any, ...]:
    """Equal for runs that would train identically; callables compare by identity."""
    funcs = (run.formatting_func, run.compute_metrics, *(run.reward_funcs or ()),
             run.generation_eval)  # fmt: skip
    return (json.dumps(run.flat_params(), sort_keys=True), tuple(id(f) for f in funcs))


class RFGridSearch(ConfigGroup):
    """Every combination of every ``List`` knob; a ``Range`` is an error.

    Order: the group's configs in the order given; within a config, each of its LoRA configs
    (``peft_config=List([...])``) times each of its trainer configs (``training_args=List(...)``),
    then the cartesian product of their knobs (model_name, model_kwargs, tokenizer_kwargs, LoRA,
    trainer fields, generation_config, callables; each in the order written), the last knob
    varying fastest.
    ``trainer_type`` ("SFT", "DPO", "GRPO"), when given, picks the trainer for configs without
    ``training_args`` and must agree with the others. ``model_name`` names the model for bare
    trainer configs.
    """

    def __init__(
        self,
        configs: Any,
        trainer_type: str | None = None,
        *,
        model_name: str | List | None = None,
    ) -> None:
        self.trainer_type = _normalize_trainer_type(trainer_type)
        self._templates = _templates(configs, self.trainer_type, model_name)

    def expand(self) -> list[RunConfig]:
        runs = [run for t in self._templates for run in t.grid()]
        for run in runs:
            validate_run(run)
        distinct = len({_run_key(r) for r in runs})
        if distinct < len(runs):
            logger.warning(
                "grid search gives %d runs but only %d distinct; a List repeats a value",
                len(runs),
                distinct,
            )
        return runs


class RFRandomSearch(ConfigGroup):
    """``num_runs`` distinct runs drawn with ``random.Random(seed)``.

    Each draw picks one of the group's (config, LoRA config, trainer config) combinations
    uniformly, then each ``List`` knob uniformly and
    each ``Range`` by ``Range.sample``; a draw equal to an earlier one is drawn again. The same
    seed gives the same runs in the same order.
    """

    def __init__(
        self,
        configs: Any,
        num_runs: int,
        seed: int = 0,
        trainer_type: str | None = None,
        *,
        model_name: str | List | None = None,
    ) -> None:
        if not isinstance(num_runs, int) or isinstance(num_runs, bool) or num_runs < 1:
            raise ConfigError(f"num_runs={num_runs!r} must be an integer >= 1")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"seed={seed!r} must be an integer")
        self.num_runs = num_runs
        self.seed = seed
        self.trainer_type = _normalize_trainer_type(trainer_type)
        self._templates = _templates(configs, self.trainer_type, model_name)

    def expand(self) -> list[RunConfig]:
        self._check_space_size()
        rng = random.Random(self.seed)
        runs: list[RunConfig] = []
        seen: set[tuple[Any, ...]] = set()
        draws = 0
        while len(runs) < self.num_runs:
            if draws >= _DRAWS_PER_RUN * self.num_runs:
                raise ConfigError(
                    f"num_runs={self.num_runs} but {draws} draws found only {len(runs)} distinct "
                    "configs; lower num_runs or widen the space"
                )
            draws += 1
            run = self._templates[rng.randrange(len(self._templates))].draw(rng)
            key = _run_key(run)
            if key not in seen:
                seen.add(key)
                runs.append(run)
        for run in runs:
            validate_run(run)
        return runs

    def _check_space_size(self) -> None:
        if any(t.has_range() for t in self._templates):
            return  # infinite space
        points = sum(t.size() for t in self._templates)
        if points > _ENUMERATE_LIMIT and points >= self.num_runs:
            return  # too large to count; the draw limit catches a space with many repeats
        distinct = points
        if points <= _ENUMERATE_LIMIT:
            distinct = len({_run_key(r) for t in self._templates for r in t.grid()})
        if distinct < self.num_runs:
            raise ConfigError(
                f"num_runs={self.num_runs} but this space has only {distinct} distinct configs; "
                "lower num_runs or widen the space"
            )


# A template section's knobs as flat knob names (``rf_ray.ops.modified`` / ``tune.apply_flat``).
_FLAT_PREFIX = {
    "model": "",
    "training_args": "",
    "shorthand": "",
    "lora": "lora.",
    "model_kwargs": "model_kwargs.",
    "tokenizer_kwargs": "tokenizer_kwargs.",
    "generation_config": "generation_config.",
}


def knob_space(
    configs: Any, trainer_type: str | None = None, *, who: str = "this search"
) -> tuple[RunConfig, dict[str, List | Range]]:
    """One config's knobs as ``(base run, {flat knob name: List or Range})``, for searchers
    that pick values themselves (Optuna through Ray Tune). The base takes each knob's first
    value (a Range its low end). One config, knobs at the top level of a field, no knob over
    functions: otherwise ``ConfigError`` naming the knob and what to do."""
    templates = _templates(configs, _normalize_trainer_type(trainer_type), None)
    if len(templates) != 1:
        raise ConfigError(
            f"{who} takes one RFModelConfig with one peft_config and one training_args; this "
            f"group has {len(templates)} (Lists of configs): run one search per config, or use "
            "RFGridSearch / RFRandomSearch, which expand Lists of configs"
        )
    (template,) = templates
    space: dict[str, List | Range] = {}
    for slot in template.slots:
        section, keys = slot
        if section == "callables" or len(keys) > 1:
            raise ConfigError(
                f"{template.path(slot)}: {who} searches over values at the top level of a "
                "field, not over functions or nested dicts; use RFGridSearch or RFRandomSearch"
            )
        space[_FLAT_PREFIX[section] + keys[0]] = template.knob(slot)
    first = {s: k.values[0] if isinstance(k, List) else k.low for s, k in
             ((s, template.knob(s)) for s in template.slots)}  # fmt: skip
    return template.resolve(first), space


__all__ = ["ConfigGroup", "RFGridSearch", "RFRandomSearch", "knob_space", "validate_run"]
