"""Run specs and the experiment's model factory on disk: what a resume reads back.

``write_spec`` stores a run's spec under ``<experiment dir>/runs/<id>/`` and never overwrites an
existing run's files; ``read_spec`` rebuilds it. ``spec_blob`` is the in-memory form sent to the
executor (the same bytes Ray would ship). Open only experiment directories you created: see
``docs`` for what loading one executes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actors.durable import atomic_write
from actors.spec import RunSpec
from policies.errors import ConfigError

SPEC_FILE = "spec.cloudpickle"
MODEL_FN_FILE = "create_model_fn.cloudpickle"


def spec_blob(spec: RunSpec) -> bytes:
    """The spec as bytes for the executor (cloudpickle, as Ray ships functions)."""
    import cloudpickle

    return bytes(cloudpickle.dumps(spec))


def write_spec(exp_dir: Path, spec: RunSpec) -> bytes:
    """Store ``spec`` for run ``spec.run_id``; refuse to overwrite an existing run's spec.
    Returns ``spec_blob(spec)``."""
    blob = spec_blob(spec)
    run_dir = Path(exp_dir) / "runs" / str(spec.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with open(run_dir / SPEC_FILE, "xb") as f:
            f.write(blob)
    except FileExistsError:
        raise ConfigError(
            f"run {spec.run_id} already has a spec at {run_dir}; run ids are never reused"
        ) from None
    return blob


def read_spec(exp_dir: Path, run_id: int) -> tuple[RunSpec, bytes]:
    """The stored spec of ``run_id`` and its blob."""
    import cloudpickle

    blob = (Path(exp_dir) / "runs" / str(run_id) / SPEC_FILE).read_bytes()
    return cloudpickle.loads(blob), blob


def write_create_model_fn(exp_dir: Path, fn: Any) -> None:
    import cloudpickle

    atomic_write(Path(exp_dir) / MODEL_FN_FILE, cloudpickle.dumps(fn))


def read_create_model_fn(exp_dir: Path) -> Any:
    import cloudpickle

    return cloudpickle.loads((Path(exp_dir) / MODEL_FN_FILE).read_bytes())
