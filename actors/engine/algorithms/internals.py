"""What rf-ray takes from libraries' private internals, and the check that they are still there.

rf-ray drives TRL's trainers step by step (``actors.engine.time_sliced``), so it needs a few
members the libraries do not promise to keep: the token count ``Trainer.train()`` normalises a
loss by, accelerate's process-wide state, GRPO's generation counters. Every such touch lives in
one module per library, next to this one, and nowhere else:

* ``transformers_internals``: ``Trainer`` and ``GenerationMixin`` privates;
* ``accelerate_internals``: ``GradientState`` and the process-wide (Borg) state dicts;
* ``trl_internals``: TRL trainers' metric store and ``GRPOTrainer``'s generation counters;
* ``torch_internals``: the LR scheduler's last rates;
* ``langchain_internals``: a text splitter's sizes (evals mode names a pipeline's splitter by
  them).

Each module lists what it uses as ``PRIVATES`` (a ``Private`` per member: its owner, its
parameters, the version it was written against). ``tests/actors/test_library_internals.py``
runs ``problems`` on every one against the installed libraries: an upgrade that removes or
reshapes one fails there, naming the member and the version it was written against, instead of
deep inside a slice.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Private:
    """One private member of a library that rf-ray uses."""

    owner: str
    """``module:QualName`` of the class that holds it, e.g. ``transformers.trainer:Trainer``."""
    name: str
    """The member, e.g. ``_get_num_items_in_batch``."""
    params: tuple[str, ...] | None
    """A method's leading parameter names after ``self``, as rf-ray passes them; ``None`` for a
    data attribute."""
    written_against: str
    """The library and version the call was written and tested against, e.g. ``transformers
    5.25.0``."""
    instance_only: bool = False
    """A data attribute set in ``__init__``: only a built object has it (``problems`` then
    needs ``instance``)."""

    def __str__(self) -> str:
        return f"{self.owner.replace(':', '.')}.{self.name}"

    def owner_class(self) -> type:
        module, _, qualname = self.owner.partition(":")
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
        return target  # type: ignore[no-any-return]


def problems(private: Private, instance: Any = None) -> list[str]:
    """What no longer matches ``private`` in the installed library (empty: all is well).

    Checks that the member exists (on ``instance`` when given or when it is set per object,
    else on the class) and, for a method, that its leading parameters are the ones rf-ray
    passes."""
    where = f"{private} (rf-ray was written against {private.written_against})"
    try:
        owner = private.owner_class()
    except (ImportError, AttributeError) as exc:
        return [f"{where}: its class is gone: {exc!r}"]
    holder = instance if instance is not None else owner
    if private.instance_only and instance is None:
        return [f"{where}: set per object; check it on a built {owner.__qualname__}"]
    if not hasattr(holder, private.name):
        return [f"{where}: {owner.__qualname__} has no {private.name} any more"]
    if private.params is None:
        return []
    member = inspect.getattr_static(owner, private.name, None)
    if not callable(getattr(holder, private.name)):
        return [f"{where}: {private.name} is no longer a method ({type(member).__name__})"]
    names = [
        p.name
        for p in inspect.signature(getattr(owner, private.name)).parameters.values()
        if p.name != "self"
    ]
    if tuple(names[: len(private.params)]) != private.params:
        return [
            f"{where}: its parameters are now {names}, rf-ray passes {list(private.params)}; "
            "update the call in actors/engine/algorithms/ and this entry"
        ]
    return []
