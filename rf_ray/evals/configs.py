"""What an evals user writes: RapidFire AI's RAG spec, prompt manager and generator configs.

    rag = RFLangChainRagSpec(
        document_loader=DirectoryLoader(...), text_splitter=List([splitter_a, splitter_b]),
        embedding_cfg={"class": HuggingFaceEmbeddings, "model_name": ...},
        search_cfg={"type": "similarity", "k": 8},
        reranker_cfg={"class": CrossEncoderReranker, "model_name": ..., "top_n": List([2, 5])},
    )
    generator = RFvLLMModelConfig(model_config={"model": ...}, sampling_params={...}, rag=rag)
    config_set = {"vllm_config": generator, "batch_size": 8, "preprocess_fn": ...,
                  "compute_metrics_fn": ..., "accumulate_metrics_fn": ...}
    RFGridSearch(config_set)   # one pipeline per combination of the List knobs

Each class keeps the arguments it was given (``params``) and checks their shape at once: an
unknown argument, a ``List`` where none is allowed, a value of the wrong kind. A ``List`` may
stand for any component (a splitter, an embedding config) or any value inside a component's
config dict. The concrete values of each pipeline are checked again, whole, when a search
expands (``rf_ray.evals.build``), before anything starts; that is where a LangChain object of
the wrong kind or a missing package (named with the extra to install) is refused.

The built objects a ``preprocess_fn`` receives (``rag.get_context``, ``rag.serialize_documents``,
``prompt_manager.get_fewshot_examples``) live on the executor (``actors.engine.evals``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from policies.errors import ConfigError
from rf_ray.knobs import List, Range, is_knob


def _contains_knob(value: Any) -> bool:
    if is_knob(value):
        return True
    if isinstance(value, dict):
        return any(_contains_knob(v) for v in value.values())
    return False


class _EvalsParams:
    """Arguments kept as given (knobs included); ``params`` is what a search expands."""

    _fields: ClassVar[tuple[str, ...]] = ()
    _no_knobs: ClassVar[frozenset[str]] = frozenset()
    """Fields a ``List`` may not stand for (one shared setting, or an object with knobs of its
    own inside)."""

    def __init__(self, **params: Any) -> None:
        name = type(self).__name__
        unknown = sorted(set(params) - set(self._fields))
        if unknown:
            raise ConfigError(
                f"{name}: unknown argument(s) {unknown}; it takes {', '.join(self._fields)}"
            )
        for key, value in params.items():
            if key in self._no_knobs and _contains_knob(value):
                raise ConfigError(
                    f"{name}({key}={value!r}): a List or Range is not allowed here; "
                    f"{_NO_KNOB_WHY.get(key, 'it is one setting for every pipeline')}"
                )
            for one in value.values if isinstance(value, List) else [value]:
                if isinstance(one, Range):
                    continue
                self._check(key, one)
        self.params: dict[str, Any] = dict(params)

    def _check(self, key: str, value: Any) -> None:
        """Shape check of one (knob-free at the top) value of ``key``; override per class."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def __getattr__(self, name: str) -> Any:
        # RapidFire's configs expose their arguments as attributes (rag.search_cfg, ...).
        params = self.__dict__.get("params")
        if params is not None and name in type(self)._fields:
            return params.get(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


_NO_KNOB_WHY = {
    "enable_gpu_search": "it is where the index lives, not a pipeline setting",
    "document_template": "give one template; to compare templates, use a List of rag specs",
    "rag": "put the List inside the RFLangChainRagSpec (on its components), or give a List "
    "of generator configs",
    "prompt_manager": "put the List inside the RFPromptManager",
    "rpm_limit": "a rate limit belongs to the endpoint, shared by every pipeline that calls it",
    "tpm_limit": "a rate limit belongs to the endpoint, shared by every pipeline that calls it",
    "client_config": "the endpoint's client is one setting; compare models with "
    "model_config={'model': List([...])}",
    "online_strategy_kwargs": "the confidence intervals must be computed alike to be compared",
}


def _check_dict(owner: str, key: str, value: Any, required: str | None = None) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise ConfigError(f"{owner}({key}={value!r}) must be a dict or None")
    if required is not None and required not in value:
        raise ConfigError(f"{owner}({key}=...) needs a {required!r} key, got keys {sorted(value)}")


class RFLangChainRagSpec(_EvalsParams):
    """A pipeline's retrieval, as RapidFire AI's ``RFLangChainRagSpec``: LangChain's document
    loader and text splitter, an embedding config (``{"class": EmbeddingsClass, **kwargs}``), a
    vector store config (``{"type": "faiss"}``, the default, or ``{"type": "bm25"}``), a search
    config (``{"type": "similarity" | "mmr" | "similarity_score_threshold", "k": ...}``) and an
    optional reranker config (``{"class": CrossEncoderReranker, "model_name": ...,
    "top_n": ...}``). A ready ``retriever`` may replace loader, store and embedding."""

    _fields = ("document_loader", "text_splitter", "embedding_cfg", "vector_store_cfg",
               "retriever", "search_cfg", "reranker_cfg", "enable_gpu_search",
               "document_template")  # fmt: skip
    _no_knobs = frozenset({"enable_gpu_search", "document_template"})

    def __init__(  # noqa: PLR0913  RapidFire AI's signature
        self,
        document_loader: Any = None,
        text_splitter: Any = None,
        embedding_cfg: dict[str, Any] | List | None = None,
        vector_store_cfg: dict[str, Any] | List | None = None,
        retriever: Any = None,
        search_cfg: dict[str, Any] | List | None = None,
        reranker_cfg: dict[str, Any] | List | None = None,
        enable_gpu_search: bool = False,
        document_template: Any = None,
    ) -> None:
        given = {k: v for k, v in locals().items() if k in self._fields and v is not None}
        super().__init__(**given)
        if document_loader is None and retriever is None:
            raise ConfigError(
                "RFLangChainRagSpec needs a document_loader (an index is built from its "
                "documents) or a ready retriever"
            )

    def _check(self, key: str, value: Any) -> None:
        owner = "RFLangChainRagSpec"
        if key in ("embedding_cfg", "reranker_cfg"):
            _check_dict(owner, key, value, "class")
        elif key in ("vector_store_cfg", "search_cfg"):
            _check_dict(owner, key, value)
        elif key == "enable_gpu_search" and not isinstance(value, bool):
            raise ConfigError(f"{owner}(enable_gpu_search={value!r}) must be True or False")
        elif key == "document_template" and not callable(value):
            raise ConfigError(
                f"{owner}(document_template={value!r}) must be a function Document -> str"
            )


class RFPromptManager(_EvalsParams):
    """Instructions and few-shot examples for a pipeline's prompts, as RapidFire AI's
    ``RFPromptManager``: ``instructions`` (or ``instructions_file_path``), ``examples`` (dicts),
    an ``embedding_cfg`` and an ``example_selector_cls`` (LangChain's semantic-similarity or
    max-marginal-relevance selector) that picks ``k`` examples per query, formatted with
    ``example_prompt_template``."""

    _fields = ("instructions", "instructions_file_path", "examples", "embedding_cfg",
               "example_selector_cls", "example_prompt_template", "k")  # fmt: skip
    _no_knobs = frozenset({"examples", "instructions_file_path"})

    def __init__(
        self,
        instructions: str | List = "",
        instructions_file_path: str = "",
        examples: list[dict[str, Any]] | None = None,
        embedding_cfg: dict[str, Any] | List | None = None,
        example_selector_cls: Any = None,
        example_prompt_template: Any = None,
        k: int | List = 3,
    ) -> None:
        given = {k_: v for k_, v in locals().items() if k_ in self._fields}
        super().__init__(**given)

    def _check(self, key: str, value: Any) -> None:
        owner = "RFPromptManager"
        if key in ("instructions", "instructions_file_path") and not isinstance(value, str):
            raise ConfigError(f"{owner}({key}={value!r}) must be a str")
        if (
            key == "examples"
            and value is not None
            and (not isinstance(value, list) or not all(isinstance(e, dict) for e in value))
        ):
            raise ConfigError(f"{owner}(examples=...) must be a list of dicts, got {value!r}")
        if key == "k" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{owner}(k={value!r}) must be an int >= 1")
        if key == "embedding_cfg":
            _check_dict(owner, key, value, "class")


class GeneratorConfig(_EvalsParams):
    """What the generator configs share: an optional ``rag`` and ``prompt_manager``."""

    def _check(self, key: str, value: Any) -> None:
        owner = type(self).__name__
        if key == "rag" and value is not None and not isinstance(value, RFLangChainRagSpec):
            raise ConfigError(f"{owner}(rag={value!r}) must be an RFLangChainRagSpec or None")
        if key == "prompt_manager" and value is not None and not isinstance(value, RFPromptManager):
            raise ConfigError(
                f"{owner}(prompt_manager={value!r}) must be an RFPromptManager or None"
            )
        if key in ("model_config", "sampling_params", "client_config") and not isinstance(
            value, dict
        ):
            raise ConfigError(f"{owner}({key}={value!r}) must be a dict")

    @property
    def model_name(self) -> str:
        config = self.params.get("model_config") or {}
        model = config.get("model", "unknown") if isinstance(config, dict) else "unknown"
        return str(model)


class RFvLLMModelConfig(GeneratorConfig):
    """A locally served generator, as RapidFire AI's ``RFvLLMModelConfig``:
    ``model_config={"model": name, ...}`` (vLLM engine arguments) and
    ``sampling_params={"temperature": ..., "top_p": ..., "max_tokens": ...}``.

    Where vLLM is installed and a CUDA GPU is there, a vLLM engine serves it: ``model_config``
    as vLLM's engine arguments, ``sampling_params`` as vLLM's, a pipeline's adapter as a LoRA
    request, every pipeline of a shard in one engine call. Elsewhere the executor's resident
    model serves it (loaded once by ``create_model_fn``, shared by every pipeline, batched
    across pipelines), and ``run_evals`` says so in one line
    (``actors.engine.evals.serving``)."""

    _fields = ("model_config", "sampling_params", "rag", "prompt_manager")
    _no_knobs = frozenset({"rag", "prompt_manager"})

    def __init__(
        self,
        model_config: dict[str, Any],
        sampling_params: dict[str, Any] | None = None,
        rag: RFLangChainRagSpec | None = None,
        prompt_manager: RFPromptManager | None = None,
    ) -> None:
        super().__init__(
            model_config=model_config, sampling_params=sampling_params or {}, rag=rag,
            prompt_manager=prompt_manager,
        )  # fmt: skip
        if "model" not in model_config:
            raise ConfigError(
                f"RFvLLMModelConfig(model_config={model_config!r}) needs a 'model' key: the "
                "model to serve (a name create_model_fn loads)"
            )


class RFAPIModelConfig(GeneratorConfig):
    """A generator behind an OpenAI-compatible ``/chat/completions`` endpoint.

    ``client_config={"base_url": "https://.../v1", "api_key": ..., "timeout": 60,
    "max_retries": 5}``, ``model_config={"model": name, "temperature": ...}``; ``rpm_limit`` and
    ``tpm_limit`` bound requests and tokens per minute (shared by the pipelines that call the
    same endpoint). Or RapidFire AI's ``endpoint_config={"provider": "openai", "api_key": ...,
    "endpoint": {"model": name}}`` (``api_base_url`` for another OpenAI-compatible endpoint;
    ``endpoint`` may be a ``List``): rf-ray calls the provider's OpenAI-compatible endpoint
    directly, with no MLflow AI gateway (``rf_ray.evals.build.endpoint_client``)."""

    _fields = ("client_config", "endpoint_config", "model_config", "rag", "prompt_manager",
               "rpm_limit", "tpm_limit", "max_completion_tokens")  # fmt: skip
    _no_knobs = frozenset({"rag", "prompt_manager", "rpm_limit", "tpm_limit", "client_config"})

    def __init__(  # noqa: PLR0913  RapidFire AI's signature
        self,
        client_config: dict[str, Any],
        endpoint_config: dict[str, Any] | None = None,
        model_config: dict[str, Any] | None = None,
        rag: RFLangChainRagSpec | None = None,
        prompt_manager: RFPromptManager | None = None,
        rpm_limit: int | None = None,
        tpm_limit: int | None = None,
        itpm_limit: int | None = None,
        otpm_limit: int | None = None,
        max_completion_tokens: int | List | None = None,
    ) -> None:
        if itpm_limit is not None or otpm_limit is not None:
            raise ConfigError(
                f"RFAPIModelConfig(itpm_limit={itpm_limit!r}, otpm_limit={otpm_limit!r}): rf-ray's "
                "rate limiter counts a request's input and output tokens together; give "
                "tpm_limit instead (e.g. the smaller of the provider's two limits)"
            )
        model_config = {} if model_config is None else model_config
        given = {k: v for k, v in locals().items() if k in self._fields and v is not None}
        super().__init__(**given)
        if endpoint_config is None and "base_url" not in client_config:
            raise ConfigError(
                "RFAPIModelConfig(client_config=...) needs 'base_url', the endpoint's "
                "OpenAI-compatible root, e.g. 'https://api.openai.com/v1' (or give RapidFire's "
                "endpoint_config={'provider': ..., 'api_key': ..., 'endpoint': {'model': ...}})"
            )
        if endpoint_config is None and "model" not in model_config:
            raise ConfigError("RFAPIModelConfig(model_config=...) needs 'model'")

    def _check(self, key: str, value: Any) -> None:
        super()._check(key, value)
        if key == "endpoint_config" and not isinstance(value, dict):
            raise ConfigError(f"RFAPIModelConfig(endpoint_config={value!r}) must be a dict")
        if (
            key in ("rpm_limit", "tpm_limit", "max_completion_tokens")
            and value is not None
            and (isinstance(value, bool) or not isinstance(value, int) or value < 1)
        ):
            raise ConfigError(f"RFAPIModelConfig({key}={value!r}) must be an int >= 1 or None")


GENERATOR_KEYS = ("vllm_config", "api_config", "pipeline")
"""Keys of a config set that hold its generator config (RapidFire AI's names)."""
SET_KEYS = ("batch_size", "preprocess_fn", "postprocess_fn", "compute_metrics_fn",
            "accumulate_metrics_fn", "online_strategy_kwargs", "adapter")  # fmt: skip
"""The other keys of a config set (``adapter`` is rf-ray's: an exported adapter directory or
``{"experiment": name, "run_id": n}`` of a fit experiment to generate with)."""


__all__ = [
    "GENERATOR_KEYS",
    "SET_KEYS",
    "GeneratorConfig",
    "RFAPIModelConfig",
    "RFLangChainRagSpec",
    "RFPromptManager",
    "RFvLLMModelConfig",
]
