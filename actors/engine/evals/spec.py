"""What the executor gets for one evals pipeline: plain data plus the user's objects.

``rf_ray.evals`` validates the user's config set and resolves each concrete pipeline into a
``PipelineSpec``; the actors only ever see these records (cloudpickled, as fit runs' specs are).
No torch or LangChain import here: the scheduler and trials never load them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from policies.chunking import ChunkPlan

EVALS_FUSION_PREFIX = "evals:"
"""Fusion keys of evals pipelines start with this: pipelines with equal keys (same resident
generator) are granted a shard together and generate in one batched call."""


@dataclass
class GeneratorModel:
    """The model a local generator serves, as ``create_model_fn`` receives it: attributes like
    a fit run's config (``model_name``, ``model_kwargs``, ``tokenizer_kwargs``) and RapidFire's
    dict keys (``model_config["model"]``, ``["model_name"]``)."""

    model_name: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    tokenizer_kwargs: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        if key in ("model", "model_name"):
            return self.model_name
        if key in ("model_kwargs", "tokenizer_kwargs"):
            return getattr(self, key)
        raise KeyError(f"{key!r}: a generator's model config has model, model_kwargs, "
                       "tokenizer_kwargs")  # fmt: skip

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


@dataclass
class GeneratorSpec:
    """How a pipeline's prompts are completed."""

    kind: str
    """``"local"``: the executor's resident model (``RFvLLMModelConfig``); ``"api"``: an
    OpenAI-compatible endpoint (``RFAPIModelConfig``)."""
    model_name: str
    generation: dict[str, Any] = field(default_factory=dict)
    """Local: ``transformers.GenerationConfig`` fields (mapped from vLLM's sampling params)."""
    seed: int | None = None
    """Local sampling: the pipeline's own RNG stream starts here."""
    wants_vllm: bool = False
    """The user asked for vLLM (``RFvLLMModelConfig``)."""
    backend: str = "transformers"
    """Local: the engine that serves it, ``"vllm"`` or ``"transformers"`` (the executor's
    resident model), chosen once on the driver (``serving.select``)."""
    backend_note: str | None = None
    """Why a generator that asked for vLLM is served by transformers (said once)."""
    vllm_config: dict[str, Any] = field(default_factory=dict)
    """The user's ``model_config``: vLLM's engine arguments."""
    vllm_sampling: dict[str, Any] = field(default_factory=dict)
    """The user's ``sampling_params``: vLLM's ``SamplingParams`` arguments."""
    vllm_lora: dict[str, Any] = field(default_factory=dict)
    """vLLM engine arguments that serve the adapters of the pipelines on this model
    (``serving.lora_settings``); empty: LoRA off."""
    client: dict[str, Any] = field(default_factory=dict)
    """API: ``base_url``, ``api_key``, ``timeout``, ``max_retries``."""
    request: dict[str, Any] = field(default_factory=dict)
    """API: the request's sampling fields (``temperature``, ...)."""
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_completion_tokens: int = 150


@dataclass
class RagSpec:
    """A pipeline's retrieval, resolved from ``RFLangChainRagSpec`` (LangChain objects kept)."""

    loaders: list[Any] = field(default_factory=list)
    """LangChain document loaders; the driver loads them (``load_corpus``) and clears them:
    a loader may hold what cannot be pickled (a compiled jq program)."""
    splitter: Any = None
    documents: list[Any] | None = None
    """The corpus, loaded and split on the driver, until it is stored (then None)."""
    corpus: str | None = None
    """The key of the stored corpus (``corpus.corpus_file``): what a stored spec holds instead
    of the documents, and what the executor reads and indexes."""
    embedding_cls: Any = None
    embedding_kwargs: dict[str, Any] = field(default_factory=dict)
    store_type: str = "faiss"
    """``"faiss"`` (dense vectors) or ``"bm25"`` (lexical, ``bm25s``)."""
    store_kwargs: dict[str, Any] = field(default_factory=dict)
    retriever: Any = None
    """A user's own LangChain retriever, used as given (no index is built)."""
    search_type: str = "similarity"
    search_kwargs: dict[str, Any] = field(default_factory=lambda: {"k": 5})
    reranker_cls: Any = None
    reranker_kwargs: dict[str, Any] = field(default_factory=dict)
    template: Callable[[Any], str] | None = None
    described: dict[str, Any] = field(default_factory=dict)
    """The JSON view of the index-building part (loaders, splitter, embedding, store), from
    which ``index_key`` is hashed."""

    def load_corpus(self) -> list[Any]:
        """Load the documents with the loaders and split them (once, on the driver; then the
        result is stored, ``corpus``, instead of the loaders)."""
        if self.documents is None:
            docs = [doc for loader in self.loaders for doc in loader.load()]
            if self.splitter is not None:
                docs = self.splitter.split_documents(docs)
            self.documents = docs
        self.loaders, self.splitter = [], None
        return self.documents

    def stored(self) -> RagSpec:
        """This spec as stored and shipped to executors: the corpus by its key only."""
        if self.corpus is None:
            return self
        return dataclasses.replace(self, documents=None)

    def index_key(self) -> str:
        """Equal for pipelines whose index is the same (corpus, splitter, embedding, store):
        they share one index."""
        text = json.dumps(self.described, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class PromptSpec:
    """A pipeline's prompt manager, resolved from ``RFPromptManager``."""

    instructions: str = ""
    examples: list[dict[str, Any]] = field(default_factory=list)
    embedding_cls: Any = None
    embedding_kwargs: dict[str, Any] = field(default_factory=dict)
    example_selector_cls: Any = None
    example_prompt_template: Any = None
    k: int = 3


@dataclass
class PipelineSpec:
    """Everything an executor needs to run one pipeline over shards of the eval set."""

    run_id: int
    model_key: str
    """The resident generator it uses: pipelines with equal keys share one copy."""
    model_config: GeneratorModel
    """Passed to ``create_model_fn`` once per model_key per executor."""
    plan: ChunkPlan
    """Rows of the eval set as steps (batch size 1), shards as chunks."""
    seed: int
    generator: GeneratorSpec
    rag: RagSpec | None = None
    prompt: PromptSpec | None = None
    adapter: str | None = None
    """An exported adapter directory to generate with (a fit run's ``runs/<id>/adapter``)."""
    batch_size: int = 8
    preprocess_fn: Callable[..., Any] | None = None
    postprocess_fn: Callable[..., Any] | None = None
    compute_metrics_fn: Callable[..., Any] | None = None
    accumulate_metrics_fn: Callable[..., Any] | None = None
    online: dict[str, Any] = field(default_factory=dict)
    """``policies.intervals.OnlineStrategy.to_dict()``."""
    params: dict[str, Any] = field(default_factory=dict)
    """Flat, JSON-able view of the pipeline's config (MLflow params, status)."""
    parent_run_id: int | None = None

    trainer_type = "EVALS"

    def stored(self) -> PipelineSpec:
        """This spec as stored and shipped to executors: a stored corpus by its key only
        (``RagSpec.stored``), so N pipelines over one corpus do not carry N copies of it."""
        if self.rag is None or self.rag.corpus is None:
            return self
        return dataclasses.replace(self, rag=self.rag.stored())

    @property
    def adapter_name(self) -> str:
        """The PEFT adapter name of this pipeline's adapter (when it names one)."""
        return f"pipeline_{self.run_id}"

    @property
    def fusion_key(self) -> str | None:
        """Pipelines on the same local generator are granted a shard together and generate in
        one batched call; API pipelines are time-sliced."""
        if self.generator.kind != "local":
            return None
        return f"{EVALS_FUSION_PREFIX}{self.model_key}"

    @property
    def exclusive(self) -> bool:
        """Whether its shards occupy the executor: a local generator's do; an API pipeline's
        wait on the network and run beside the executor's work (``RunEntry.exclusive``)."""
        return self.generator.kind == "local"

    @property
    def fusion_tokens(self) -> int:
        """What one pipeline adds to a group's generation batch (rows of a batch)."""
        return self.batch_size


def is_pipeline(spec: Any) -> bool:
    """Whether a run's spec is an evals pipeline (not a fine-tuning run)."""
    return isinstance(spec, PipelineSpec)


__all__ = [
    "EVALS_FUSION_PREFIX",
    "GeneratorModel",
    "GeneratorSpec",
    "PipelineSpec",
    "PromptSpec",
    "RagSpec",
    "is_pipeline",
]
