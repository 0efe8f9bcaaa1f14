"""Several runs' TRL code driven in lock step, their model calls served together.

Fused training (``actors.engine.fused``) captures the one forward a trainer's ``compute_loss``
makes. Evaluation and GRPO's input preparation make many model calls, in an order TRL decides (DPO's
reference forward under ``use_adapter(model, None)``; GRPO's ``generate``, old and reference
log-probs, reward scoring). Rather than re-implement those loops, each run's own trainer method
(``trainer.evaluate()``, ``trainer._prepare_inputs(batch)``) runs in a *lane*: a thread that runs
only while the driver waits for it, so exactly one lane (or the driver) executes at any time and
nothing is ever concurrent. A lane runs until it calls the shared model (``forward``,
``generate``) and then parks with the call; once every live lane has parked or finished, the
driver serves all parked calls together (``serve``: one fused forward per compatible group, one
batched generation) and resumes each lane with its own result.

What makes a run a run stays per lane:

* **Adapter:** each lane's calls are served with its own adapter on its own rows
  (``actors.engine.lora_kernel``). ``model.disable_adapter()`` is lane-local inside the block:
  a lane in its reference context gets the base (adapters off) for its calls, without
  switching the adapters off for the lanes beside it.
* **RNG:** a lane runs with its run's own global RNG state, swapped in when it resumes and kept
  when it parks (GRPO samples its generations from the global RNG, as a time-sliced slice does).
* **Dataloader state:** accelerate keeps which dataloader is active, and whether it reached its
  end, in one process-wide ``GradientState``; ``gather_for_metrics`` reads it to drop the padding
  rows of a last, short batch. Each lane gets its own copy, swapped like the RNG (else a lane
  whose loop ended early would count its last batch at full size while another lane's loader
  still runs).
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

from actors.engine import lora_kernel
from actors.engine.algorithms.accelerate_internals import gradient_state, put_gradient_state
from actors.engine.generation import GenRequest, generate_multi
from policies.errors import LockstepTimeoutError

logger = logging.getLogger(__name__)

DEFAULT_STEP_TIMEOUT_S = 3600.0
"""How long the driver waits for one lane to reach its next model call. A lane runs user code
(reward functions, formatting); the executor's own slice deadline is the real bound, this one only
keeps a wedged lane from hanging the driver forever."""


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
    loader_state: dict[str, Any] = field(default_factory=dict)
    """The lane's copy of accelerate's process-wide ``GradientState``."""
    go: threading.Event = field(default_factory=threading.Event)
    """Set by the driver to let the lane run."""
    back: threading.Event = field(default_factory=threading.Event)
    """Set by the lane when it parks on a call or ends: the driver's turn."""
    thread: threading.Thread | None = None

    def swap_in(self) -> None:
        put_gradient_state(self.loader_state)
        if self.generator is not None:
            torch.set_rng_state(self.generator.get_state())
        if self.device_generator is not None:
            torch.cuda.set_rng_state(
                self.device_generator.get_state(), self.device_generator.device
            )

    def swap_out(self) -> None:
        self.loader_state = gradient_state()
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
        lane.go.clear()
        lane.back.set()
        lane.go.wait()
        lane.swap_in()
        lane.call = None
        if call.error is not None:
            raise call.error
        return call.result

    def _body(self, lane: Lane) -> None:
        self._local.lane = lane
        lane.go.wait()
        lane.swap_in()
        try:
            lane.result = lane.work()
        except BaseException as exc:  # the lane's run fails, not the driver
            lane.error = exc
        finally:
            lane.swap_out()
            lane.done = True
            lane.back.set()

    # ---------------------------------------------------------------- the driver
    def _resume(self, lane: Lane) -> None:
        """Let ``lane`` run until it parks on a call or finishes."""
        lane.back.clear()
        lane.go.set()
        if not lane.back.wait(self.step_timeout_s):
            raise LockstepTimeoutError(
                f"lane {lane.name} neither called the model nor finished within "
                f"{self.step_timeout_s:.0f} s"
            )

    def run(self, lanes: list[Lane]) -> None:  # noqa: C901  the scheduling loop: start, serve, fail, finish lanes
        """Run every lane to its end; each lane's ``result`` or ``error`` says how it ended."""
        names = {lane.name for lane in lanes}
        if len(names) != len(lanes):
            raise ValueError(f"lane names must be unique, got {[lane.name for lane in lanes]}")
        saved_rng = torch.get_rng_state()
        cuda = [lane.device_generator.device for lane in lanes if lane.device_generator is not None]
        saved_cuda_rng = torch.cuda.get_rng_state(cuda[0]) if cuda else None
        saved_loader_state = gradient_state()
        for lane in lanes:
            lane.loader_state = gradient_state()
        generation_config = getattr(self.model, "generation_config", None)
        with self._patched():
            for lane in lanes:
                lane.thread = threading.Thread(
                    target=self._body, args=(lane,), name=f"rf-lockstep-{lane.name}", daemon=True
                )
                lane.thread.start()
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
                        lane.go.set()
                    else:
                        logger.error("lockstep lane %s abandoned while running", lane.name)
                for lane in lanes:
                    if lane.done and lane.thread is not None:
                        lane.thread.join(timeout=self.step_timeout_s)
                torch.set_rng_state(saved_rng)
                if saved_cuda_rng is not None:
                    torch.cuda.set_rng_state(saved_cuda_rng, cuda[0])
                put_gradient_state(saved_loader_state)
                if generation_config is not None:
                    self.model.generation_config = generation_config

    def _serve(self, parked: list[tuple[Lane, Call]]) -> None:
        try:
            self.serve(parked)
        except Exception as exc:  # each waiting lane gets the error, none hangs
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


# ---------------------------------------------------------------------------- serving the calls
@dataclass
class ServeStats:
    """What a ``FusedServer`` did: how many calls it served fused, alone, or batched."""

    fused_forwards: int = 0
    """Fused forward passes (each over two or more lanes' rows)."""
    fused_calls: int = 0
    """Calls answered from a fused forward."""
    alone_calls: int = 0
    """Calls served one at a time (incompatible arguments, a fallback, or a lone caller)."""
    fallbacks: int = 0
    """Fused forwards that failed (e.g. out of memory) and were re-served alone."""
    multi_generations: int = 0
    """Batched multi-adapter ``generate_multi`` calls."""


class FusedServer:
    """Serves parked lanes' calls over the shared model.

    Forwards whose arguments can share a batch (same keys, same non-tensor values, same adapters
    on/off and grad mode) run as ONE forward: rows concatenated and right-padded
    (``lora_kernel.concat_rows``), each lane's adapter on its own rows
    (``lora_kernel.segmented_lora``); each lane gets its rows back
    (``lora_kernel.slice_outputs``). Two or more plain generations go to
    ``actors.engine.generation.generate_multi`` (one batched decode); any other generation runs
    alone with the lane's adapter active and its RNG stream in place (what a time-sliced run
    does). A fused forward or batched generation that fails is re-served one call at a time; a
    call that fails alone fails its lane.
    """

    def __init__(self, model: Any, pad_id: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self.stats = ServeStats()

    def __call__(self, parked: list[tuple[Lane, Call]]) -> None:
        groups: dict[Any, list[tuple[Lane, Call]]] = {}
        alone: list[tuple[Lane, Call]] = []
        generations: list[tuple[Lane, Call]] = []
        for lane, call in parked:
            if call.kind == "generate":
                generations.append((lane, call))
                continue
            key = _forward_key(call)
            if key is None:
                alone.append((lane, call))
            else:
                groups.setdefault(key, []).append((lane, call))
        for group in groups.values():
            if len(group) < 2:
                alone += group
            else:
                self._fused_forward(group)
        for lane, call in alone:
            self._alone(lane, call)
        if generations:
            self._generate(generations)

    def _fused_forward(self, group: list[tuple[Lane, Call]]) -> None:
        calls = [call for _, call in group]
        try:
            combined, lengths = lora_kernel.concat_rows([c.kwargs for c in calls], self.pad_id)
        except lora_kernel.NotFusableError:
            for lane, call in group:
                self._alone(lane, call)
            return
        longest = max(lengths)
        segments, start = [], 0
        for lane, call in group:
            rows = int(call.kwargs["input_ids"].shape[0])
            segments.append(
                lora_kernel.Segment(lane.adapter, start, start + rows, _dropout_stream(lane))
            )
            start += rows
        first = calls[0]
        try:
            with torch.set_grad_enabled(first.grad):
                if first.adapters_off:
                    with self.model.disable_adapter():
                        out = self.model(**combined)
                else:
                    with lora_kernel.segmented_lora(self.model, segments):
                        out = self.model(**combined)
        except Exception as exc:  # out of memory and the like: serve one by one
            logger.warning(
                "fused forward of %d calls failed, serving them alone: %r", len(calls), exc
            )
            self.stats.fallbacks += 1
            for lane, call in group:
                self._alone(lane, call)
            return
        self.stats.fused_forwards += 1
        self.stats.fused_calls += len(calls)
        for seg, call, length in zip(segments, calls, lengths):
            call.result = lora_kernel.slice_outputs(out, seg.start, seg.stop, longest - length)

    def _alone(self, lane: Lane, call: Call) -> None:
        """One call as the time-sliced run would make it: its adapter active, its RNG in place."""
        self.stats.alone_calls += 1
        lane.swap_in()
        try:
            with torch.set_grad_enabled(call.grad), self._adapter(lane, call):
                if call.kind == "generate":
                    call.result = self.model.generate(*call.args, **call.kwargs)
                else:
                    call.result = self.model(*call.args, **call.kwargs)
        except Exception as exc:  # raised in the lane that made the call
            call.error = exc
        finally:
            lane.swap_out()

    def _adapter(self, lane: Lane, call: Call) -> contextlib.AbstractContextManager[Any]:
        self.model.set_adapter(lane.adapter)
        if call.adapters_off:
            return self.model.disable_adapter()  # type: ignore[no-any-return]
        return contextlib.nullcontext()

    def _generate(self, generations: list[tuple[Lane, Call]]) -> None:
        plain = [(lane, call) for lane, call in generations if _plain_generation(call)]
        if len(plain) < 2:
            for lane, call in generations:
                self._alone(lane, call)
            return
        requests = [
            GenRequest(
                adapter=lane.adapter,
                input_ids=call.kwargs["input_ids"],
                attention_mask=call.kwargs["attention_mask"],
                generation_config=call.kwargs["generation_config"],
                generator=_dropout_stream(lane),
            )
            for lane, call in plain
        ]
        try:
            with torch.no_grad():
                outputs = generate_multi(self.model, requests)
        except Exception as exc:  # serve them one by one
            logger.warning("multi-adapter generation failed, generating per run: %r", exc)
            self.stats.fallbacks += 1
            outputs = None
        done = set()
        if outputs is not None:
            self.stats.multi_generations += 1
            for (_, call), out in zip(plain, outputs):
                call.result = out
                done.add(id(call))
        for lane, call in generations:
            if id(call) not in done:
                self._alone(lane, call)


def _forward_key(call: Call) -> Any:
    """Calls with equal keys can share one forward; ``None``: serve alone."""
    if call.args or "input_ids" not in call.kwargs:
        return None
    fixed = []
    for key, value in sorted(call.kwargs.items()):
        if isinstance(value, torch.Tensor):
            if value.dim() != 2 or value.is_floating_point():
                return None
            fixed.append((key, "tensor"))
        else:
            try:
                hash(value)
            except TypeError:
                return None
            fixed.append((key, value))
    return (call.adapters_off, call.grad, tuple(fixed))


def _plain_generation(call: Call) -> bool:
    keys = set(call.kwargs)
    return (
        not call.args
        and not call.adapters_off
        and {"input_ids", "attention_mask", "generation_config"} <= keys
        and keys <= {"input_ids", "attention_mask", "generation_config"}
    )


def _dropout_stream(lane: Lane) -> torch.Generator | None:
    """The lane's RNG stream on the model's device: dropout and sampling draw from it."""
    return lane.device_generator if lane.device_generator is not None else lane.generator
