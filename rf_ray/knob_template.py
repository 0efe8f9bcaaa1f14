"""One config with its knobs located: the expander both config kinds share.

``rf_ray.search`` expands configs into concrete runs through ``KnobTemplate``: a template holds a
config as named *sections* (plain dicts of its fields), finds every ``List`` and ``Range`` in them
(nested dicts included) and enumerates (grid) or draws (random) the concrete choices. What a
concrete choice becomes is the subclass's business: a fine-tuning run (``rf_ray.search``'s
``_Template``) or an evals pipeline (``rf_ray.evals.space``). Keeping the enumeration here, not
in ``rf_ray.search``, lets the evals package use it without importing the fit search.
"""

from __future__ import annotations

import abc
import itertools
import math
import random
from dataclasses import dataclass
from typing import Any

from policies.errors import ConfigError
from rf_ray.knobs import List, Range, is_knob

Slot = tuple[str, tuple[str, ...]]
"""Where a knob sits: a section of the template and the key path inside it (a knob may sit in
a nested dict, e.g. ``model_kwargs={"quantization_config": {"bits": List([4, 8])}}``)."""


def knob_paths(values: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Key paths of every knob in ``values``, in the order written, nested dicts included."""
    paths = []
    for key, value in values.items():
        if is_knob(value):
            paths.append((*prefix, key))
        elif isinstance(value, dict):
            paths.extend(knob_paths(value, (*prefix, str(key))))
    return paths


def get_path(values: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        values = values[key]
    return values


def set_path(values: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        values = values[key]
    values[path[-1]] = value


@dataclass
class KnobTemplate(abc.ABC):
    """A config's sections with every knob located: ``get_path(sections[s], p)`` is a knob for
    each slot ``(s, p)``; ``resolve`` turns one choice per slot into a concrete config."""

    where: str
    """Prefix naming this config in errors (``"configs[1]."``; empty for a lone config)."""
    sections: dict[str, dict[str, Any]]
    slots: list[Slot]
    """Every knob, in a stable order (the last varies fastest in a grid)."""

    @abc.abstractmethod
    def resolve(self, chosen: dict[Slot, Any]) -> Any:
        """The concrete config with ``chosen[slot]`` in place of each knob."""

    @abc.abstractmethod
    def validate(self, config: Any) -> None:
        """Raise ``ConfigError`` for a concrete config that cannot run."""

    @abc.abstractmethod
    def key(self, config: Any) -> tuple[Any, ...]:
        """Equal for concrete configs that would run identically (random search draws again)."""

    def path(self, slot: Slot) -> str:
        """The knob's name for messages."""
        section, keys = slot
        return f"{self.where}{section}.{'.'.join(keys)}"

    def knob(self, slot: Slot) -> Any:
        return get_path(self.sections[slot[0]], slot[1])

    def size(self) -> int:
        """Number of grid points (only meaningful when every knob is a List)."""
        return math.prod(len(self.knob(s).values) for s in self.slots)

    def has_range(self) -> bool:
        return any(isinstance(self.knob(s), Range) for s in self.slots)

    def grid(self) -> list[Any]:
        for slot in self.slots:
            if isinstance(self.knob(slot), Range):
                raise ConfigError(
                    f"{self.path(slot)}={self.knob(slot)!r}: grid search cannot expand a Range; "
                    "use RFRandomSearch, or a List of the values to try"
                )
        choices = itertools.product(*(self.knob(s).values for s in self.slots))
        return [self.resolve(dict(zip(self.slots, c))) for c in choices]

    def draw(self, rng: random.Random) -> Any:
        chosen = {}
        for slot in self.slots:
            knob = self.knob(slot)
            chosen[slot] = knob.sample(rng) if isinstance(knob, Range) else rng.choice(knob.values)
        return self.resolve(chosen)

    def first(self) -> Any:
        """The config with each knob's first value (a Range's low end)."""
        return self.resolve(
            {
                s: k.values[0] if isinstance(k, List) else k.low
                for s, k in ((s, self.knob(s)) for s in self.slots)
            }
        )


__all__ = ["KnobTemplate", "Slot", "get_path", "knob_paths", "set_path"]
