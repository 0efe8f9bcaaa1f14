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
"""Seconds one slice (or placing a run on an executor) may take before its run fails.

Why 30 minutes: a slice is one chunk of one run (or ``max_slice_steps`` optimizer steps of it),
so on the hardware rf-ray targets (one GPU node, LoRA on a base model that fits it) a healthy
slice takes seconds to a few minutes; 30 minutes is an order of magnitude above that and still
bounds a hung reward or formatting function to half an hour of a shared executor. A run whose
slices are legitimately longer should be cut finer (more ``num_chunks``, or ``max_slice_steps``)
rather than given a larger bound: shorter slices also make ops and pruning react sooner.
"""

CLUSTER_FILE = "cluster.json"


def check_slice_timeout(slice_timeout: Any) -> float | None:
    """``slice_timeout`` as a float number of seconds > 0, or None (no deadline); else
    ``ConfigError`` naming the value."""
    import math

    if slice_timeout is None:
        return None
    if (
        isinstance(slice_timeout, bool)
        or not isinstance(slice_timeout, (int, float))
        or not math.isfinite(slice_timeout)
        or slice_timeout <= 0
    ):
        raise ConfigError(
            f"slice_timeout must be a number of seconds > 0 or None (no deadline), got "
            f"slice_timeout={slice_timeout!r}; the default is {DEFAULT_SLICE_TIMEOUT:g} s. For "
            "slices that legitimately take longer, use more num_chunks or max_slice_steps"
        )
    return float(slice_timeout)


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
                generation_eval=run.generation_eval,
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


# ---------------------------------------------------------------------------- Ray connection
PROBE_TIMEOUT = 3.0
"""Seconds a cluster address may take to accept a TCP connection before it counts as dead."""


class ClusterUnreachableError(ConnectionError):
    """``RAY_ADDRESS`` names a cluster that does not answer."""


def ensure_ray(exp_dir: str | os.PathLike[str] | None = None) -> bool:
    """Connect to Ray, or start a local cluster; returns True when this call started it (so
    ``stop`` shuts it down). In order:

    1. ``RAY_ADDRESS`` (set in a Ray Job): it must answer, else ``ClusterUnreachableError``.
    2. With ``exp_dir``: the cluster its driver recorded in ``cluster.json``
       (``record_cluster``), when that address answers. So ``rf-ray ops`` and a second Python
       driver reach a script's private cluster; token authentication stays on (``_attach``).
    3. A ``ray start`` head on this machine (Ray's bootstrap file). If its address does not
       answer (the head died and left the file behind), warn, naming the file, and start a
       local cluster: plain ``ray.init()`` would retry the dead address for minutes.
    4. A new local cluster (token authentication on, as Ray 2.60 does for ``ray.init()``).
    """
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
        ray.init(address=address, logging_level=logging.WARNING)
        return False
    if exp_dir is not None:
        record = recorded_cluster(exp_dir)
        if record is not None and _answers(str(record.get("address", ""))):
            _attach(record, Path(exp_dir) / CLUSTER_FILE)
            return False
    from ray._private.services import find_bootstrap_address

    bootstrap = find_bootstrap_address(None)  # written by `ray start`, removed by `ray stop`
    if bootstrap:
        if _answers(bootstrap):
            ray.init(address="auto", logging_level=logging.WARNING)
            return False
        from ray._common.utils import get_ray_address_file

        path = get_ray_address_file(None)
        logger.warning(
            "Ray's bootstrap file %s names a `ray start` head at %s that does not answer (it "
            "died without `ray stop`); starting a private local cluster instead. Remove %s (or "
            "run `ray stop`) to silence this, or `ray start --head` again to use a shared one.",
            path, bootstrap, path,
        )  # fmt: skip
    ray.init(
        address="local",  # never the bootstrap file's address
        include_dashboard=False,
        object_store_memory=int(os.environ.get("RF_RAY_OBJECT_STORE_MB", "512")) * 2**20,
        logging_level=logging.WARNING,
    )
    return True


def _answers(address: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether something accepts TCP connections at ``host:port`` within ``timeout``."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except (OSError, ValueError):
        return False
    return True


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the address, when nothing listens there (``ray.init`` would retry for
    minutes). ``auto``, ``local`` and ``ray://`` addresses are left to Ray."""
    if address in ("auto", "local") or "://" in address:
        return
    if not _answers(address, timeout):
        raise ClusterUnreachableError(
            f"RAY_ADDRESS={address}: no Ray cluster is listening there; start one with "
            "`ray start --head`, or unset RAY_ADDRESS to let rf-ray start a local cluster"
        )


# ---------------------------------------------------------------------------- cluster.json
def _auth_record() -> dict[str, Any]:
    """How this process authenticates to Ray, WITHOUT the token: the mode, and where the token
    comes from (Ray's order: ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``).
    ``ray.init()`` of a new local cluster sets ``RAY_AUTH_MODE=token`` in this process."""
    mode = os.environ.get("RAY_AUTH_MODE", "disabled").lower()
    if os.environ.get("RAY_AUTH_TOKEN"):
        return {"auth_mode": mode, "token_source": "RAY_AUTH_TOKEN"}
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return {
            "auth_mode": mode,
            "token_source": "RAY_AUTH_TOKEN_PATH",
            "token_path": str(Path(path).resolve()),
        }
    return {"auth_mode": mode, "token_source": "default"}


def record_cluster(exp_dir: Path) -> None:
    """Write ``<exp_dir>/cluster.json`` (0600): how other processes reach the Ray cluster this
    driver runs the experiment on (its GCS address and how it authenticates, never the token
    itself), and which process the driver is (see ``driver_gone``)."""
    import json
    import socket

    import ray

    from actors.durable import atomic_write

    record = {
        "address": ray.get_runtime_context().gcs_address,
        "driver_pid": os.getpid(),
        "host": socket.gethostname(),
        **_auth_record(),
    }
    atomic_write(Path(exp_dir) / CLUSTER_FILE, json.dumps(record).encode())


def recorded_cluster(exp_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``cluster.json`` record of ``exp_dir``, or None (none, or unreadable)."""
    import json

    try:
        record = json.loads((Path(exp_dir) / CLUSTER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _attach(record: dict[str, Any], path: Path) -> None:
    """``ray.init`` on the recorded address with the recorded way of authenticating.

    Ray enables token auth by itself only for a cluster it finds automatically; with an explicit
    address this process must say ``RAY_AUTH_MODE=token`` (Ray's token-auth docs). The token is
    then read where the driver read it: the same file (``RAY_AUTH_TOKEN_PATH`` or the default
    ``~/.ray/auth_token`` of this user), or this process's own ``RAY_AUTH_TOKEN``.
    """
    import ray

    if record.get("auth_mode") == "token" and "RAY_AUTH_MODE" not in os.environ:
        source = record.get("token_source")
        if source == "RAY_AUTH_TOKEN" and not os.environ.get("RAY_AUTH_TOKEN"):
            raise ClusterUnreachableError(
                f"the experiment's driver authenticates to its Ray cluster ({path}) with the "
                "RAY_AUTH_TOKEN environment variable; set the same RAY_AUTH_TOKEN here"
            )
        if source == "RAY_AUTH_TOKEN_PATH" and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
            os.environ["RAY_AUTH_TOKEN_PATH"] = str(record["token_path"])
        os.environ["RAY_AUTH_MODE"] = "token"
        from ray._raylet import Config

        Config.initialize("")  # Ray caches its config; re-read the mode (as ray.init does)
    try:
        ray.init(address=record["address"], logging_level=logging.WARNING)
    except Exception as e:  # an auth error, or the address now belongs to something else
        raise ClusterUnreachableError(
            f"cannot attach to the Ray cluster recorded in {path} at {record['address']}: {e}"
        ) from e


def driver_gone(exp_dir: Path) -> bool:
    """True when the experiment's recorded driver process (same host) no longer exists."""
    import socket

    record = recorded_cluster(exp_dir)
    if record is None or record.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(record["driver_pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
