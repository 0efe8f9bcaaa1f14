"""An evals pipeline's spec on disk: ``runs/<id>/pipeline.json`` and ``pipeline.cloudpickle``.

A pipeline's settings are data (``pipeline.json``: its flat params, plan, seed, parent), shown
by ``rf-ray status`` and read by a person; the spec itself holds LangChain objects (loaders,
splitters, classes) and the user's functions, which are code, so the whole ``PipelineSpec`` is
cloudpickled beside it, as Ray ships it (``rf_ray.spec_store`` stores a fit run's functions the
same way when they have no importable name). The documents it retrieves from are not in it:
the experiment stores each corpus once (``corpora/<key>.jsonl``, ``actors.engine.evals.corpus``)
and the spec names its key. Opening an experiment directory unpickles it: open only directories
you trust (docs/security.md). Never overwritten: run ids are not reused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from actors.engine.evals.corpus import write_corpus
from actors.engine.evals.spec import PipelineSpec
from actors.storage.durable import atomic_write, make_private_dir
from actors.storage.layout import ExperimentDir
from policies.errors import ConfigError, DamagedFileError
from rf_ray.spec_store import spec_blob, unpickle


def pipeline_record(spec: PipelineSpec) -> dict[str, Any]:
    """The JSON part of a pipeline's spec."""
    return {
        "format": 1,
        "run_id": spec.run_id,
        "parent_run_id": spec.parent_run_id,
        "seed": spec.seed,
        "params": spec.params,
        "plan": spec.plan.to_dict(),
        "adapter": spec.adapter,
        "corpus": spec.rag.corpus if spec.rag is not None else None,
    }


def write_pipeline_spec(exp_dir: Path, spec: PipelineSpec) -> bytes:
    """Store ``spec`` for run ``spec.run_id`` (refusing to overwrite); returns its blob, the
    spec as executors get it. Its corpus is stored once for the experiment, under its key
    (``actors.engine.evals.corpus``); the spec keeps the key only."""
    files = ExperimentDir(exp_dir).run(spec.run_id)
    if files.pipeline_file.exists():
        raise ConfigError(
            f"run {spec.run_id} already has a spec at {files.path}; ids are never reused"
        )
    rag = spec.rag
    if rag is not None and rag.corpus is not None and rag.documents is not None:
        write_corpus(exp_dir, rag.corpus, rag.documents)
    make_private_dir(files.path)
    blob = spec_blob(spec.stored())
    atomic_write(files.pipeline_pickle, blob)
    atomic_write(files.pipeline_file, json.dumps(pipeline_record(spec), indent=1).encode())
    return blob


def has_pipeline_spec(exp_dir: Path, run_id: int) -> bool:
    return ExperimentDir(exp_dir).run(run_id).pipeline_file.exists()


def read_pipeline_spec(exp_dir: Path, run_id: int) -> tuple[PipelineSpec, bytes]:
    """The stored spec of pipeline ``run_id`` and its blob (unpickles it)."""
    path = ExperimentDir(exp_dir).run(run_id).pipeline_pickle
    spec = unpickle(path)  # a missing or damaged file: DamagedFileError naming it
    if not isinstance(spec, PipelineSpec):
        raise DamagedFileError(path, "holds no evals pipeline spec")
    return spec, path.read_bytes()


__all__ = ["has_pipeline_spec", "pipeline_record", "read_pipeline_spec", "write_pipeline_spec"]
