"""``BaseModelActor``: the Ray shell around ``Executor`` (one per GPU, or one on the CPU).

Each method hands its request to the executor and returns plain data. Run specs arrive as
cloudpickled bytes and are unpacked here, so the trial actors that forward them never import
torch or TRL.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from actors import checkpoint
from actors.executor import Executor

logger = logging.getLogger(__name__)


class BaseModelActor:
    def __init__(
        self,
        create_model_fn: Any,
        train_dataset: Any,
        eval_dataset: Any = None,
        device: str | None = None,
        cpu_threads: int | None = None,
    ) -> None:
        import torch

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

    def ready(self) -> dict[str, Any]:
        return {"device": str(self.executor.device), "pid": os.getpid()}

    def add_run(
        self, spec_blob: bytes, checkpoint_path: str | None = None, owner: str | None = None
    ) -> None:
        """Register a run (restored from ``checkpoint_path`` if given) for trial ``owner``.

        A run already resident just changes owner: a resumed run's new trial may arrive before
        the old trial has finished cleaning up, and the old one must not evict it then.
        """
        import cloudpickle

        spec = cloudpickle.loads(spec_blob)
        if spec.run_id not in self.executor.registry:
            state = checkpoint.load(checkpoint_path) if checkpoint_path else None
            self.executor.add_run(spec, state)
        self.owners[spec.run_id] = owner

    def has_run(self, run_id: int) -> bool:
        return run_id in self.executor.registry

    def run_slice(self, run_id: int, end_step: int, evaluate: bool, run_dir: str) -> dict[str, Any]:
        """Train one slice, then write the run's durable checkpoint; return the outcome."""
        result = self.executor.run_slice(run_id, end_step, evaluate=evaluate)
        record = self.executor.registry[run_id]
        state = checkpoint.capture(record, self.executor.bases[record.spec.model_key].model)
        # Keep the previous checkpoint too: the store may still point at it if the process
        # dies between this write and the scheduler recording the slice.
        path = checkpoint.save(state, run_dir, keep=2)
        out = dataclasses.asdict(result)
        out["checkpoint"] = str(path)
        return out

    def export(self, run_id: int, path: str) -> str:
        record = self.executor.registry[run_id]
        model = self.executor.bases[record.spec.model_key].model
        return str(checkpoint.export_adapter(model, record.spec.adapter_name, Path(path)))

    def remove_run(self, run_id: int, owner: str | None = None) -> None:
        """Evict a run, unless another trial owns it by now."""
        if self.owners.get(run_id) != owner:
            return
        self.owners.pop(run_id, None)
        self.executor.remove_run(run_id)

    def stats(self) -> dict[str, Any]:
        return self.executor.stats()
