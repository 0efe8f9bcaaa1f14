"""``PipelineEngine``: the evals pipelines placed on one executor, and one shard's step.

The ``BaseModelActor`` hands every evals request here (a pipeline spec is recognised by
``spec.is_pipeline``); fine-tuning runs go to the ``Executor`` as before. A local generator is
served by the engine the driver chose (``serving``): the executor's resident base model
(``Executor.load_base``, once per model for every pipeline) or one vLLM engine per model
(``vllm_generator``). The engine owns what is evals' own:

* one ``PipelineRecord`` per pipeline: its spec, built retrieval (``Rag``) and prompt manager,
  its progress (rows of the eval set done), the per-batch metrics and results so far, and its
  RNG stream;
* ``Retrieval``: indexes built once per distinct (corpus, splitter, embedding), shared;
* ``Endpoints``: one API client per endpoint and model (its rate limit shared by the pipelines
  calling it).

``run_group`` runs a group of pipelines over their granted rows (one shard): per batch, each
pipeline's ``preprocess_fn`` builds its prompts, all local pipelines' prompts on one model
generate in one call (``generate.generate_group`` or ``VllmGenerator.generate``), then each
pipeline's ``postprocess_fn`` and ``compute_metrics_fn``. After the shard each pipeline's
cumulative metrics get confidence intervals (``policies.intervals``) and its state (with its
sampling RNG) is written, durably, before the step returns. An exception in one pipeline's
function fails that pipeline only, named; the others go on. An API pipeline's shard runs on
another thread than the executor's worker (``BaseModelActor``), beside the others: what it
shares with them is the pipeline table (each record its own) and ``Retrieval`` (locked).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from actors.engine.evals.api_client import CallStats, Endpoints
from actors.engine.evals.generate import LocalRequest, generate_group
from actors.engine.evals.prompts import PromptManager
from actors.engine.evals.retrieval import Rag, Retrieval
from actors.engine.evals.serving import TRANSFORMERS, VLLM
from actors.engine.evals.spec import PipelineSpec
from actors.messages import SliceResult
from actors.storage.durable import atomic_write, make_private_dir
from actors.storage.layout import RunDir
from policies.chunking import epoch_order
from policies.errors import RunFailedError, RunNotPlacedError
from policies.intervals import OnlineStrategy, add_intervals, flat_metrics

logger = logging.getLogger(__name__)

SAMPLES = "Samples Processed"


@dataclass
class PipelineRecord:
    """Everything the executor keeps for one pipeline: one record."""

    spec: PipelineSpec
    rag: Rag | None
    prompt: PromptManager | None
    rows_done: int = 0
    metrics: dict[str, list[Any]] = field(default_factory=dict)
    """Per metric, its value dict of every batch so far (RapidFire's aggregated metrics)."""
    results: dict[str, list[Any]] = field(default_factory=dict)
    """Per column, every row's value so far (RapidFire's aggregated results)."""
    generator: torch.Generator | None = None
    last_result: SliceResult | None = None
    cumulative: dict[str, Any] = field(default_factory=dict)
    """The cumulative metrics with intervals after the last shard (RapidFire's shape)."""


@dataclass
class ShardCounts:
    """What one pipeline's shard cost: tokens generated; for an API pipeline, its requests'
    retries and waits (reported with the shard's metrics)."""

    tokens: int = 0
    api: CallStats = field(default_factory=CallStats)


class PipelineFailedError(RunFailedError):
    """One pipeline's own function raised; the message names the pipeline and the function."""


class PipelineEngine:
    """Evals pipelines on one executor (see module docstring)."""

    def __init__(self, executor: Any, dataset: Any, exp_dir: str | Path | None = None) -> None:
        self.executor = executor
        self.dataset = dataset
        """The eval set (a ``datasets.Dataset``): shards are rows of its seeded order."""
        self.retrieval = Retrieval(exp_dir)
        """Indexes, shared; stored corpora are read from ``exp_dir``."""
        self.pipelines: dict[int, PipelineRecord] = {}
        self.endpoints = Endpoints()
        """API endpoints' clients, shared by the pipelines calling them."""
        self.durable: dict[tuple[int, int], str] = {}
        """(run id, rows done) -> the state file written after that shard."""
        self.backends: dict[str, str] = {}
        """The engine serving each local model key here (``serving.VLLM`` or ``TRANSFORMERS``)."""
        self.vllm: dict[str, Any] = {}
        """One ``vllm_generator.VllmGenerator`` per vLLM model key."""

    # ------------------------------------------------------------------ placement
    def add(self, spec: PipelineSpec, state: dict[str, Any] | None = None) -> None:
        """Place a pipeline (restored from its state file's content when given)."""
        if spec.run_id in self.pipelines:
            return
        self.executor.phase = f"placing pipeline {spec.run_id}"
        if self.load_generator(spec) == TRANSFORMERS and spec.adapter is not None:
            self._load_adapter(self.executor.bases[spec.model_key], spec)
        rag = self.retrieval.rag(spec.rag) if spec.rag is not None else None
        prompt = None
        if spec.prompt is not None:
            p = spec.prompt
            embedding = (self.retrieval.embedding(p.embedding_cls, p.embedding_kwargs)
                         if p.embedding_cls is not None else None)  # fmt: skip
            prompt = PromptManager(p, embedding, self.retrieval.lock)
        record = PipelineRecord(spec, rag, prompt)
        if spec.generator.seed is not None:
            record.generator = torch.Generator(device=self.executor.device)
            record.generator.manual_seed(int(spec.generator.seed))
        if state is not None:
            record.rows_done = int(state["rows_done"])
            record.metrics, record.results = state["metrics"], state["results"]
            record.cumulative = state.get("cumulative", {})
            if record.generator is not None and state.get("rng") is not None:
                # the sampling stream goes on where it stopped: a resumed pipeline draws the
                # tokens an uninterrupted one would
                rng = torch.frombuffer(bytearray(base64.b64decode(state["rng"])), dtype=torch.uint8)
                record.generator.set_state(rng)
        self.pipelines[spec.run_id] = record

    def load_generator(self, spec: PipelineSpec) -> str | None:
        """Load what serves the pipeline's generator, once per model (ahead of its first shard:
        ``BaseModelActor.load_base``); returns the engine (None: an API endpoint)."""
        if spec.generator.kind != "local":
            return None
        backend = self._backend(spec)
        if backend == VLLM:
            if spec.model_key not in self.vllm:
                from actors.engine.evals.vllm_generator import VllmGenerator

                self.executor.phase = f"starting vLLM for {spec.generator.model_name}"
                self.vllm[spec.model_key] = VllmGenerator(spec.generator)
        else:
            self.executor.load_base(spec)
        return backend

    def _backend(self, spec: PipelineSpec) -> str:
        """The engine chosen on the driver (``serving``), unless this process cannot run vLLM:
        then transformers, said once per model."""
        key = spec.model_key
        if key not in self.backends:
            backend = spec.generator.backend
            if backend == VLLM:
                from actors.engine.evals.vllm_generator import usable_here

                why = usable_here()
                if why is not None:
                    logger.warning(
                        "RFvLLMModelConfig(%s) was given vLLM, but %s: the executor serves it "
                        "with its resident model (transformers generate)",
                        spec.generator.model_name, why,
                    )  # fmt: skip
                    backend = TRANSFORMERS
            self.backends[key] = backend
        return self.backends[key]

    def _load_adapter(self, entry: Any, spec: PipelineSpec) -> None:
        """Load the pipeline's exported adapter as a resident adapter on the base."""
        from peft import PeftModel

        name = spec.adapter_name
        if entry.model is None:
            entry.model = PeftModel.from_pretrained(
                entry.raw_model, spec.adapter, adapter_name=name
            )
        elif name not in entry.model.peft_config:
            entry.model.load_adapter(spec.adapter, adapter_name=name)
        entry.run_ids.add(spec.run_id)

    def is_api(self, run_id: int) -> bool:
        """Whether a placed pipeline's generator is an API endpoint (its shards run beside the
        executor's worker: ``BaseModelActor._api_shard``)."""
        return self.pipelines[run_id].spec.generator.kind == "api"

    def remove(self, run_id: int) -> None:
        record = self.pipelines.pop(run_id, None)
        if record is None or record.spec.adapter is None:
            return
        entry = self.executor.bases.get(record.spec.model_key)
        if entry is not None and entry.model is not None:
            entry.run_ids.discard(run_id)
            if record.spec.adapter_name in entry.model.peft_config:
                entry.model.delete_adapter(record.spec.adapter_name)

    def placement(self, run_id: int, start: int, end: int) -> SliceResult | None:
        """Cached outcome of a shard that already ran, None to run it; ``RunNotPlacedError``
        when the pipeline is not here at ``start`` (re-place it from its state, retry)."""
        record = self.pipelines.get(run_id)
        if record is None:
            raise RunNotPlacedError(f"pipeline {run_id} is not resident on this executor")
        last = record.last_result
        if record.rows_done == end and last is not None and last.start_step == start:
            return last
        if record.rows_done != start:
            raise RunNotPlacedError(
                f"pipeline {run_id} is at row {record.rows_done} here, its grant starts at row "
                f"{start}; re-place it from its state file"
            )
        return None

    # ------------------------------------------------------------------ one shard
    def run_group(
        self, grants: dict[int, tuple[int, int, str]]
    ) -> dict[int, SliceResult | BaseException]:
        """Run each granted pipeline (``run id -> (start row, end row, run dir)``) over its
        rows; one outcome per pipeline: its ``SliceResult`` or its own error."""
        outcomes: dict[int, SliceResult | BaseException] = {}
        todo: dict[int, tuple[int, int, str]] = {}
        for rid, (start, end, run_dir) in grants.items():
            try:
                cached = self.placement(rid, start, end)
            except Exception as exc:
                outcomes[rid] = exc
                continue
            if cached is not None:
                outcomes[rid] = cached
            else:
                todo[rid] = (start, end, run_dir)
        if todo:
            outcomes.update(self._run(todo))
        return outcomes

    def _rows(self, start: int, end: int, seed: int) -> list[int]:
        return epoch_order(len(self.dataset), seed, 0)[start:end]

    def _run(self, todo: dict[int, tuple[int, int, str]]) -> dict[int, Any]:
        started_at, started = time.time(), time.perf_counter()
        live = dict(todo)
        failed: dict[int, BaseException] = {}
        batches = {
            rid: self._batches(self.pipelines[rid], start, end)
            for rid, (start, end, _) in todo.items()
        }
        shard = {rid: ShardCounts() for rid in todo}
        for index in range(max(len(b) for b in batches.values())):
            prepared: dict[int, dict[str, list[Any]]] = {}
            for rid in [r for r in live if index < len(batches[r])]:
                try:
                    prepared[rid] = self._preprocess(self.pipelines[rid], batches[rid][index][1])
                except Exception as exc:
                    failed[rid] = exc
                    live.pop(rid)
            rows = {rid: batches[rid][index][0] for rid in prepared}
            for rid, texts in self._generate(prepared, rows, shard).items():
                if isinstance(texts, BaseException):
                    failed[rid] = texts
                    live.pop(rid)
                    continue
                batch = prepared[rid]
                batch["generated_text"] = texts
                try:
                    self._score(self.pipelines[rid], batch)
                except Exception as exc:
                    failed[rid] = exc
                    live.pop(rid)
        outcomes: dict[int, Any] = dict(failed)
        seconds = time.perf_counter() - started
        for rid in live:
            start, end, run_dir = todo[rid]
            try:
                outcomes[rid] = self._close_shard(
                    self.pipelines[rid], start, end, run_dir, seconds, started_at, shard[rid],
                    len(todo),
                )  # fmt: skip
            except Exception as exc:
                outcomes[rid] = exc
        return outcomes

    def _batches(
        self, record: PipelineRecord, start: int, end: int
    ) -> list[tuple[list[int], dict[str, list]]]:
        """The shard's batches: each with its rows' positions in the shuffled eval set."""
        rows = self.dataset.select(self._rows(start, end, record.spec.seed))
        size = record.spec.batch_size
        return [
            (list(range(start + i, min(start + i + size, end))), rows[i : i + size])
            for i in range(0, len(rows), size)
        ]

    def _preprocess(self, record: PipelineRecord, batch: dict[str, list]) -> dict[str, list]:
        fn = record.spec.preprocess_fn
        if fn is None:
            if "prompts" not in batch:
                raise PipelineFailedError(
                    f"pipeline {record.spec.run_id}: no preprocess_fn and the eval set has no "
                    "'prompts' column; give a preprocess_fn that returns {'prompts': [...], ...}"
                )
            return dict(batch)
        out = _call(record, "preprocess_fn", fn, dict(batch), record.rag, record.prompt)
        if not isinstance(out, dict) or "prompts" not in out:
            raise PipelineFailedError(
                f"pipeline {record.spec.run_id}: preprocess_fn must return a dict with a "
                f"'prompts' list, got {type(out).__name__}"
            )
        return out

    def _generate(
        self, prepared: dict[int, dict], rows: dict[int, list[int]], shard: dict[int, ShardCounts]
    ) -> dict[int, list[str] | BaseException]:
        """Completions per pipeline (or its error): an API pipeline's from its endpoint, local
        ones in one batched call per model (vLLM's or the resident model's)."""
        out: dict[int, list[str] | BaseException] = {}
        by_model: dict[str, list[int]] = {}
        for rid in prepared:
            spec = self.pipelines[rid].spec
            if spec.generator.kind == "api":
                try:
                    out[rid], stats = self.endpoints.complete(spec.generator,
                                                              prepared[rid]["prompts"])  # fmt: skip
                    shard[rid].api.add(stats)
                except Exception as exc:
                    out[rid] = exc
            else:
                by_model.setdefault(spec.model_key, []).append(rid)
        for key, rids in by_model.items():
            self.executor.phase = f"generating for pipelines {rids}"
            if self.backends.get(key) == VLLM:
                requests: list[Any] = [self._vllm_request(r, prepared[r]["prompts"], rows[r])
                                       for r in rids]  # fmt: skip
                run = self.vllm[key].generate
            else:
                entry = self.executor.bases[key]
                model = entry.model if entry.model is not None else entry.raw_model
                requests = [self._local_request(r, prepared[r]["prompts"]) for r in rids]
                run = functools.partial(generate_group, model, entry.tokenizer)
            for rid, req, texts in zip(rids, requests, _together_or_alone(run, requests, rids)):
                out[rid] = texts
                shard[rid].tokens += req.new_tokens
        return out

    def _local_request(self, rid: int, prompts: list[Any]) -> LocalRequest:
        record = self.pipelines[rid]
        adapter = record.spec.adapter_name if record.spec.adapter is not None else None
        return LocalRequest(list(prompts), dict(record.spec.generator.generation), adapter,
                            record.generator)  # fmt: skip

    def _vllm_request(self, rid: int, prompts: list[Any], rows: list[int]) -> Any:
        from actors.engine.evals.vllm_generator import VllmRequest

        spec = self.pipelines[rid].spec
        g = spec.generator
        return VllmRequest(list(prompts), dict(g.vllm_sampling), g.seed, rows, spec.adapter)

    def _score(self, record: PipelineRecord, batch: dict[str, list]) -> None:
        if record.spec.postprocess_fn is not None:
            batch = _call(record, "postprocess_fn", record.spec.postprocess_fn, batch)
        metrics: dict[str, Any] = {SAMPLES: {"value": len(batch["generated_text"])}}
        if record.spec.compute_metrics_fn is not None and record.spec.accumulate_metrics_fn:
            metrics.update(_metrics(record, "compute_metrics_fn", record.spec.compute_metrics_fn,
                                    batch))  # fmt: skip
        for key, values in batch.items():
            record.results.setdefault(key, []).extend(_jsonable(values))
        for key, value in metrics.items():
            record.metrics.setdefault(key, []).append(_jsonable(value))

    def _cumulative(self, record: PipelineRecord) -> dict[str, Any]:
        """RapidFire's cumulative metrics: the batches accumulated by
        ``accumulate_metrics_fn``, else ``compute_metrics_fn`` over every row so far."""
        spec = record.spec
        seen = sum(m["value"] for m in record.metrics.get(SAMPLES, []))
        out: dict[str, Any] = {SAMPLES: {"value": seen}}
        if spec.accumulate_metrics_fn is not None:
            out.update(_metrics(record, "accumulate_metrics_fn", spec.accumulate_metrics_fn,
                                record.metrics))  # fmt: skip
        elif spec.compute_metrics_fn is not None:
            out.update(_metrics(record, "compute_metrics_fn", spec.compute_metrics_fn,
                                record.results))  # fmt: skip
        strategy = OnlineStrategy.from_kwargs(spec.online or None)
        return add_intervals(out, seen, strategy, population=len(self.dataset))

    def _close_shard(
        self, record: PipelineRecord, start: int, end: int, run_dir: str, seconds: float,
        started_at: float, counts: ShardCounts, group: int,
    ) -> SliceResult:  # fmt: skip
        record.cumulative = self._cumulative(record)
        record.rows_done = end
        path = self._write_state(record, run_dir)
        extras = {"shard_seconds": seconds}
        if record.spec.generator.kind == "api":
            extras.update(api_retries=float(counts.api.retries),
                          api_wait_seconds=counts.api.waited)  # fmt: skip
        result = SliceResult(
            run_id=record.spec.run_id, start_step=start, end_step=end, step_metrics=[],
            eval_metrics={**flat_metrics(record.cumulative), **extras},
            seconds=seconds, train_seconds=seconds, swap_seconds=0.0, tokens=counts.tokens,
            memory={}, started_at=started_at, ended_at=time.time(), fused_with=group,
            checkpoint=path,
        )  # fmt: skip
        record.last_result = result
        return result

    def _write_state(self, record: PipelineRecord, run_dir: str) -> str:
        """The pipeline's state after the shard, durable (fsynced, atomic) before it counts."""
        base = make_private_dir(Path(run_dir))
        state = {"rows_done": record.rows_done, "metrics": record.metrics,
                 "results": record.results, "cumulative": record.cumulative}  # fmt: skip
        if record.generator is not None:
            rng = record.generator.get_state().numpy().tobytes()
            state["rng"] = base64.b64encode(rng).decode()
        path = RunDir(base).evals_state(record.rows_done)
        atomic_write(path, json.dumps(_jsonable(state)).encode())
        self.durable[(record.spec.run_id, record.rows_done)] = str(path)
        return str(path)


def _together_or_alone(
    run: Callable[[list[Any]], list[list[str]]], requests: list[Any], rids: list[int]
) -> list[list[str] | BaseException]:
    """``run(requests)`` in one call; if it raises (a bad prompt of one pipeline), each request
    alone, so only the pipeline whose request fails gets the error."""
    try:
        return list(run(requests))
    except Exception as exc:
        logger.warning("batched generation for %s failed (%s); one by one", rids, exc)
    out: list[list[str] | BaseException] = []
    for req in requests:
        try:
            out.append(run([req])[0])
        except Exception as one:
            out.append(one)
    return out


def read_state(path: str) -> dict[str, Any]:
    """A pipeline's state file (what ``add`` restores)."""
    return dict(json.loads(Path(path).read_text()))


def _call(record: PipelineRecord, name: str, fn: Any, *args: Any) -> Any:
    """The user's function; what it raises fails this pipeline, named."""
    try:
        return fn(*args)
    except Exception as exc:
        raise PipelineFailedError(
            f"pipeline {record.spec.run_id}: its {name} "
            f"({getattr(fn, '__qualname__', fn)!s}) raised {type(exc).__name__}: {exc}"
        ) from exc


def _metrics(record: PipelineRecord, name: str, fn: Any, *args: Any) -> dict[str, Any]:
    """A metric function's result, which must be RapidFire's ``{metric: {"value": ...}}``: any
    other fails this pipeline, naming the function and what it returned."""
    out = _call(record, name, fn, *args)
    if not isinstance(out, dict):
        raise PipelineFailedError(
            f"pipeline {record.spec.run_id}: its {name} ({getattr(fn, '__qualname__', fn)!s}) "
            f"returned {type(out).__name__} {str(out)[:200]}; it must return a dict "
            "{metric name: {'value': ...}}"
        )
    return out


def _jsonable(value: Any) -> Any:
    """Plain JSON types (a document or tensor becomes its text)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 1) == 0:
        return item()
    return str(value)


__all__ = ["PipelineEngine", "PipelineFailedError", "PipelineRecord", "read_state"]
