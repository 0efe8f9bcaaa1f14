"""Several runs' TRL code driven in lock step, their model calls served together.

Fused training (``actors.fused``) captures the one forward a trainer's ``compute_loss`` makes.
Evaluation and GRPO's input preparation make many model calls, in an order TRL decides (DPO's
reference forward under ``use_adapter(model, None)``; GRPO's ``generate``, old and reference
log-probs, reward scoring). Rather than re-implement those loops, each run's own trainer method
(``trainer.evaluate()``, ``trainer._prepare_inputs(batch)``) runs in a *lane*: a thread that runs
only while the driver waits for it, so exactly one lane (or the driver) executes at any time and
nothing is ever concurrent. A lane runs until it calls the shared model (``forward``,
``generate``) and then parks with the call; once every live lane has parked or finished, the
driver serves all parked calls together (``serve``: one fused forward per compatible group, one
batched generation) and resumes each lane with its own result.

What makes a run a run stays per lane:

* **Adapter:** each lane's calls are served with its own adapter on its own rows (the segmented
  LoRA forward of ``actors.fused``). ``model.disable_adapter()`` is lane-local inside the block:
  a lane in its reference context gets the base (adapters off) for its calls, without switching
  the adapters off for the lanes beside it.
* **RNG:** a lane runs with its run's own global RNG state, swapped in when it resumes and kept
  when it parks (GRPO samples its generations from the global RNG, as a time-sliced slice does).
* **Failure:** an exception in a lane ends that lane only; its call's error (say, a forward out
  of memory even when served alone) is raised inside the lane that made it.

Grad mode and autocast are thread-local in torch: the driver serves no-grad calls under
``torch.no_grad`` and under the executor's autocast; a call made with grad enabled is served
alone with grad (no lane does this in evaluation or input preparation).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

DEFAULT_STEP_TIMEOUT_S = 3600.0
"""How long the driver waits for one lane to reach its next model call. A lane runs user code
(reward functions, formatting); the executor's own slice deadline is the real bound, this one only
keeps a wedged lane from hanging the driver forever."""


class LockstepTimeoutError(RuntimeError):
    """A lane neither called the model nor finished within the step timeout."""


@dataclass
class Call:
    """One model call a lane made, waiting to be served."""

    kind: str
    """``"forward"`` or ``"generate"``."""
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    adapters_off: bool
    """Made inside the lane's ``disable_adapter()``: the base model answers it."""
    grad: bool
    """Grad mode of the lane when it called."""
    result: Any = None
    error: BaseException | None = None


@dataclass
class Lane:
    """One run's thread: its adapter, its RNG streams and the work it runs."""

    name: str
    adapter: str
    work: Callable[[], Any]
    generator: torch.Generator | None = None
    """The run's CPU RNG stream, swapped into the global RNG while the lane runs."""
    device_generator: torch.Generator | None = None
    """The run's CUDA RNG stream (``None`` on the CPU)."""
    call: Call | None = None
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    adapters_off: bool = False
    _go: threading.Event = field(default_factory=threading.Event)
    _back: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def swap_in(self) -> None:
        if self.generator is not None:
            torch.set_rng_state(self.generator.get_state())
        if self.device_generator is not None:
            torch.cuda.set_rng_state(self.device_generator.get_state(), self.device_generator.device)

    def swap_out(self) -> None:
        if self.generator is not None:
            self.generator.set_state(torch.get_rng_state())
        if self.device_generator is not None:
            self.device_generator.set_state(torch.cuda.get_rng_state(self.device_generator.device))


Serve = Callable[[list[tuple[Lane, Call]]], None]
"""Serves parked calls: sets each ``call.result`` (or ``call.error``)."""


class Lockstep:
    """Runs lanes over one shared ``PeftModel`` whose calls ``serve`` answers together."""

    def __init__(self, model: Any, serve: Serve, step_timeout_s: float = DEFAULT_STEP_TIMEOUT_S):
        self.model = model
        self.serve = serve
        self.step_timeout_s = step_timeout_s
        self._local = threading.local()
        self.original_forward = model.forward
        self.original_generate = model.generate
        self.original_disable_adapter = model.disable_adapter

    # ---------------------------------------------------------------- inside a lane
    def _lane(self) -> Lane | None:
        return getattr(self._local, "lane", None)

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        lane = self._lane()
        if lane is None:  # the driver itself, serving
            return self.original_forward(*args, **kwargs)
        return self._park(lane, Call("forward", args, kwargs, lane.adapters_off, _grad()))

    def _generate(self, *args: Any, **kwargs: Any) -> Any:
        lane = self._lane()
        if lane is None:
            return self.original_generate(*args, **kwargs)
        return self._park(lane, Call("generate", args, kwargs, lane.adapters_off, _grad()))

    def _disable_adapter(self) -> contextlib.AbstractContextManager[None]:
        lane = self._lane()
        if lane is None:
            return self.original_disable_adapter()  # type: ignore[no-any-return]
        return _lane_adapters_off(lane)

    def _park(self, lane: Lane, call: Call) -> Any:
        lane.call = call
        lane.swap_out()
        lane._go.clear()
        lane._back.set()
        lane._go.wait()
        lane.swap_in()
        lane.call = None
        if call.error is not None:
            raise call.error
        return call.result

    def _body(self, lane: Lane) -> None:
        self._local.lane = lane
        lane._go.wait()
        lane.swap_in()
        try:
            lane.result = lane.work()
        except BaseException as exc:  # noqa: BLE001 (the lane's run fails, not the driver)
            lane.error = exc
        finally:
            lane.swap_out()
            lane.done = True
            lane._back.set()

    # ---------------------------------------------------------------- the driver
    def _resume(self, lane: Lane) -> None:
        """Let ``lane`` run until it parks on a call or finishes."""
        lane._back.clear()
        lane._go.set()
        if not lane._back.wait(self.step_timeout_s):
            raise LockstepTimeoutError(
                f"lane {lane.name} neither called the model nor finished within "
                f"{self.step_timeout_s:.0f} s"
            )

    def run(self, lanes: list[Lane]) -> None:
        """Run every lane to its end; each lane's ``result`` or ``error`` says how it ended."""
        names = {lane.name for lane in lanes}
        if len(names) != len(lanes):
            raise ValueError(f"lane names must be unique, got {[lane.name for lane in lanes]}")
        saved_rng = torch.get_rng_state()
        generation_config = getattr(self.model, "generation_config", None)
        with self._patched():
            for lane in lanes:
                lane._thread = threading.Thread(
                    target=self._body, args=(lane,), name=f"rf-lockstep-{lane.name}", daemon=True
                )
                lane._thread.start()
            live = list(lanes)
            try:
                while live:
                    for lane in live:
                        self._resume(lane)
                    live = [lane for lane in live if not lane.done]
                    parked = [(lane, lane.call) for lane in live if lane.call is not None]
                    if parked:
                        self._serve(parked)  # type: ignore[arg-type]
            finally:
                for lane in live:  # only after a timeout: free the parked lanes, leave a wedged one
                    if lane.call is not None and not lane.done:
                        lane.call.error = LockstepTimeoutError(f"lane {lane.name} abandoned")
                        lane._go.set()
                    else:
                        logger.error("lockstep lane %s abandoned while running", lane.name)
                for lane in lanes:
                    if lane.done and lane._thread is not None:
                        lane._thread.join(timeout=self.step_timeout_s)
                torch.set_rng_state(saved_rng)
                if generation_config is not None:
                    self.model.generation_config = generation_config

    def _serve(self, parked: list[tuple[Lane, Call]]) -> None:
        try:
            self.serve(parked)
        except Exception as exc:  # noqa: BLE001 (each waiting lane gets the error, none hangs)
            for _, call in parked:
                if call.result is None and call.error is None:
                    call.error = exc

    @contextlib.contextmanager
    def _patched(self) -> Iterator[None]:
        model = self.model
        names = ("forward", "generate", "disable_adapter")
        own = {n: model.__dict__[n] for n in names if n in model.__dict__}
        model.forward = self._forward
        model.generate = self._generate
        model.disable_adapter = self._disable_adapter
        try:
            yield
        finally:
            for name in names:
                if name in own:
                    setattr(model, name, own[name])
                else:
                    delattr(model, name)


@contextlib.contextmanager
def _lane_adapters_off(lane: Lane) -> Iterator[None]:
    previous = lane.adapters_off
    lane.adapters_off = True
    try:
        yield
    finally:
        lane.adapters_off = previous


def _grad() -> bool:
    return torch.is_grad_enabled()
