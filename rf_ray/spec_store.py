"""Run specs and the experiment's model factory on disk: what a resume reads back.

A run's spec is stored as data, in ``<experiment dir>/runs/<id>/spec.json``:

    {"format": 1, "run_id": 3, "parent_run_id": null, "seed": 42,
     "config": {"model_name": ..., "trainer_type": "SFT", "training_args": {...},
                "lora": {...}, "model_kwargs": {...}, "tokenizer_kwargs": {...},
                "generation_config": null},
     "functions": {"formatting_func": {"import": "my_pkg.fmt:to_text"},
                   "reward_funcs": [{"pickle": "functions/reward_funcs.0.cloudpickle"}],
                   "compute_metrics": null},
     "plan": {...}}

``config`` is the run's ``RunConfig`` with its resolved values (``RunConfig.to_json``); reading
rebuilds the TRL and PEFT configs and the chunk plan through ``specs.build_specs``, exactly as
``run_fit`` built them (the stored ``plan`` is checked against the rebuilt one). A function is
stored by importable reference (``module:qualname``) when importing that name gives back the
very same object; only closures, lambdas and functions of ``__main__`` (or of a module that is
not importable) are cloudpickled, one file per function. The experiment's ``create_model_fn``
is stored the same way (``create_model_fn.json``).

Reading an experiment directory therefore IMPORTS the referenced modules and UNPICKLES the
cloudpickled functions, which runs code: open only directories you trust (docs/security.md).
Files are written 0600, directories 0700; a run's spec is never overwritten (run ids are never
reused). ``spec_blob`` is the in-memory form sent to the executor (cloudpickle, as Ray ships
functions).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors.engine.evals.spec import PipelineSpec
from actors.engine.spec import RunSpec
from actors.storage.durable import FILE_MODE, atomic_write, fsync_dir, make_private_dir
from actors.storage.layout import ExperimentDir, function_file, functions_dir
from actors.storage.store import Store
from policies.chunking import ChunkPlan
from policies.errors import ConfigError, DamagedFileError

FORMAT = 1
_FUNCTION_FIELDS = ("formatting_func", "compute_metrics", "reward_funcs", "generation_eval")


def spec_blob(spec: RunSpec | PipelineSpec) -> bytes:
    """The spec as bytes for the executor (cloudpickle, as Ray ships functions)."""
    import cloudpickle

    return bytes(cloudpickle.dumps(spec))


# ---------------------------------------------------------------------------- functions
def import_reference(fn: Any) -> str | None:
    """``"module:qualname"`` when importing it gives back ``fn`` itself, else None (a lambda,
    a closure, a function of ``__main__`` or of a module that cannot be imported)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    try:
        found = resolve_reference(f"{module}:{qualname}")
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qualname}" if found is fn else None


def resolve_reference(reference: str) -> Any:
    """The object named by ``"module:qualname"`` (imports the module)."""
    module, _, qualname = reference.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _store_function(fn: Any, base: Path, name: str) -> dict[str, str] | None:
    """How ``fn`` is stored: ``{"import": ref}`` or ``{"pickle": path relative to base}``."""
    if fn is None:
        return None
    reference = import_reference(fn)
    if reference is not None:
        return {"import": reference}
    import cloudpickle

    path = function_file(base, name)
    make_private_dir(path.parent)
    atomic_write(path, cloudpickle.dumps(fn))
    return {"pickle": path.relative_to(base).as_posix()}


def _load_function(stored: dict[str, str] | None, base: Path) -> Any:
    if stored is None:
        return None
    if "import" in stored:
        try:
            return resolve_reference(stored["import"])
        except (ImportError, AttributeError) as e:
            raise ConfigError(
                f"{base}: cannot import {stored['import']!r} ({e}); make its module importable "
                "here (install it, or add its directory to PYTHONPATH) and try again"
            ) from e
    path = base / stored["pickle"]
    # Only files of the functions/ directory beside the spec: the ones the directory's trust
    # check (``actors.storage.trust``) looked at before anything was read.
    if not path.resolve().is_relative_to(functions_dir(base).resolve()):
        raise DamagedFileError(
            path, f"is named as a pickle, but rf-ray keeps pickles only in {functions_dir(base)}"
            f"{_RESTORE}"
        )  # fmt: skip
    return unpickle(path)


def unpickle(path: Path) -> Any:
    """A cloudpickled function (runs code: see the module docstring); a missing or damaged file
    is a ``DamagedFileError`` naming it, a module it needs that is not installed a
    ``ConfigError`` naming the module."""
    import cloudpickle

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DamagedFileError(path, f"missing{_RESTORE}") from None
    try:
        return cloudpickle.loads(data)
    except ImportError as e:
        raise ConfigError(
            f"{path}: unpickling needs a module that is not importable here ({e}); install it, "
            "or add its directory to PYTHONPATH, and try again"
        ) from e
    except Exception as e:  # a truncated or garbage pickle raises any of several types
        raise DamagedFileError(
            path, f"cannot be unpickled ({type(e).__name__}: {e}){_RESTORE}"
        ) from e


_RESTORE = (
    "; rf-ray writes a run's files once and never changes them: restore it from a backup, "
    "or leave this run out by starting a new experiment"
)


def _read_record(path: Path) -> dict[str, Any]:
    """A run's ``spec.json``, its shape checked: a file that is not what rf-ray wrote is one
    ``DamagedFileError`` naming it."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise DamagedFileError(path, f"missing{_RESTORE}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise DamagedFileError(path, f"is not JSON ({e}){_RESTORE}") from None
    if not isinstance(record, dict):
        raise DamagedFileError(path, f"holds {type(record).__name__}, not a spec{_RESTORE}")
    if record.get("format") != FORMAT:
        raise ConfigError(
            f"{path} has format {record.get('format')!r}; this rf-ray reads format "
            f"{FORMAT}: open the experiment with the rf-ray version that wrote it"
        )
    for key, kind in (("config", dict), ("functions", dict), ("plan", dict), ("seed", int)):
        if not isinstance(record.get(key), kind):
            raise DamagedFileError(
                path, f"its {key!r} is {record.get(key)!r}, not a {kind.__name__}{_RESTORE}"
            )
    return record


def _store_generation_eval(gen: Any, base: Path) -> dict[str, Any]:
    """A ``GenerationEval`` as data: built-in metrics by name (``{"metrics": ["rougeL"]}``), a
    RapidFire-style ``compute_metrics`` and ``eval_prompts_fn`` like any function."""
    from rf_ray.metrics import FromComputeMetrics, MetricSet

    metrics_fn = gen.metrics_fn
    stored: dict[str, Any]
    if isinstance(metrics_fn, MetricSet):
        stored = {"metrics": list(metrics_fn.names)}
    elif isinstance(metrics_fn, FromComputeMetrics):
        inner = metrics_fn.compute_metrics
        stored = {"from_compute_metrics": _store_function(inner, base, "eval_compute_metrics")}
    else:
        stored = {"function": _store_function(metrics_fn, base, "eval_metrics_fn")}
    return {
        "metrics_fn": stored,
        "num_prompts": gen.num_prompts,
        "prompts_fn": _store_function(gen.prompts_fn, base, "eval_prompts_fn"),
    }


def _load_generation_eval(stored: dict[str, Any] | None, base: Path) -> Any:
    """What ``_store_generation_eval`` wrote; a spec written before it holds the whole
    ``GenerationEval`` as one function record (read as such)."""
    from actors.engine.gen_eval import GenerationEval
    from rf_ray.metrics import FromComputeMetrics, MetricSet

    if stored is None or "metrics_fn" not in stored:
        return _load_function(stored, base)
    how = stored["metrics_fn"]
    if "metrics" in how:
        metrics_fn: Any = MetricSet(tuple(how["metrics"]))
    elif "from_compute_metrics" in how:
        metrics_fn = FromComputeMetrics(_load_function(how["from_compute_metrics"], base))
    else:
        metrics_fn = _load_function(how["function"], base)
    prompts_fn = _load_function(stored["prompts_fn"], base)
    return GenerationEval(metrics_fn, int(stored["num_prompts"]), prompts_fn)


# ---------------------------------------------------------------------------- run specs
def spec_record(spec: RunSpec) -> dict[str, Any]:
    """The JSON part of ``spec`` (no functions); raises ``ConfigError`` naming a value that
    JSON cannot hold. ``run_fit`` calls it while validating, before anything is written."""
    return {
        "format": FORMAT,
        "run_id": spec.run_id,
        "parent_run_id": spec.parent_run_id,
        "seed": spec.seed,
        "config": json.loads(spec.model_config.to_json()),
        "plan": spec.plan.to_dict(),
    }


def write_spec(exp_dir: Path, spec: RunSpec) -> bytes:
    """Store ``spec`` for run ``spec.run_id``; refuse to overwrite an existing run's spec.
    Returns ``spec_blob(spec)``."""
    record = spec_record(spec)
    run = ExperimentDir(exp_dir).run(spec.run_id)
    base, target = run.path, run.spec_file
    if target.exists() or run.legacy_spec_file.exists():
        raise _exists(spec.run_id, base)
    make_private_dir(base)
    functions: dict[str, Any] = {}
    for field in _FUNCTION_FIELDS:
        value = getattr(spec.model_config, field)
        if field == "generation_eval":
            if value is not None:  # --- gen: recorded only when set, so other specs read as before
                functions[field] = _store_generation_eval(value, base)
            continue
        if field == "reward_funcs" and value is not None:
            functions[field] = [
                _store_function(f, base, f"{field}.{i}") for i, f in enumerate(value)
            ]
        else:
            functions[field] = _store_function(value, base, field)
    record["functions"] = functions
    _write_new(target, json.dumps(record, indent=1, sort_keys=True).encode(), spec.run_id)
    return spec_blob(spec)


def _write_new(path: Path, data: bytes, run_id: int) -> None:
    """Write ``path`` durably, atomically and only if it does not exist: a temp file, then
    ``os.link`` (which fails on an existing target, unlike a rename)."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    atomic_write(tmp, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists(run_id, path.parent) from None
    finally:
        os.unlink(tmp)
    fsync_dir(path.parent)


def _exists(run_id: int, base: Path) -> ConfigError:
    return ConfigError(f"run {run_id} already has a spec at {base}; run ids are never reused")


def read_spec(exp_dir: Path, run_id: int) -> tuple[RunSpec, bytes]:
    """The stored spec of ``run_id``, rebuilt through ``specs.build_specs``, and its blob.
    Imports the modules its functions come from and unpickles the pickled ones."""
    from rf_ray.specs import RunConfig, build_specs

    files = ExperimentDir(exp_dir).run(run_id)
    base, spec_file = files.path, files.spec_file
    if not spec_file.exists() and files.legacy_spec_file.exists():
        spec = unpickle(files.legacy_spec_file)
        return spec, spec_blob(spec)
    record = _read_record(spec_file)
    stored = record["functions"]
    try:
        rewards = stored.get("reward_funcs")
        run = RunConfig.from_json(
            json.dumps(record["config"]),
            formatting_func=_load_function(stored.get("formatting_func"), base),
            compute_metrics=_load_function(stored.get("compute_metrics"), base),
            reward_funcs=None if rewards is None else [_load_function(r, base) for r in rewards],
            generation_eval=_load_generation_eval(stored.get("generation_eval"), base),
        )
        chunks = ChunkPlan.from_dict(record["plan"])
    except ConfigError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DamagedFileError(
            spec_file, f"is not a spec rf-ray can read ({type(e).__name__}: {e}){_RESTORE}"
        ) from e
    (spec,) = build_specs(
        [run], Path(exp_dir), train_rows=_train_rows(exp_dir), num_chunks=chunks.num_chunks,
        seed=record["seed"], first_run_id=run_id,
    )  # fmt: skip
    if spec.plan != chunks:
        raise ConfigError(
            f"{spec_file}: its stored chunk plan {chunks} differs from the one rebuilt from "
            f"its config ({spec.plan}); the experiment directory was changed, or written by "
            "another rf-ray version"
        )
    spec.parent_run_id = record.get("parent_run_id")
    return spec, spec_blob(spec)


def _train_rows(exp_dir: Path) -> int:
    store = Store(exp_dir, readonly=True)
    try:
        return int(store.meta()["train_rows"])
    finally:
        store.close()


# ---------------------------------------------------------------------------- model factory
def write_create_model_fn(exp_dir: Path, fn: Callable[..., Any]) -> None:
    """Store the experiment's ``create_model_fn`` (by reference, or cloudpickled)."""
    base = make_private_dir(exp_dir)
    stored = _store_function(fn, base, "create_model_fn")
    atomic_write(ExperimentDir(base).model_fn_file, json.dumps(stored).encode(), FILE_MODE)


def read_create_model_fn(exp_dir: Path) -> Any:
    """The experiment's ``create_model_fn`` (imports or unpickles it: see module docstring)."""
    layout = ExperimentDir(exp_dir)
    legacy = layout.legacy_model_fn_file
    if not layout.model_fn_file.exists() and legacy.exists():
        return unpickle(legacy)
    try:
        stored = json.loads(layout.model_fn_file.read_text())
    except FileNotFoundError:
        raise DamagedFileError(layout.model_fn_file, f"missing{_RESTORE}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise DamagedFileError(layout.model_fn_file, f"is not JSON ({e}){_RESTORE}") from None
    if not (stored is None or isinstance(stored, dict)):
        raise DamagedFileError(layout.model_fn_file, f"holds {stored!r}{_RESTORE}")
    return _load_function(stored, layout.root)
