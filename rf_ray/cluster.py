"""How a driver reaches Ray and claims an experiment on it.

``ensure_ray`` connects a driver to Ray (``RAY_ADDRESS``, the cluster an experiment's driver
recorded in its ``cluster.json``, a ``ray start`` head) or starts a private local cluster, never
waiting minutes on a dead head. ``record_cluster`` writes that ``cluster.json`` so that
``rf-ray ops`` from another terminal finds the experiment; ``connect`` attaches a process that
steers it (``RAY_ADDRESS`` or ``cluster.json``, never a new cluster), ``driver_alive`` and
``reachable`` say, without Ray, whether the recorded driver and cluster are still there;
``scheduler_name`` is the named actor it looks for.
``driver_gone`` tells whether the driver recorded there has exited (a lock it left is being
released: ``actors.storage.lock.take`` waits for it).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from actors.storage.layout import ExperimentDir
from policies.errors import ConfigError

logger = logging.getLogger(__name__)
NAMESPACE = "rf_ray"


def scheduler_name(experiment_dir: str | os.PathLike[str]) -> str:
    """The named-actor name under which other processes find a running experiment.

    Scoped by the experiment's resolved directory, so two experiments with the same name in
    different directories never find (or kill) each other's scheduler on a shared cluster.
    """
    import hashlib

    path = Path(experiment_dir).resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    return f"rf_ray:{path.name}:{digest}"


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
       (``record_cluster``), when that address answers; token authentication stays on
       (``_attach``). (Ops reach a running experiment with ``connect``, which stops here.)
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
            _attach(record, ExperimentDir(exp_dir).cluster_file)
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

    from actors.storage.durable import atomic_write

    record = {
        "address": ray.get_runtime_context().gcs_address,
        "driver_pid": os.getpid(),
        "host": socket.gethostname(),
        **_auth_record(),
    }
    atomic_write(ExperimentDir(exp_dir).cluster_file, json.dumps(record).encode())


def recorded_cluster(exp_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``cluster.json`` record of ``exp_dir``, or None (none, or unreadable)."""
    import json

    try:
        record = json.loads(ExperimentDir(exp_dir).cluster_file.read_text())
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
    record = recorded_cluster(exp_dir)
    return record is not None and not driver_alive(record)


def driver_alive(record: dict[str, Any]) -> bool:
    """Whether the driver a ``cluster.json`` record names still runs: False only when it ran on
    this host and its pid is gone (a driver on another host cannot be checked from here)."""
    import socket

    if record.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(record["driver_pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True


def reachable(record: dict[str, Any]) -> bool:
    """Whether the Ray cluster a ``cluster.json`` record names accepts connections (TCP only:
    no Ray, and nothing attaches)."""
    return _answers(str(record.get("address", "")))


def connect(exp_dir: str | os.PathLike[str]) -> None:
    """Attach this process to the Ray cluster experiment ``exp_dir`` runs on, never starting
    one: ``RAY_ADDRESS`` when set, else the cluster its driver recorded (``cluster.json``).
    ``ClusterUnreachableError`` when neither answers. A process already on a cluster stays.

    The process then lives only as long as that cluster (Ray ends a driver whose cluster has
    been gone for a minute): long-lived processes send ops from a child (``rf_ray.remote``).
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
        ray.init(address=address, logging_level=logging.WARNING)
        return
    path = ExperimentDir(exp_dir).cluster_file
    record = recorded_cluster(exp_dir)
    if record is None:
        raise ClusterUnreachableError(
            f"{path} is missing or unreadable: the experiment's driver writes it as the "
            "experiment starts; retry in a few seconds, or set RAY_ADDRESS to its cluster"
        )
    if not reachable(record):
        raise ClusterUnreachableError(
            f"the Ray cluster recorded in {path} at {record.get('address')} does not answer "
            "(the experiment's driver and its cluster are gone?)"
        )
    _attach(record, path)


# ---------------------------------------------------------------------------- actors
def clear_leftover_scheduler(exp_dir: Path) -> None:
    """With the lock held, a scheduler registered under the experiment's name is a finished
    or dead one (kill it: its name is needed), or one another driver is starting right now
    (refuse)."""
    import ray

    try:
        old = ray.get_actor(scheduler_name(exp_dir), namespace=NAMESPACE)
    except ValueError:
        return
    from ray.exceptions import GetTimeoutError, RayActorError

    try:
        finished = ray.get(old.is_finished.remote(), timeout=10)
    except GetTimeoutError:  # still in its constructor, waiting for the lock we hold
        finished = False
    except RayActorError:  # dead or dying: it cannot be running the experiment
        finished = True
    if not finished:
        raise ConfigError(
            f"experiment at {exp_dir} is being started by another driver right now; steer it "
            "with `rf-ray ops` once it runs"
        )
    with contextlib.suppress(Exception):
        ray.kill(old)


__all__ = [
    "NAMESPACE",
    "ClusterUnreachableError",
    "connect",
    "driver_alive",
    "driver_gone",
    "ensure_ray",
    "reachable",
    "record_cluster",
    "recorded_cluster",
    "scheduler_name",
]
