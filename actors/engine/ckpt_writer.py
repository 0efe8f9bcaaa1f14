"""Checkpoints written in the background while the next slice trains.

At a slice end the executor captures the run's state into host memory (``snapshot.capture``: CPU
tensors copied, scheduler/optimizer metadata as JSON) and hands it to ``CheckpointWriter``.
One writer thread writes the queued states in order (``checkpoint.save``: fsynced, atomically
replaced), so a run's step-N checkpoint is always on disk before its step-N+1 one, and the
executor's worker thread is free for the next grant as soon as the compute is done.

The store records a slice only once its checkpoint is durable: the run's trial asks
``wait(run_id, step)`` (``BaseModelActor.wait_durable``) before it reports. A lost executor thus
loses at most the slices whose checkpoints were still queued; their runs resume from their last
durable checkpoint, exactly as after a synchronous write.

Host memory is bounded: the states queued and being written hold at most ``budget_bytes``
(one state larger than the budget is let through alone). ``submit`` waits for room, bounded by
``wait_s``; past it the slice's run fails with ``CheckpointError`` (the others go on). A failed
write fails only its run: ``wait`` raises the error for that run and step.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors.storage.layout import ExperimentDir, RunDir
from policies.errors import CheckpointError

logger = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 1 << 30
"""Host memory the queued checkpoint states may hold (1 GiB): several LoRA adapters with their
Adam moments even for a large base model."""
DEFAULT_WAIT_SECONDS = 600.0
"""Bound on waiting for room in the queue (the disk is that slow, or stuck)."""


def state_bytes(state: dict[str, Any]) -> int:
    """Host bytes held by a captured state's tensors (adapter, optimizer, RNG)."""
    total = 0
    for part in ("adapter", "optimizer", "rng"):
        for tensor in state.get(part, {}).values():
            total += int(tensor.numel()) * int(tensor.element_size())
    return total


class CheckpointWriter:
    """A FIFO of captured states written by one background thread (module docstring).

    ``save`` is a test seam: the function that writes one state, ``checkpoint.save`` by
    default (a test injects a slow or failing one)."""

    def __init__(
        self,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        wait_s: float = DEFAULT_WAIT_SECONDS,
        save: Callable[..., Path] | None = None,
    ) -> None:
        if save is None:
            from actors.storage import checkpoint

            save = checkpoint.save
        self.budget_bytes = budget_bytes
        self.wait_s = wait_s
        self._save = save
        self._cond = threading.Condition()
        self.queued_bytes = 0
        """Bytes of the states queued or being written now."""
        self.peak_bytes = 0
        """The most ``queued_bytes`` ever held (for tests and benchmarks)."""
        self._writes: dict[tuple[int, int], concurrent.futures.Future[Path]] = {}
        """Writes by (run id, step): pending ones, and finished ones until a later step of the
        same run is waited for."""
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ckpt-writer")

    def submit(self, run_id: int, state: dict[str, Any], run_dir: str | Path, keep: int) -> Path:
        """Queue ``state`` (captured, owned by the writer from now on) for ``run_dir``; returns
        the path the checkpoint will have. Waits while the queue is over budget (bounded)."""
        size = state_bytes(state)
        step = int(state["meta"]["steps_done"])
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            while self.queued_bytes and self.queued_bytes + size > self.budget_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CheckpointError(
                        f"run {run_id}: the checkpoint of step {step} ({size / 2**20:.1f} MiB) "
                        f"found no room in the checkpoint queue within {self.wait_s:g} s "
                        f"({self.queued_bytes / 2**20:.1f} MiB of "
                        f"{self.budget_bytes / 2**20:.1f} MiB still being written); the disk "
                        "under the experiment directory is too slow or stuck"
                    )
                self._cond.wait(left)
            self.queued_bytes += size
            self.peak_bytes = max(self.peak_bytes, self.queued_bytes)
        future = self._thread.submit(self._write, run_id, state, Path(run_dir), keep, size)
        self._writes[(run_id, step)] = future
        return RunDir(run_dir).checkpoint(step)

    def _write(
        self, run_id: int, state: dict[str, Any], run_dir: Path, keep: int, size: int
    ) -> Path:
        try:
            return self._save(state, run_dir, keep=keep)
        except BaseException as exc:
            step = state["meta"]["steps_done"]
            logger.warning(
                "run %s: writing the checkpoint of step %s failed: %r", run_id, step, exc
            )
            exp = ExperimentDir.of_run_dir(run_dir).root
            path = f"--path {exp.parent}"
            raise CheckpointError(
                f"run {run_id}: writing its checkpoint of step {step} under {run_dir} failed: "
                f"{type(exc).__name__}: {exc}. Free disk space or make the experiment directory "
                f"writable; then `rf-ray ops resume {exp.name} {run_id} {path}` (while the "
                f"experiment runs) or `rf-ray resume {exp.name} {path}` (once it has ended) "
                "continues the run from its last durable checkpoint"
            ) from exc
        finally:
            del state  # the host copy goes as soon as it is on disk
            with self._cond:
                self.queued_bytes -= size
                self._cond.notify_all()

    def pending(self, run_id: int, step: int) -> concurrent.futures.Future[Path] | None:
        """The write of ``run_id``'s checkpoint at ``step``, if this writer has it."""
        return self._writes.get((run_id, step))

    def done_with(self, run_id: int, step: int) -> None:
        """Forget ``run_id``'s writes before ``step`` (the one at ``step`` has been waited for)."""
        for key in [k for k in self._writes if k[0] == run_id and k[1] < step]:
            if self._writes[key].done():
                del self._writes[key]

    def drain(self, timeout: float) -> bool:
        """Wait until nothing is queued (bounded); True when the queue is empty. The event a
        caller waits on instead of polling (``tests/actors/test_async_checkpoint.py`` does)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.queued_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True
