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
import random
import warnings
from typing import Any

from policies.errors import ConfigError
from policies.pruning import Pruner
from rf_ray.configs import (
    LORA_SHORTHAND,
    TRAINER_KNOB_CLASSES,
    TRAINER_TYPES,
    UNNAMED_MODEL,
    List,
    Range,
    RFLoraConfig,
    RFModelConfig,
    TrainerKnobs,
)
from rf_ray.evals.space import is_evals_config, pipeline_templates
from rf_ray.knob_template import KnobTemplate, Slot, knob_paths, set_path
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
    def expand(self) -> list[Any]:
        """All runs of the group, concrete and validated, in a deterministic order: fit mode's
        ``RunConfig``s, or evals mode's ``PipelineConfig``s for evals config sets."""

    def on_start(self, experiment: Any) -> None:  # noqa: B027  (a hook: does nothing by default)
        """Called by ``run_fit`` once ``experiment``'s actors run and ``expand()``'s runs are
        added (``experiment.started_run_ids`` holds their ids)."""

    def on_end(self, experiment: Any) -> None:  # noqa: B027  (a hook: does nothing by default)
        """Called by ``Experiment.wait`` once every run is over, before it returns."""

    def default_pruner(self) -> Pruner | None:
        """The pruner ``run_fit`` uses when its ``pruner=`` is left out; None: rf-ray's default
        (successive halving). A group that prunes by itself (``RFOptuna``) says so here."""
        return None

    def pruning_note(self) -> str | None:
        """How the group prunes its runs itself, said when ``run_fit`` starts and in its summary;
        None when rf-ray's pruner does it all."""
        return None

    def steers_on(self) -> list[str]:
        """The chunk metrics the group itself reads to propose or judge runs (a Tune searcher's
        objective, ``RFOptuna``'s); ``run_fit`` refuses one that no run can report, as it
        refuses such a pruner metric (``rf_ray.metric_names``). None by default."""
        return []


@dataclasses.dataclass
class _Template(KnobTemplate):
    """One model config with its knobs located; a concrete choice is a fine-tuning run."""

    trainer_type: str = "SFT"
    has_generation_config: bool = False
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

    def validate(self, config: RunConfig) -> None:
        validate_run(config)

    def key(self, config: RunConfig) -> tuple[Any, ...]:
        return _run_key(config)

    def resolve(self, chosen: dict[Slot, Any]) -> RunConfig:
        # Runs must not share mutable literals (a target_modules list, say) with each other;
        # callables are code and stay shared.
        c = {s: dict(v) if s == "callables" else copy.deepcopy(v) for s, v in self.sections.items()}
        for (section, keys), value in chosen.items():
            set_path(c[section], keys, value if section == "callables" else copy.deepcopy(value))
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
) -> list[KnobTemplate]:
    """Locate every knob of every config in the group, checking types and trainer types."""
    if isinstance(configs, List):
        items = list(configs.values)
    elif isinstance(configs, (list, tuple)):
        if not configs:
            raise ConfigError("configs is an empty list; give at least one RFModelConfig")
        items = list(configs)
    else:
        items = [configs]
    templates: list[KnobTemplate] = []
    for i, item in enumerate(items):
        where = f"configs[{i}]." if len(items) > 1 else ""
        if is_evals_config(item):  # evals mode: a pipeline config set (rf_ray.evals.space)
            templates.extend(pipeline_templates(where, item))
            continue
        if isinstance(item, TrainerKnobs):
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
                f"configs[{i}] must be an RFModelConfig or RFSFTConfig/RFDPOConfig/RFGRPOConfig "
                f"(fit), or an evals config set dict with a generator config, got {item!r}"
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
    knobs: TrainerKnobs,
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
    slots = [(s, p) for s, values in sections.items() for p in knob_paths(values)]
    return _Template(
        where, sections, slots, knobs.trainer_type, cfg.generation_config is not None,
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

    def expand(self) -> list[Any]:
        pairs = [(t, run) for t in self._templates for run in t.grid()]
        for t, run in pairs:
            t.validate(run)
        runs = [run for _, run in pairs]
        distinct = len({t.key(r) for t, r in pairs})
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

    def expand(self) -> list[Any]:
        self._check_space_size()
        rng = random.Random(self.seed)
        pairs: list[tuple[KnobTemplate, Any]] = []
        seen: set[tuple[Any, ...]] = set()
        draws = 0
        while len(pairs) < self.num_runs:
            if draws >= _DRAWS_PER_RUN * self.num_runs:
                raise ConfigError(
                    f"num_runs={self.num_runs} but {draws} draws found only {len(pairs)} "
                    "distinct configs; lower num_runs or widen the space"
                )
            draws += 1
            template = self._templates[rng.randrange(len(self._templates))]
            run = template.draw(rng)
            key = template.key(run)
            if key not in seen:
                seen.add(key)
                pairs.append((template, run))
        for template, run in pairs:
            template.validate(run)
        return [run for _, run in pairs]

    def _check_space_size(self) -> None:
        if any(t.has_range() for t in self._templates):
            return  # infinite space
        points = sum(t.size() for t in self._templates)
        if points > _ENUMERATE_LIMIT and points >= self.num_runs:
            return  # too large to count; the draw limit catches a space with many repeats
        distinct = points
        if points <= _ENUMERATE_LIMIT:
            distinct = len({t.key(r) for t in self._templates for r in t.grid()})
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


def knob_spaces(
    configs: Any, trainer_type: str | None = None, *, who: str = "this search"
) -> list[tuple[RunConfig, dict[str, List | Range]]]:
    """Each template's knobs as ``(base run, {flat knob name: List or Range})``, one pair per
    config (a List of configs, or a List of ``peft_config`` / ``training_args``, gives several),
    for searchers that pick values themselves (Optuna). The base takes each knob's first value
    (a Range its low end). Knobs must sit at the top level of a field and not over functions:
    otherwise ``ConfigError`` naming the knob and what to do."""
    out = []
    for template in _templates(configs, _normalize_trainer_type(trainer_type), None):
        if not isinstance(template, _Template):
            raise ConfigError(
                f"{who} searches fine-tuning configs; evals pipelines use RFGridSearch"
            )
        space: dict[str, List | Range] = {}
        for slot in template.slots:
            section, keys = slot
            if section == "callables" or len(keys) > 1:
                raise ConfigError(
                    f"{template.path(slot)}: {who} searches over values at the top level of a "
                    "field, not over functions or nested dicts; use RFGridSearch or RFRandomSearch"
                )
            space[_FLAT_PREFIX[section] + keys[0]] = template.knob(slot)
        out.append((template.first(), space))
    return out


__all__ = [
    "ConfigGroup",
    "RFGridSearch",
    "RFRandomSearch",
    "knob_spaces",
    "validate_run",
]
