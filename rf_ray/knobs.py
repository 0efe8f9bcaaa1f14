"""The knobs of a search space: ``List`` (a choice among values) and ``Range`` (a numeric interval).

A knob may stand for any field of a config (``RFSFTConfig(learning_rate=List([1e-4, 2e-4]))``);
``rf_ray.search`` expands the knobs into concrete runs. Plain Python lists inside a config are
literal values (``target_modules=["q_proj", "v_proj"]``), never knobs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from policies.errors import ConfigError


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
            if not is_number(v) or (dtype is int and v != int(v)):
                kind = "an integer" if dtype is int else "a finite number"
                raise ConfigError(f"Range({name}={v!r}) must be {kind}")
        if low > high or (dtype is float and low == high):
            rel = "<=" if dtype is int else "<"
            raise ConfigError(f"Range(low={low!r}, high={high!r}) needs low {rel} high")
        if log and low <= 0:
            raise ConfigError(f"Range(low={low!r}, log=True) needs low > 0; raise low or drop log")
        if step is not None and (not is_number(step) or step <= 0 or log):
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


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


__all__ = ["List", "Range", "is_knob", "is_number"]
