"""The accelerate privates rf-ray uses, each behind one function (see ``internals``).

accelerate keeps its state in process-wide (Borg) dicts that every ``Accelerator`` reads. One
executor holds many trainers (one per run), so rf-ray saves and puts back those dicts where a
trainer's creation or a lane of ``actors.engine.lockstep`` would otherwise change them for all.
"""

from __future__ import annotations

from typing import Any

from actors.engine.algorithms.internals import Private

VERSION = "accelerate 1.16.0"

PRIVATES = (
    Private("accelerate.state:GradientState", "_set_sync_gradients", ("sync_gradients",), VERSION),
    Private("accelerate.state:PartialState", "_shared_state", None, VERSION),
    Private("accelerate.state:AcceleratorState", "_shared_state", None, VERSION),
    Private("accelerate.state:GradientState", "_shared_state", None, VERSION),
)

SharedState = list[tuple[dict[str, Any], dict[str, Any]]]


def sync_gradients(trainer: Any) -> None:
    """Mark the trainer's accumulation window closed, as ``train()`` does before it clips and
    steps (``GradientState._set_sync_gradients(True)``)."""
    trainer.accelerator.gradient_state._set_sync_gradients(True)


def save_shared_state() -> SharedState:
    """accelerate's process-wide state dicts, each with a copy of its contents."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    return [
        (c._shared_state, dict(c._shared_state))
        for c in (PartialState, AcceleratorState, GradientState)
    ]


def restore_shared_state(saved: SharedState) -> None:
    """Put the copies back in place: every live ``Accelerator`` reads these very dicts."""
    for shared, copy in saved:
        shared.clear()
        shared.update(copy)


def gradient_state() -> dict[str, Any]:
    """A copy of accelerate's shared ``GradientState`` (its lists copied too: they are mutated in
    place as dataloaders begin and end)."""
    from accelerate.state import GradientState

    return {
        k: list(v) if isinstance(v, list) else v for k, v in GradientState._shared_state.items()
    }


def put_gradient_state(state: dict[str, Any]) -> None:
    """Make ``state`` (from ``gradient_state``) accelerate's shared ``GradientState``."""
    from accelerate.state import GradientState

    shared = GradientState._shared_state
    shared.clear()
    shared.update(state)
