"""An experiment's settings as one frozen, JSON-able value, and the default pruning metric.

``ExperimentSettings`` is built and checked once, in ``Experiment.run_fit``, from what the user
passed (``ExperimentSettings.of``), completed with what the runs and data decide
(``resolved``: the eval set, the default metric), stored once in the experiment's store
(``to_dict``, under the meta key ``settings``), handed whole to the scheduler, and read back on
resume (``from_meta``, which also reads stores written before the settings were one value).

The default metric rule (``default_metric``) lives here and nowhere else: eval_loss with an eval
set, else the chunk's mean train loss, lower is better; GRPO runs compare their mean reward,
higher is better.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from policies.errors import ConfigError
from policies.fusion import FusionPolicy
from policies.pruning import Pruner, SuccessiveHalving, pruner_from_dict

DEFAULT_SLICE_TIMEOUT = 1800.0
"""Seconds one slice (or placing a run on an executor) may take before its run fails.

Why 30 minutes: a slice is one chunk of one run (or ``max_slice_steps`` optimizer steps of it),
so on the hardware rf-ray targets (one GPU node, LoRA on a base model that fits it) a healthy
slice takes seconds to a few minutes; 30 minutes is an order of magnitude above that and still
bounds a hung reward or formatting function to half an hour of a shared executor. A run whose
slices are legitimately longer should be cut finer (more ``num_chunks``, or ``max_slice_steps``)
rather than given a larger bound: shorter slices also make ops and pruning react sooner.
"""

_FUSION = (
    "fusion must be True, False or a FusionPolicy(max_runs=..., max_tokens=...), got fusion={!r}"
)

SETTINGS_KEY = "settings"
"""The store's meta key that holds ``ExperimentSettings.to_dict()``."""

_LOOSE_KEYS = ("num_chunks", "seed", "pruner", "pruner_state", "fusion", "max_slice_steps")
"""Meta keys of a store written before the settings were one value (any one of them)."""


def default_metric(trainer_types: Iterable[str], has_eval: bool) -> tuple[str, str]:
    """``(metric, mode)`` when the user names none: GRPO runs (every run GRPO) compare their
    mean reward, higher is better; otherwise eval_loss with an eval set, else the chunk's mean
    train loss, lower is better. With no run yet (a Tune experiment that adds its runs later)
    the loss rule applies."""
    types = list(trainer_types)
    if types and all(t == "GRPO" for t in types):
        return "reward", "max"
    return ("eval_loss", "min") if has_eval else ("train_loss", "min")


def _slice_timeout(value: Any) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(
            f"slice_timeout must be a number of seconds > 0 or None (no deadline), got "
            f"slice_timeout={value!r}; the default is {DEFAULT_SLICE_TIMEOUT:g} s. For "
            "slices that legitimately take longer, use more num_chunks or max_slice_steps"
        )
    return float(value)


@dataclass(frozen=True)
class ExperimentSettings:
    """How an experiment trains, as one value (see the module docstring). Each field is checked
    in ``__post_init__``; a bad one raises ``ConfigError`` naming it and its value."""

    num_chunks: int = 4
    """Chunks per epoch of the training set; runs are compared after each chunk."""
    seed: int = 42
    """Seed of the data order and of each run's adapter initialisation."""
    pruner: Mapping[str, Any] = field(default_factory=lambda: SuccessiveHalving().settings())
    """The pruner's settings (``Pruner.settings()``: type, metric, mode and its parameters; no
    recorded values). ``new_pruner()`` builds a fresh pruner from it."""
    fusion: FusionPolicy | None = field(default_factory=FusionPolicy)
    """Admission rule of fused groups; ``None``: every run is time-sliced."""
    max_slice_steps: int | None = None
    """At most this many optimizer steps per slice (``None``: a slice is a whole chunk)."""
    slice_timeout: float | None = DEFAULT_SLICE_TIMEOUT
    """Wall-clock bound of one slice in seconds (``None``: none); see ``Grant.deadline_s``."""
    has_eval: bool = False
    """Whether the experiment has an eval set (runs evaluate at each chunk's end)."""

    def __post_init__(self) -> None:
        n, seed = self.num_chunks, self.seed
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"num_chunks must be an int >= 1, got num_chunks={n!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an int, got seed={seed!r}")
        if self.max_slice_steps is not None and (
            isinstance(self.max_slice_steps, bool)
            or not isinstance(self.max_slice_steps, int)
            or self.max_slice_steps < 1
        ):
            raise ConfigError(
                f"max_slice_steps must be None or an int >= 1, got {self.max_slice_steps!r}"
            )
        if self.fusion is not None and not isinstance(self.fusion, FusionPolicy):
            raise ConfigError(_FUSION.format(self.fusion))
        object.__setattr__(self, "slice_timeout", _slice_timeout(self.slice_timeout))
        if not isinstance(self.has_eval, bool):
            raise ConfigError(f"has_eval must be a bool, got has_eval={self.has_eval!r}")
        if not isinstance(self.pruner, Mapping):
            raise ConfigError(f"pruner must be a pruner's settings dict, got {self.pruner!r}")
        # A copy that no caller can change under us; unknown types and bad values raise here.
        object.__setattr__(self, "pruner", pruner_from_dict(dict(self.pruner)).settings())

    @classmethod
    def of(
        cls,
        num_chunks: Any = 4,
        seed: Any = 42,
        pruner: Any = None,
        fusion: Any = True,
        max_slice_steps: Any = None,
        slice_timeout: Any = DEFAULT_SLICE_TIMEOUT,
    ) -> ExperimentSettings:
        """The settings from ``run_fit``'s arguments (``pruner``: a ``Pruner`` or None for
        successive halving; ``fusion``: True, False or a ``FusionPolicy``). The metric and mode
        the user left out are filled by ``resolved`` once the runs are known."""
        if not isinstance(fusion, (bool, FusionPolicy)):
            raise ConfigError(_FUSION.format(fusion))
        if pruner is not None and not isinstance(pruner, Pruner):
            raise ConfigError(
                f"pruner must be a pruner such as SuccessiveHalving(), ASHA() or NoPruning(), "
                f"got {pruner!r}"
            )
        return cls(
            num_chunks=num_chunks,
            seed=seed,
            pruner=(pruner or SuccessiveHalving()).settings(),
            fusion=(FusionPolicy() if fusion is True else fusion) or None,
            max_slice_steps=max_slice_steps,
            slice_timeout=slice_timeout,
        )

    def resolved(
        self,
        trainer_types: Iterable[str],
        has_eval: bool,
        preferred: tuple[str, str | None] | None = None,
    ) -> ExperimentSettings:
        """These settings for runs of ``trainer_types`` on data with (or without) an eval set:
        the pruner's metric and mode, where the user gave none, by ``default_metric``, or the
        ``preferred`` metric and mode a config group names (``RFOptuna``: its objective)."""
        metric, mode = default_metric(trainer_types, has_eval)
        if preferred is not None:
            metric, mode = preferred[0], preferred[1] or mode
        pruner = dict(self.pruner)
        pruner["metric"] = pruner.get("metric") or metric
        pruner["mode"] = pruner.get("mode") or mode
        return replace(self, pruner=pruner, has_eval=has_eval)

    @property
    def metric(self) -> str:
        """The metric runs are compared on (``train_loss`` until ``resolved``)."""
        return str(self.pruner.get("metric") or "train_loss")

    @property
    def mode(self) -> str:
        """``"min"`` (lower is better) or ``"max"``."""
        return str(self.pruner.get("mode") or "min")

    def new_pruner(self) -> Pruner:
        """A fresh pruner of these settings (no values recorded)."""
        return pruner_from_dict(self.pruner)

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "num_chunks": self.num_chunks,
            "seed": self.seed,
            "pruner": dict(self.pruner),
            "fusion": self.fusion.to_dict() if self.fusion is not None else None,
            "max_slice_steps": self.max_slice_steps,
            "slice_timeout": self.slice_timeout,
            "has_eval": self.has_eval,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentSettings:
        fusion = data.get("fusion")
        return cls(
            **{**data, "fusion": FusionPolicy.from_dict(fusion) if fusion is not None else None}
        )

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> ExperimentSettings | None:
        """The settings stored in an experiment's meta table, or None if it has none yet (its
        store is being created). A store written before settings were one value kept them as
        loose keys (and the pruner's parameters only in its state): read the same way."""
        if SETTINGS_KEY in meta:
            return cls.from_dict(meta[SETTINGS_KEY])
        if not any(key in meta for key in _LOOSE_KEYS):
            return None
        pruner = meta.get("pruner_state") or meta.get("pruner") or SuccessiveHalving().settings()
        fusion = meta.get("fusion")
        return cls(
            num_chunks=meta.get("num_chunks", cls.num_chunks),
            seed=meta.get("seed", cls.seed),
            pruner=pruner_from_dict(pruner).settings(),
            fusion=FusionPolicy.from_dict(fusion) if fusion is not None else None,
            max_slice_steps=meta.get("max_slice_steps"),
            slice_timeout=meta.get("slice_timeout", DEFAULT_SLICE_TIMEOUT),
            has_eval=bool(meta.get("has_eval", False)),
        )


def stored_settings(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The settings as an experiment's meta table holds them, for display (``rf-ray status``,
    the dashboard): the ``settings`` value, or an older store's loose keys (its ``pruner`` a
    summary: type, metric, mode). Never raises: a reader shows what is there."""
    value = meta.get(SETTINGS_KEY)
    if isinstance(value, Mapping):
        return dict(value)
    return {key: meta[key] for key in _LOOSE_KEYS if key in meta and key != "pruner_state"}


__all__ = [
    "DEFAULT_SLICE_TIMEOUT",
    "SETTINGS_KEY",
    "ExperimentSettings",
    "default_metric",
    "stored_settings",
]
