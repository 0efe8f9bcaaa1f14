"""Starting, watching and stopping an experiment's actors on Ray.

``build_specs`` turns concrete run configs into ``RunSpec``s (building the TRL and PEFT config
objects, which validates them); ``start`` writes the experiment directory and starts the
scheduler, the executor(s) and one trial per run; ``wait`` blocks with a live view; ``stop``
releases them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.spec import RunSpec
from policies.chunking import ChunkPlan, repeat_sampler_length
from policies.errors import ConfigError
from policies.fusion import FusionPolicy
from policies.pruning import Pruner
from rf_ray.config import RunConfig, build_lora_config, build_trl_config, describe

logger = logging.getLogger(__name__)
NAMESPACE = "rf_ray"

DEFAULT_SLICE_TIMEOUT = 1800.0
"""Seconds one slice (or placing a run on an executor) may take before its run fails."""

CLUSTER_FILE = "cluster.json"


def scheduler_name(experiment_dir: str | os.PathLike[str]) -> str:
    """The named-actor name under which other processes find a running experiment.

    Scoped by the experiment's resolved directory, so two experiments with the same name in
    different directories never find (or kill) each other's scheduler on a shared cluster.
    """
    import hashlib

    path = Path(experiment_dir).resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    return f"rf_ray:{path.name}:{digest}"


@dataclass
class Plan:
    """A validated experiment, ready to start; nothing has been written yet."""

    name: str
    dir: Path
    tracking_uri: str
    specs: list[RunSpec]
    create_model_fn: Callable[[Any], tuple[Any, Any]]
    train: Any
    eval: Any
    pruner: Pruner
    max_slice_steps: int | None
    fusion: FusionPolicy | None
    fingerprint: str
    seed: int
    num_chunks: int
    differing: list[str] = field(default_factory=list)
    slice_timeout: float | None = DEFAULT_SLICE_TIMEOUT
    """Wall-clock bound of one slice in seconds (``None``: none); see ``Grant.deadline_s``."""


def build_specs(
    runs: list[RunConfig],
    experiment_dir: Path,
    train_rows: int,
    num_chunks: int,
    seed: int,
    first_run_id: int = 1,
) -> list[RunSpec]:
    """One ``RunSpec`` per run, validating TRL/PEFT configs and the chunking of each."""
    specs = []
    for i, run in enumerate(runs):
        run_id = first_run_id + i
        training_args = dict(run.training_args)
        training_args.setdefault("seed", seed)
        concrete = RunConfig(**{**run.__dict__, "training_args": training_args})
        args = build_trl_config(concrete, str(experiment_dir / "runs" / str(run_id)), True)
        lora = build_lora_config(concrete)
        try:
            plan = _chunk_plan(run.trainer_type, args, train_rows, num_chunks)
        except ConfigError as e:
            raise ConfigError(f"run {run_id} ({describe(run)}): {e}") from e
        specs.append(
            RunSpec(
                run_id=run_id,
                model_key=concrete.model_key(),
                model_config=concrete,
                trainer_type=run.trainer_type,
                trl_args=args,
                lora_config=lora,
                plan=plan,
                seed=seed,
                params=concrete.flat_params(),
                formatting_func=run.formatting_func,
                compute_metrics=run.compute_metrics,
                reward_funcs=run.reward_funcs,
            )
        )
    return specs


def _chunk_plan(trainer_type: str, args: Any, train_rows: int, num_chunks: int) -> ChunkPlan:
    """The run's ChunkPlan, counting micro-batches as its TRL trainer's dataloader yields them.

    SFT and DPO batch dataset rows. GRPO's dataloader yields generation batches of
    ``generation_batch_size`` rows from TRL's ``RepeatSampler`` (each prompt ``num_generations``
    times, each group of prompts ``num_iterations * steps_per_generation`` times), so its plan
    counts that sampler's stream (``repeat_sampler_length``).
    """
    common = dict(
        grad_accum=args.gradient_accumulation_steps,
        num_chunks=num_chunks,
        num_train_epochs=float(args.num_train_epochs),
        max_steps=int(args.max_steps),
        drop_last=bool(args.dataloader_drop_last),
    )
    if trainer_type != "GRPO":
        return ChunkPlan(
            num_examples=train_rows, batch_size=args.per_device_train_batch_size, **common
        )
    prompts_per_batch = args.generation_batch_size // args.num_generations
    if train_rows < prompts_per_batch:
        raise ConfigError(
            f"GRPO needs at least one generation batch of {prompts_per_batch} prompts "
            f"(generation_batch_size={args.generation_batch_size} / "
            f"num_generations={args.num_generations}), but train_dataset has {train_rows}; "
            "use more prompts or a smaller per_device_train_batch_size x "
            "gradient_accumulation_steps"
        )
    repeat = args.num_iterations * args.steps_per_generation
    samples = repeat_sampler_length(
        train_rows, args.num_generations, args.generation_batch_size, repeat
    )
    try:
        return ChunkPlan(num_examples=samples, batch_size=args.generation_batch_size, **common)
    except ConfigError as e:
        steps = -(-(samples // args.generation_batch_size) // args.gradient_accumulation_steps)
        raise ConfigError(
            f"{e} (GRPO counts generation batches: {train_rows} prompts make "
            f"{train_rows // prompts_per_batch} groups of {prompts_per_batch} prompts x "
            f"{args.num_generations} generations, each used {repeat} times "
            f"(num_iterations x steps_per_generation), i.e. {steps} optimizer steps per epoch)"
        ) from e


class ClusterUnreachableError(ConnectionError):
    """``RAY_ADDRESS`` names a cluster that does not answer."""


def ensure_ray() -> bool:
    """Connect to a running Ray cluster (``RAY_ADDRESS``, a Ray Job, ``ray start`` on this
    machine) or start a local one. Returns True when this call started it (so ``stop`` shuts it
    down). Token authentication (on by default in Ray 2.60) is left as Ray configures it: see
    docs/ray.md."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
        ray.init(address=address, logging_level=logging.WARNING)
        return False
    from ray._private.services import find_bootstrap_address

    if find_bootstrap_address(None):  # a head started with `ray start` on this machine
        ray.init(address="auto", logging_level=logging.WARNING)
        return False
    ray.init(
        include_dashboard=False,
        object_store_memory=int(os.environ.get("RF_RAY_OBJECT_STORE_MB", "512")) * 2**20,
        logging_level=logging.WARNING,
    )
    return True


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the address, when nothing listens there (``ray.init`` would retry for
    minutes). ``auto``, ``local`` and ``ray://`` addresses are left to Ray."""
    import socket

    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except (OSError, ValueError):
        raise ClusterUnreachableError(
            f"RAY_ADDRESS={address}: no Ray cluster is listening there; start one with "
            "`ray start --head`, or unset RAY_ADDRESS to let rf-ray start a local cluster"
        ) from None


def record_cluster(exp_dir: Path) -> None:
    """Write ``<exp_dir>/cluster.json``: how other processes reach the Ray cluster this driver
    runs the experiment on, and which process the driver is (see ``driver_gone``)."""
    import json
    import socket

    import ray

    record = {
        "address": ray.get_runtime_context().gcs_address,
        "driver_pid": os.getpid(),
        "host": socket.gethostname(),
    }
    (Path(exp_dir) / CLUSTER_FILE).write_text(json.dumps(record))


def driver_gone(exp_dir: Path) -> bool:
    """True when the experiment's recorded driver process (same host) no longer exists."""
    import json
    import socket

    path = Path(exp_dir) / CLUSTER_FILE
    if not path.exists():
        return False
    record = json.loads(path.read_text())
    if record.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(record["driver_pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
