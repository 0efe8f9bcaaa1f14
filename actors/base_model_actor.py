"""``BaseModelActor``: the Ray shell around ``Executor`` (one per GPU, or one on the CPU).

Each method hands its request to the executor and returns plain data. Run specs arrive as
cloudpickled bytes and are unpacked here, so the trial actors that forward them never import
torch or TRL. This module itself imports neither at import time: every trial holds a handle to
this actor, and Ray imports the actor's module wherever a handle is deserialized (torch there
would add about 250 MiB to every trial process).

The actor is async so that it can gather a fused group: the scheduler grants a group of runs one
pass together, each run's trial calls ``run_slice`` with the group, and the call that completes
the group trains all of them in one fused pass (``Executor.run_fused``); the others await its
outcome. Tensor work runs on one worker thread, one request at a time, so the executor is never
entered concurrently and the event loop stays free to gather groups. Whatever the worker raises
reaches the awaiting call: exceptions that asyncio cannot carry (StopIteration) or that are not
``Exception`` (KeyboardInterrupt, SystemExit, GeneratorExit from user code) come back as the run's
``RunFailedError``. ``activity`` answers from the event loop even while the worker is stuck.

Checkpoints are written in the background (``actors.engine.ckpt_writer``): a slice's state is
captured into host memory when its compute ends, and the worker takes the next grant while a
writer thread puts it on disk; the run's trial waits for ``wait_durable`` before it reports, so
the store records only durable slices.

Slices are idempotent: a call retried after its reply was lost returns the slice's cached outcome
instead of training again; a run not resident at the grant's start step raises
``RunNotPlacedError`` (see ``Executor.placement``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors import logs
from actors.engine.ckpt_writer import CheckpointWriter
from actors.engine.evals.spec import is_pipeline
from actors.engine.timeline import SliceTiming
from actors.messages import SliceResult
from policies.errors import CheckpointError, RunFailedError, RunNotPlacedError

logger = logging.getLogger(__name__)

GROUP_WAIT_SECONDS = 30.0
"""How long the first member of a fused group waits for the others. A member whose trial does not
come in time (it died, or is being re-placed slowly) trains on its own when it does come."""
DURABLE_WAIT_SECONDS = 600.0
"""Bound on waiting for one checkpoint write (``wait_durable``)."""
API_THREADS = 4
"""Evals API pipelines whose shards run at once (each sends its batches' prompts
concurrently too: ``actors.engine.evals.api_client``)."""


@dataclasses.dataclass
class _Gathering:
    """A fused group being gathered: its members, those that have called in, and its outcome."""

    key: tuple[int, ...]
    outcome: asyncio.Future[dict[int, Any]]
    arrived: dict[int, tuple[int, int, bool, str]] = dataclasses.field(default_factory=dict)
    """Members that called in: ``(start_step, end_step, evaluate, run_dir)`` by run id."""
    work: Callable[..., dict[int, Any]] | None = None
    """What runs the gathered group (None: a fused training pass; evals: one shard's step)."""


class BaseModelActor:
    def __init__(
        self,
        create_model_fn: Any,
        train_dataset: Any,
        eval_dataset: Any = None,
        device: str | None = None,
        cpu_threads: int | None = None,
        log_dir: str | None = None,
    ) -> None:
        logs.quiet()  # before torch, PEFT and bitsandbytes load
        if log_dir is not None:  # the experiment's directory: its log file gets this process's
            logs.attach(log_dir, "executor")
        import torch

        from actors.engine.executor import Executor

        if cpu_threads:
            # Ray pins OMP_NUM_THREADS to the actor's CPU share; the executor is the only
            # process doing tensor work, so let it use the cores it was given explicitly.
            torch.set_num_threads(cpu_threads)
        if isinstance(train_dataset, str):
            # A path to the experiment's Arrow copy (datasets.save_to_disk): a restarted actor
            # reloads it from disk rather than from object-store arguments that may be gone.
            import datasets

            train_dataset = datasets.load_from_disk(train_dataset)
            if isinstance(eval_dataset, str):
                eval_dataset = datasets.load_from_disk(eval_dataset)
        self.executor = Executor(create_model_fn, train_dataset, eval_dataset, device=device)
        self.owners: dict[int, str | None] = {}
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="executor")
        self._api_threads = concurrent.futures.ThreadPoolExecutor(
            API_THREADS, thread_name_prefix="api-shard"
        )
        """Evals API pipelines' shards run here, beside the worker (``run_slice``)."""
        self._groups: dict[tuple[int, ...], _Gathering] = {}
        """Fused groups still gathering their members, by sorted member ids."""
        self._unplaced: set[int] = set()
        """Runs whose last ``add_run`` failed: their trial has failed them, so no fused group
        waits for them to call in."""
        self._worker_thread: int | None = None
        """``threading.get_ident()`` of the worker thread, once it has run something."""
        self.writer = CheckpointWriter()
        """Writes checkpoints on its own thread while the worker trains the next grant."""
        self.pipelines: Any = None
        """Evals pipelines placed here (``actors.engine.evals.engine.PipelineEngine``), made
        on the first one; fine-tuning runs never create it."""
        self.exp_dir = log_dir
        """The experiment's directory (the session passes it as ``log_dir``): evals pipelines
        read their stored corpus from it."""

    def _pipeline_engine(self) -> Any:
        if self.pipelines is None:
            from actors.engine.evals.engine import PipelineEngine

            self.pipelines = PipelineEngine(
                self.executor, self.executor.train_dataset, self.exp_dir
            )
        return self.pipelines

    def _is_pipeline(self, run_id: int) -> bool:
        return self.pipelines is not None and run_id in self.pipelines.pipelines

    async def _api_shard(self, arrived: dict[int, tuple[int, int, bool, str]]) -> Any:
        """An evals API pipeline's shard, on its own thread rather than the executor's worker.

        Why: its time is spent waiting on a network endpoint (latency, the rate limiter's
        sliding minute, retries with backoff), not on the device. On the worker it would hold up
        every local pipeline's generation and every training slice queued behind it for that
        long; here the resident model keeps working meanwhile (the scheduler grants such a
        pipeline without counting it against the executor: ``RunEntry.exclusive``). What it
        shares with the worker's work (retrieval models, the pipeline table) is safe to share:
        retrieval holds ``Retrieval.lock``, each pipeline's record is its own."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._api_threads, self._beside_worker, arrived)

    def _beside_worker(self, arrived: dict[int, tuple[int, int, bool, str]]) -> Any:
        try:
            return self._shard(arrived)
        except (StopIteration, StopAsyncIteration) as exc:  # see _on_worker
            raise as_run_failure(exc, f"running pipelines {sorted(arrived)}") from exc
        except Exception:
            raise
        except BaseException as exc:
            raise as_run_failure(exc, f"running pipelines {sorted(arrived)}") from exc

    async def _work(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the executor's worker thread (requests queue there, in order)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._worker, self._on_worker, fn, *args
        )

    def _on_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn``; turn what asyncio cannot carry back into the run's ``RunFailedError``.

        A StopIteration set on the future of ``run_in_executor`` never reaches the awaiting
        coroutine (asyncio refuses it and, in Python 3.11, the call hangs), and a
        BaseException that is not an Exception would unwind the actor's event loop.
        """
        self._worker_thread = threading.get_ident()
        try:
            return fn(*args)
        except (StopIteration, StopAsyncIteration) as exc:
            raise as_run_failure(exc, self.executor.phase) from exc
        except Exception:
            raise
        except BaseException as exc:
            raise as_run_failure(exc, self.executor.phase) from exc
        finally:
            self.executor.phase = "idle"

    async def ready(self) -> dict[str, Any]:
        return {"device": str(self.executor.device), "pid": os.getpid()}

    async def activity(self) -> str:
        """What the worker thread is doing now: the executor's phase and, when busy, its
        innermost frames (so a hung user function is named). Answers while the worker is stuck:
        it runs on the event loop, not on the worker."""
        phase = self.executor.phase
        frames = sys._current_frames()
        frame = frames.get(self._worker_thread) if self._worker_thread is not None else None
        if phase == "idle" or frame is None:
            return phase
        stack = traceback.extract_stack(frame)[-3:]
        where = " <- ".join(f"{f.name} ({f.filename}:{f.lineno})" for f in reversed(stack))
        return f"{phase}; in {where}"

    async def add_run(
        self, spec_blob: bytes, checkpoint_path: str | None = None, owner: str | None = None
    ) -> None:
        """Register a run (restored from ``checkpoint_path`` if given) for trial ``owner``.

        A run already resident just changes owner: a resumed run's new trial may arrive before
        the old trial has finished cleaning up, and the old one must not evict it then.
        """
        import cloudpickle

        spec = await self._work(cloudpickle.loads, spec_blob)
        try:
            run_id = await self._work(self._add_run, spec, checkpoint_path)
        except BaseException:
            # A run that cannot be placed (its trainer refused its config) never calls in:
            # the other members of a fused group it belongs to train without waiting for it.
            self._unplaced.add(int(spec.run_id))
            for gathering in list(self._groups.values()):
                if self._complete(gathering):
                    self._launch(gathering)
            raise
        self._unplaced.discard(run_id)
        self.owners[run_id] = owner

    def _add_run(self, spec: Any, checkpoint_path: str | None) -> int:
        """Register the run; a resident copy at another step than the checkpoint's (a slice
        whose result was never recorded) is replaced by the checkpoint's state."""
        from actors.storage import checkpoint

        if is_pipeline(spec):  # evals mode: a pipeline, placed from its last state file
            return self._add_pipeline(spec, checkpoint_path)
        record = self.executor.registry.get(spec.run_id)
        if record is not None:
            target = checkpoint.steps_done(checkpoint_path) if checkpoint_path else 0
            if record.steps_done == target:
                return int(spec.run_id)
            logger.info(
                "run %s is resident at step %s; re-seeding it from step %s (%s)",
                spec.run_id,
                record.steps_done,
                target,
                checkpoint_path,
            )
            self.executor.remove_run(spec.run_id)
        state = checkpoint.load(checkpoint_path) if checkpoint_path else None
        self.executor.add_run(spec, state)
        return int(spec.run_id)

    def _add_pipeline(self, spec: Any, state_path: str | None) -> int:
        from actors.engine.evals.engine import read_state

        engine = self._pipeline_engine()
        record = engine.pipelines.get(spec.run_id)
        target = read_state(state_path) if state_path else None
        if record is not None and record.rows_done == (target or {}).get("rows_done", 0):
            return int(spec.run_id)
        engine.remove(spec.run_id)
        engine.add(spec, target)
        return int(spec.run_id)

    async def load_base(self, spec_blob: bytes) -> bool:
        """Load the base model a run needs, ahead of its first ``add_run`` (start-up overlaps:
        the base loads while the trials start). True if loaded; a failure is only logged here:
        the run's own ``add_run`` raises it as the run's error."""
        try:
            await self._work(self._load_base, spec_blob)
            return True
        except Exception:
            logger.warning("loading the base model ahead of its runs failed", exc_info=True)
            return False

    def _load_base(self, spec_blob: bytes) -> None:
        import cloudpickle

        spec = cloudpickle.loads(spec_blob)
        if is_pipeline(spec):  # evals: the resident model, a vLLM engine, or nothing (API)
            self._pipeline_engine().load_generator(spec)
            return
        self.executor.load_base(spec)

    async def has_run(self, run_id: int) -> bool:
        return run_id in self.executor.registry or self._is_pipeline(run_id)

    async def run_slice(
        self,
        run_id: int,
        start_step: int,
        end_step: int,
        evaluate: bool,
        run_dir: str,
        group: list[int] | None = None,
    ) -> SliceResult:
        """Train one slice, then queue the run's checkpoint (written in the background;
        ``wait_durable`` says when it is on disk); return the outcome.

        With a ``group`` of several runs (a fused grant), the call waits for the group's other
        members and they train together in one pass; each call returns its own run's outcome
        and raises its own run's error.

        Idempotent: a slice that already ran returns its cached outcome; a run not resident here
        at ``start_step`` raises ``RunNotPlacedError`` (re-place it with ``add_run``, retry).
        """
        evals = self._is_pipeline(run_id)
        gathering = self._groups.get(tuple(sorted(group or ())))
        if gathering is None and group and len(group) > 1:
            gathering = self._gather(tuple(sorted(group)), self._shard if evals else None)
        if gathering is None or run_id in gathering.arrived:
            # Time-sliced; or a member too late for its group, or a retried call: on its own.
            if evals:
                arrived = {run_id: (start_step, end_step, evaluate, run_dir)}
                if self.pipelines.is_api(run_id):
                    outcome = (await self._api_shard(arrived))[run_id]
                else:
                    outcome = (await self._work(self._shard, arrived))[run_id]
                if isinstance(outcome, BaseException):
                    raise outcome
                return outcome  # type: ignore[no-any-return]
            return await self._work(self._solo, run_id, start_step, end_step, evaluate, run_dir)
        gathering.arrived[run_id] = (start_step, end_step, evaluate, run_dir)
        if self._complete(gathering):
            self._launch(gathering)
        outcome = (await asyncio.shield(gathering.outcome))[run_id]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _gather(
        self, key: tuple[int, ...], work: Callable[..., dict[int, Any]] | None = None
    ) -> _Gathering:
        """Start gathering a fused group; it trains when complete, or after the wait."""
        loop = asyncio.get_running_loop()
        gathering = _Gathering(key=key, outcome=loop.create_future(), work=work)
        self._groups[key] = gathering
        loop.call_later(GROUP_WAIT_SECONDS, self._launch, gathering)
        return gathering

    def _complete(self, gathering: _Gathering) -> bool:
        """Whether every member that can still call in has (none left to wait for)."""
        waiting = set(gathering.key) - set(gathering.arrived) - self._unplaced
        return bool(gathering.arrived) and not waiting

    def _launch(self, gathering: _Gathering) -> None:
        """Train the members that have arrived (all of them, or those in time)."""
        if self._groups.get(gathering.key) is not gathering:
            return  # already launched
        del self._groups[gathering.key]
        missing = sorted(set(gathering.key) - set(gathering.arrived) - self._unplaced)
        if missing:
            logger.warning("fused group %s: runs %s did not come in time", gathering.key, missing)
        work = gathering.work or self._fused_timed
        task = asyncio.ensure_future(self._work(work, dict(gathering.arrived)))
        future = gathering.outcome

        def _done(t: asyncio.Future[dict[int, Any]]) -> None:
            if t.cancelled():
                future.cancel()
            elif t.exception() is not None:
                future.set_exception(t.exception())  # type: ignore[arg-type]
            else:
                future.set_result(t.result())

        task.add_done_callback(_done)

    def _solo(
        self, run_id: int, start_step: int, end_step: int, evaluate: bool, run_dir: str
    ) -> SliceResult:
        timeline, started = self.executor.timeline, time.time()
        compute = timeline.compute_seconds
        result = self.executor.run_slice(run_id, end_step, evaluate=evaluate, start_step=start_step)
        if result.checkpoint is not None:  # a retried call's cached outcome: nothing ran
            return result
        result = self._checkpointed(result, run_dir)
        timeline.slices.append(
            SliceTiming(run_id, started, time.time(), timeline.compute_seconds - compute)
        )
        return result

    def _shard(self, arrived: dict[int, tuple[int, int, bool, str]]) -> dict[int, Any]:
        """Evals: a group of pipelines over one shard (``PipelineEngine.run_group``); each
        pipeline's state is durable when this returns."""
        grants = {rid: (start, end, run_dir) for rid, (start, end, _, run_dir) in arrived.items()}
        outcomes: dict[int, Any] = self._pipeline_engine().run_group(grants)
        for rid, outcome in outcomes.items():
            if isinstance(outcome, BaseException) and not (
                isinstance(outcome, Exception)
                and not isinstance(outcome, (StopIteration, StopAsyncIteration))
            ):
                outcomes[rid] = as_run_failure(outcome, f"running pipeline {rid}")
        return outcomes

    def _fused_timed(self, arrived: dict[int, tuple[int, int, bool, str]]) -> dict[int, Any]:
        """``_fused``, its time on the worker recorded in the executor's timeline."""
        started = time.time()
        try:
            return self._fused(arrived)
        finally:
            self.executor.timeline.slices.append(
                SliceTiming(min(arrived), started, time.time(), None, runs=len(arrived))
            )

    def _fused(self, arrived: dict[int, tuple[int, int, bool, str]]) -> dict[int, Any]:
        outcomes: dict[int, Any] = {}
        grants = []
        for rid, (start, end, evaluate, _) in sorted(arrived.items()):
            try:  # each member is checked: a retried member gets its cached outcome
                cached = self.executor.placement(rid, start, end)
            except Exception as exc:
                outcomes[rid] = exc
                continue
            if cached is not None:
                outcomes[rid] = cached
            else:
                grants.append((rid, end, evaluate))
        for run_id, result in self.executor.run_fused(grants).items():
            if isinstance(result, BaseException):
                carried = isinstance(result, Exception) and not isinstance(
                    result, (StopIteration, StopAsyncIteration)
                )
                outcomes[run_id] = (
                    result if carried else as_run_failure(result, f"training run {run_id}")
                )
                continue
            try:
                outcomes[run_id] = self._checkpointed(result, arrived[run_id][3])
            except Exception as exc:  # e.g. a full disk: this run's slice is not durable
                outcomes[run_id] = exc
        return outcomes

    def _checkpointed(self, result: SliceResult, run_dir: str) -> SliceResult:
        """Queue the run's checkpoint after its slice; the result names it (durable once
        ``wait_durable`` says so). A cached outcome (a retried call) already names it."""
        from actors.engine import snapshot

        if result.checkpoint is not None:
            return result
        record = self.executor.registry[result.run_id]
        self.executor.phase = f"capturing checkpoint of run {result.run_id}"
        try:
            # A host copy now; the disk write runs in the background while the next grant
            # trains (actors.engine.ckpt_writer). Keep the previous checkpoint too: the store points
            # at it until the trial has waited for this one (``wait_durable``) and reported.
            state = snapshot.capture(record, self.executor.registry.model_of(record))
            self.executor.phase = f"queueing checkpoint of run {result.run_id}"
            path = self.writer.submit(result.run_id, state, run_dir, keep=2)
        except BaseException:
            record.last_result = None  # not durable: a retry must not return it
            raise
        result.checkpoint = str(path)
        return result

    async def wait_durable(
        self, run_id: int, step: int, timeout: float = DURABLE_WAIT_SECONDS
    ) -> str:
        """Return the path of ``run_id``'s checkpoint at ``step`` once it is durable on disk.

        Raises the run's ``CheckpointError`` if its write failed, and ``RunNotPlacedError`` if
        this executor never queued it (it restarted since; or nothing was trained): the slice
        is re-run from the run's last durable checkpoint."""
        if self.pipelines is not None and (run_id, step) in self.pipelines.durable:
            return str(self.pipelines.durable[(run_id, step)])  # written before the step returned
        write = self.writer.pending(run_id, step)
        if write is None:
            raise RunNotPlacedError(
                f"run {run_id}: this executor holds no checkpoint write of step {step} (it was "
                "restarted since the slice ran); re-place the run from its last durable "
                "checkpoint and run the slice again"
            )
        try:
            # shield: giving up waiting must not cancel the queued write itself
            path = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(write)), timeout)
        except asyncio.TimeoutError:
            raise CheckpointError(
                f"run {run_id}: its checkpoint of step {step} was not durable within "
                f"{timeout:g} s; the disk under the experiment directory is too slow or stuck"
            ) from None
        self.writer.done_with(run_id, step)
        return str(path)

    async def export(self, run_id: int, path: str) -> str:
        return await self._work(self._export, run_id, path)

    def _export(self, run_id: int, path: str) -> str:
        from actors.storage import checkpoint

        if self._is_pipeline(run_id):
            return ""  # a pipeline trains nothing: there is no adapter to export

        record = self.executor.registry[run_id]
        model = self.executor.registry.model_of(record)
        return str(checkpoint.export_adapter(model, record.spec.adapter_name, Path(path)))

    async def remove_run(self, run_id: int, owner: str | None = None) -> None:
        """Evict a run, unless another trial owns it by now."""
        if self.owners.get(run_id) != owner:
            return
        self.owners.pop(run_id, None)
        if self._is_pipeline(run_id):
            await self._work(self.pipelines.remove, run_id)
            return
        await self._work(self.executor.remove_run, run_id)

    async def stats(self) -> dict[str, Any]:
        stats = await self._work(self.executor.summary)
        return {
            **stats,
            "timeline": self.executor.timeline.to_dict(),
            "checkpoint_queue_peak_mib": self.writer.peak_bytes / 2**20,
        }


def as_run_failure(exc: BaseException, during: str) -> RunFailedError:
    """``exc`` as the run's failure, naming its type, message and what was running."""
    return RunFailedError(f"{type(exc).__name__} raised while {during}: {exc}".rstrip(": "))
