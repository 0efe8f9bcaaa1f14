"""``run_evals``'s driver side: a config group and an eval set into a ``Plan``, and results back.

Everything that can fail is checked here, before anything is written or started: the config
group expands and every pipeline is checked whole (``rf_ray.evals.build``), the eval set is
readable, ``num_shards`` fits it, a named adapter exists. Each pipeline becomes a run whose
``PipelineSpec`` plan has the eval set's rows as steps and its shards as chunks, so the engine
that trains fit runs chunk by chunk schedules, prunes, steers and records pipelines shard by
shard (``docs/guides/evals.md``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors.engine.evals import corpus, serving
from actors.engine.evals.spec import PipelineSpec
from actors.storage.checkpoint import EXPORTED_CONFIG, is_exported_adapter
from actors.storage.layout import ExperimentDir
from actors.storage.store import Store
from policies.chunking import ChunkPlan
from policies.errors import ConfigError, DamagedFileError
from policies.fusion import FusionPolicy
from policies.pruning import NoPruning, Pruner
from policies.settings import DEFAULT_SLICE_TIMEOUT, ExperimentSettings
from rf_ray.data import dataset_fingerprint, to_dataset
from rf_ray.evals.build import (
    PipelineConfig,
    check_settings,
    describe,
    generator_parts,
    prompt_spec,
    rag_spec,
)
from rf_ray.plan import Plan

MAX_BATCHED_PIPELINES = 16
"""The most pipelines granted one shard together (one batched generation per batch index)."""


def resolve_adapter(adapter: Any, experiments_root: Path) -> str | None:
    """An adapter setting as a directory: an exported adapter, or a fit run's final adapter
    (``{"experiment": name, "run_id": n, "experiment_path": root}``); refused if missing."""
    if adapter is None:
        return None
    if isinstance(adapter, dict):
        root = Path(adapter.get("experiment_path") or experiments_root)
        path = (
            ExperimentDir(root / str(adapter["experiment"])).run(int(adapter["run_id"])).adapter_dir
        )
    else:
        path = Path(adapter)
    if not is_exported_adapter(path):
        raise ConfigError(
            f"adapter={adapter!r}: no PEFT adapter at {path} ({EXPORTED_CONFIG} missing); "
            "name an Experiment.export directory, or a fit run that trained at least one slice"
        )
    return str(path.resolve())


def pipeline_spec(
    config: PipelineConfig, run_id: int, rows: int, num_shards: int, seed: int,
    experiments_root: Path,
) -> PipelineSpec:  # fmt: skip
    """The executor's record of one concrete, checked pipeline."""
    online = check_settings(config.settings)
    generator, model = generator_parts(config)
    if model is None:  # an API generator: no resident model; a key naming the endpoint
        model_key = f"api:{generator.client.get('base_url')}:{generator.model_name}"
    else:
        model_key = f"{model.model_name}:{json.dumps(model.model_kwargs, sort_keys=True)}"
    s = config.settings
    return PipelineSpec(
        run_id=run_id,
        model_key=model_key,
        model_config=model,  # type: ignore[arg-type]  # None only for API pipelines
        plan=ChunkPlan(num_examples=rows, batch_size=1, grad_accum=1, num_chunks=num_shards),
        seed=seed,
        generator=generator,
        rag=rag_spec(config.rag) if config.rag is not None else None,
        prompt=prompt_spec(config.prompt) if config.prompt is not None else None,
        adapter=resolve_adapter(s.get("adapter"), experiments_root),
        batch_size=int(s.get("batch_size", 8)),
        preprocess_fn=s.get("preprocess_fn"),
        postprocess_fn=s.get("postprocess_fn"),
        compute_metrics_fn=s.get("compute_metrics_fn"),
        accumulate_metrics_fn=s.get("accumulate_metrics_fn"),
        online=online.to_dict(),
        params=describe(config),
    )


def load_corpora(specs: list[PipelineSpec]) -> None:
    """Load and split each distinct corpus once, on the driver (a loader's error, or metadata
    that cannot be stored, surfaces here, before anything starts); pipelines with the same
    corpus share the document list and its key, under which ``persist`` stores it once
    (``actors.engine.evals.corpus``)."""
    corpora: dict[str, tuple[list[Any], str]] = {}
    for spec in specs:
        rag = spec.rag
        if rag is None or rag.retriever is not None:
            continue
        key = json.dumps([rag.described["loaders"], rag.described["splitter"]], sort_keys=True)
        if key not in corpora:
            corpora[key] = _load_corpus(spec)
        rag.documents, rag.corpus = corpora[key]
        rag.loaders, rag.splitter = [], None
        # Pipelines share an index only over the same documents: a corpus changed on disk
        # between two run_evals of one experiment is another corpus.
        rag.described = {**rag.described, "corpus": rag.corpus}


def _load_corpus(spec: PipelineSpec) -> tuple[list[Any], str]:
    assert spec.rag is not None  # load_corpora's caller checked
    try:
        documents = spec.rag.load_corpus()
    except Exception as exc:
        raise ConfigError(
            f"pipeline {spec.run_id}: loading its documents failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not documents:
        raise ConfigError(f"pipeline {spec.run_id}: its document loaders found nothing")
    try:
        data = corpus.encode(documents)
    except ValueError as exc:
        raise ConfigError(f"pipeline {spec.run_id}: its corpus cannot be stored: {exc}") from exc
    return documents, corpus.corpus_key(data)


def check_evals_settings(rows: int, num_shards: Any, seed: Any, pruner: Any) -> None:
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ConfigError(f"num_shards must be an int >= 1, got num_shards={num_shards!r}")
    if num_shards > rows:
        raise ConfigError(
            f"num_shards={num_shards} is more than the eval set's {rows} rows: a shard needs "
            f"at least one row; use num_shards <= {rows}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an int, got seed={seed!r}")
    if pruner is not None and not isinstance(pruner, Pruner):
        raise ConfigError(f"pruner must be a pruner such as IntervalPruner(...), got {pruner!r}")
    if pruner is not None and not isinstance(pruner, NoPruning) and pruner.metric is None:
        raise ConfigError(
            f"{type(pruner).__name__} needs metric=: the name of one of your metrics (a key "
            "of what accumulate_metrics_fn returns), and mode='max' or 'min'"
        )


def evals_plan(  # noqa: PLR0913  run_evals' arguments, checked before anything starts
    *, name: str, exp_dir: Path, tracking_uri: str, configs: list[PipelineConfig],
    dataset: Any, num_shards: int, seed: int, pruner: Pruner | None,
    create_model_fn: Callable[[Any], tuple[Any, Any]], batched: bool,
    slice_timeout: float | None = DEFAULT_SLICE_TIMEOUT, experiments_root: Path,
) -> Plan:  # fmt: skip
    """A new evals plan (nothing written yet)."""
    data = to_dataset(dataset, "dataset")
    check_evals_settings(len(data), num_shards, seed, pruner)
    chosen = pruner or NoPruning()
    settings = ExperimentSettings.of(
        num_chunks=num_shards,
        seed=seed,
        pruner=chosen.with_defaults(chosen.metric or "Samples Processed", chosen.mode or "max"),
        fusion=FusionPolicy(MAX_BATCHED_PIPELINES, 10**9) if batched else False,
        slice_timeout=slice_timeout,
    )
    fingerprint = dataset_fingerprint(data, None)
    first = 1
    if Store.exists(exp_dir):
        store = Store(exp_dir, readonly=True)
        try:
            meta, first = store.meta(), store.next_run_id()
        finally:
            store.close()
        if meta.get("fingerprint") not in (None, fingerprint):
            raise ConfigError(
                f"experiment {name!r} already exists at {exp_dir} with another eval set; use a "
                "new experiment_name"
            )
    specs = [
        pipeline_spec(c, first + i, len(data), num_shards, seed, experiments_root)
        for i, c in enumerate(configs)
    ]
    if any(s.generator.wants_vllm for s in specs):
        serving.choose(specs, serving.Platform.detect())
    load_corpora(specs)
    return Plan(
        name=name, dir=exp_dir, tracking_uri=tracking_uri, specs=specs,
        create_model_fn=create_model_fn, settings=settings, fingerprint=fingerprint,
        train=data, eval=None, differing=_differing(specs),
    )  # fmt: skip


def start_lines(plan: Plan) -> list[str]:
    """What ``run_evals`` says once when it starts: which engine serves a generator that
    asked for vLLM and did not get it (``serving.notes``)."""
    return [f"[rf-ray {plan.name}] {line}" for line in serving.notes(plan.specs)]


def _differing(specs: list[PipelineSpec]) -> list[str]:
    from rf_ray.specs import differing_keys

    return differing_keys([s.params for s in specs])


def read_results(exp_dir: Path) -> dict[int, tuple[dict[str, list[Any]], dict[str, Any]]]:
    """RapidFire's ``run_evals`` result: per pipeline that is not failed or deleted, its
    aggregated results (every row's columns) and cumulative metrics with intervals, as of its
    last recorded shard."""
    store = Store(exp_dir, readonly=True)
    try:
        runs = store.runs()
    finally:
        store.close()
    out: dict[int, tuple[dict[str, list[Any]], dict[str, Any]]] = {}
    for row in runs:
        if row["status"] in ("failed", "deleted") or not row.get("checkpoint"):
            continue
        path = ExperimentDir(exp_dir).own_path(row["run_id"], row["checkpoint"])
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise DamagedFileError(path, "missing: this pipeline's last recorded state") from None
        except (UnicodeDecodeError, ValueError) as e:
            raise DamagedFileError(path, f"is not JSON ({e})") from None
        out[int(row["run_id"])] = (state["results"], state["cumulative"])
    return out


__all__ = [
    "check_evals_settings",
    "evals_plan",
    "pipeline_spec",
    "read_results",
    "resolve_adapter",
    "start_lines",
]
