"""One concrete evals pipeline, checked whole and resolved into the executor's ``PipelineSpec``.

``PipelineConfig`` is what a search's expansion yields (no knobs left). ``check_pipeline`` refuses
what cannot run, before anything starts: a component that is not the LangChain kind its field
needs, a search or vector-store type that does not exist, a sampling parameter the resident
generator does not honour, a reranker's ``top_n`` above the search's ``k``, and a missing
package for a chosen component (the error names the extra to install). ``pipeline_parts``
resolves the same values into ``actors.engine.evals.spec``'s records, and ``describe`` gives the
flat params that MLflow, the store and ``rf-ray status`` show.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.engine.evals.spec import GeneratorModel, GeneratorSpec, PromptSpec, RagSpec
from policies.errors import ConfigError
from policies.intervals import OnlineStrategy

EXTRA = 'pip install "rf-ray[evals]"'
SEARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "similarity": {"k": 5},
    "similarity_score_threshold": {"k": 5, "score_threshold": 0.5},
    "mmr": {"k": 5, "fetch_k": 20, "lambda_mult": 0.5},
}
SEARCH_KEYS: dict[str, frozenset[str]] = {
    "similarity": frozenset({"k", "fetch_k", "filter"}),
    "similarity_score_threshold": frozenset({"k", "score_threshold", "fetch_k", "filter"}),
    "mmr": frozenset({"k", "fetch_k", "lambda_mult", "filter"}),
}
"""The search arguments LangChain's vector store retriever takes per search type (a key it
does not take would be ignored without a word)."""
STORE_TYPES = ("faiss", "bm25")
# vLLM sampling parameter -> transformers GenerationConfig field (None: handled below).
SAMPLING_FIELDS = {
    "temperature": None,
    "top_p": "top_p",
    "top_k": None,
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_tokens": "max_new_tokens",
    "seed": None,
}


@dataclass
class PipelineConfig:
    """One concrete pipeline: a generator config's arguments, its rag spec's and prompt
    manager's (None when it has none), and the config set's own settings."""

    generator_cls: type
    generator: dict[str, Any]
    rag: dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def require(module: str, what: str) -> None:
    """Refuse a component whose package is missing, naming the extra to install."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"{what} needs the Python package {module!r}, which is not installed; "
            f"install rf-ray's evals extra: {EXTRA}"
        )


def _langchain(module: str, name: str) -> Any:
    require(module, f"an evals pipeline's {name}")
    return getattr(importlib.import_module(module), name)


def _qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


# ---------------------------------------------------------------------------- generator
def generation_settings(
    sampling: dict[str, Any], where: str = ""
) -> tuple[dict[str, Any], int | None]:
    """vLLM's ``sampling_params`` as ``transformers.GenerationConfig`` fields, and the seed."""
    unknown = sorted(set(sampling) - set(SAMPLING_FIELDS))
    if unknown:
        raise ConfigError(
            f"{where}sampling_params has {unknown}, which the resident generator does not "
            f"honour; use {', '.join(SAMPLING_FIELDS)}"
        )
    out: dict[str, Any] = {"max_new_tokens": 16}  # vLLM's default max_tokens
    for key, value in sampling.items():
        if key != "seed" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{where}sampling_params[{key!r}]={value!r} must be a number")
        target = SAMPLING_FIELDS[key]
        if target is not None:
            out[target] = int(value) if target == "max_new_tokens" else float(value)
    temperature = float(sampling.get("temperature", 1.0))
    if temperature < 0:
        raise ConfigError(f"{where}sampling_params['temperature']={temperature} must be >= 0")
    out["do_sample"] = temperature > 0
    if temperature > 0:
        out["temperature"] = temperature
    top_k = int(sampling.get("top_k", -1))
    if top_k > 0:  # vLLM's -1 is "off"
        out["top_k"] = top_k
    if out["max_new_tokens"] < 1:
        raise ConfigError(f"{where}sampling_params['max_tokens'] must be >= 1")
    seed = sampling.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"{where}sampling_params['seed']={seed!r} must be an int")
    return out, seed


PROVIDER_URLS = {
    "openai": "https://api.openai.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta/openai",
    "anthropic": "https://api.anthropic.com/v1",
}
"""The OpenAI-compatible root of each provider RapidFire's ``endpoint_config`` names, which
rf-ray calls directly (RapidFire goes through an MLflow AI gateway)."""
ENDPOINT_KEYS = frozenset({"provider", "api_key", "api_key_name", "api_base_url", "endpoint"})


def endpoint_client(
    client: dict[str, Any], endpoint_config: dict[str, Any], model_config: dict[str, Any],
    where: str = "",
) -> tuple[dict[str, Any], str]:  # fmt: skip
    """RapidFire's ``endpoint_config`` as rf-ray's client settings and model name: the
    provider's OpenAI-compatible root (or ``api_base_url``), its ``api_key``, the endpoint's
    ``model`` (or ``name``)."""
    where = f"{where}RFAPIModelConfig(endpoint_config=...)"
    unknown = sorted(set(endpoint_config) - ENDPOINT_KEYS)
    if unknown:
        raise ConfigError(
            f"{where} has {unknown}, which rf-ray does not use (it calls the endpoint directly, "
            f"with no MLflow gateway); it takes {', '.join(sorted(ENDPOINT_KEYS))}"
        )
    provider = endpoint_config.get("provider", "openai")
    base_url = endpoint_config.get("api_base_url") or PROVIDER_URLS.get(provider)
    if base_url is None:
        raise ConfigError(
            f"{where}: provider {provider!r} has no OpenAI-compatible root rf-ray knows (it "
            f"knows {', '.join(PROVIDER_URLS)}); give api_base_url, the endpoint's "
            "OpenAI-compatible root (where /chat/completions is)"
        )
    api_key = endpoint_config.get("api_key") or client.get("api_key")
    if api_key is None and "api_base_url" not in endpoint_config:
        raise ConfigError(
            f"{where}: provider {provider!r} needs an api_key (rf-ray keeps no gateway secrets "
            "to look up by api_key_name)"
        )
    endpoint = endpoint_config.get("endpoint") or {}
    name = (endpoint.get("model") or endpoint.get("name")) if isinstance(endpoint, dict) else None
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: 'endpoint' must be a dict naming its model, got {endpoint!r}")
    if model_config.get("model") not in (None, name):
        raise ConfigError(
            f"{where}: the endpoint's model {name!r} and model_config's "
            f"{model_config['model']!r} differ; name it once"
        )
    return {**client, "base_url": base_url, "api_key": api_key}, name


def generator_parts(
    config: PipelineConfig, where: str = ""
) -> tuple[GeneratorSpec, GeneratorModel | None]:
    """The pipeline's ``GeneratorSpec`` and, for a local generator, the model it serves."""
    g = config.generator
    model_config = dict(g["model_config"])
    name = str(model_config.get("model"))
    if config.generator_cls.__name__ == "RFAPIModelConfig":
        client = dict(g["client_config"])
        if g.get("endpoint_config") is not None:
            client, name = endpoint_client(client, g["endpoint_config"], model_config, where)
        request = {k: v for k, v in model_config.items() if k != "model"}
        max_tokens = g.get("max_completion_tokens") or request.pop("max_completion_tokens", 150)
        spec = GeneratorSpec(
            kind="api", model_name=name, client=client, request=request,
            rpm_limit=g.get("rpm_limit"), tpm_limit=g.get("tpm_limit"),
            max_completion_tokens=int(max_tokens),
        )  # fmt: skip
        return spec, None
    generation, seed = generation_settings(dict(g.get("sampling_params") or {}), where)
    model = GeneratorModel(
        model_name=name,
        model_kwargs=dict(model_config.get("model_kwargs") or {}),
        tokenizer_kwargs=dict(model_config.get("tokenizer_kwargs") or {}),
    )
    spec = GeneratorSpec(
        kind="local", model_name=name, generation=generation, seed=seed, wants_vllm=True,
        vllm_config=model_config, vllm_sampling=dict(g.get("sampling_params") or {}),
    )  # fmt: skip
    return spec, model


# ---------------------------------------------------------------------------- retrieval
def _loaders(value: Any, where: str) -> list[Any]:
    base = _langchain("langchain_core.document_loaders", "BaseLoader")
    loaders = value if isinstance(value, list) else [value]
    loaders = [x for x in loaders if x is not None]
    for loader in loaders:
        if not isinstance(loader, base):
            raise ConfigError(
                f"{where}document_loader={loader!r} is not a LangChain document loader "
                "(langchain_core.document_loaders.BaseLoader), e.g. DirectoryLoader(...)"
            )
    return loaders


def _class_cfg(cfg: dict[str, Any], field_name: str, base: Any, where: str) -> tuple[Any, dict]:
    kwargs = dict(cfg)
    cls = kwargs.pop("class")
    if not isinstance(cls, type) or not issubclass(cls, base):
        raise ConfigError(
            f"{where}{field_name}['class']={cls!r} must be a subclass of {_qualname(base)}"
        )
    return cls, kwargs


def search_settings(
    cfg: dict[str, Any] | None, where: str, store_type: str | None = None
) -> tuple[str, dict[str, Any]]:
    """``search_cfg`` as (search type, the retriever's search arguments), checked: the type,
    ``k``, every key against what the type takes, and against the store (``None``: a ready
    retriever, which takes no search settings of rf-ray's)."""
    cfg = dict(cfg or {})
    kind = cfg.pop("type", "similarity")
    if kind not in SEARCH_DEFAULTS:
        raise ConfigError(
            f"{where}search_cfg['type']={kind!r} is not one of {', '.join(SEARCH_DEFAULTS)}"
        )
    if store_type == "bm25" and kind != "similarity":
        raise ConfigError(f"{where}search_cfg type {kind!r}: bm25 ranks by score only; use "
                          "'similarity' (with k)")  # fmt: skip
    allowed = {"k"} if store_type == "bm25" else SEARCH_KEYS[kind]
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}search_cfg has {unknown}, which a {kind!r} search "
            f"{'over bm25 ' if store_type == 'bm25' else ''}does not take; it takes "
            f"{', '.join(sorted(allowed))}"
        )
    kwargs = {**SEARCH_DEFAULTS[kind], **cfg}
    k = kwargs["k"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"{where}search_cfg['k']={k!r} must be an int >= 1")
    return kind, kwargs


def _store(cfg: dict[str, Any] | None, where: str) -> tuple[str, dict[str, Any]]:
    """``vector_store_cfg`` as (store type, its settings), checked."""
    store = dict(cfg or {"type": "faiss"})
    kind = store.pop("type", "faiss")
    if kind not in STORE_TYPES:
        raise ConfigError(
            f"{where}vector_store_cfg['type']={kind!r} is not one of "
            f"{', '.join(STORE_TYPES)} (faiss: dense vectors; bm25: lexical)"
        )
    unknown = sorted(set(store) - {"batch_size"})
    if unknown:
        raise ConfigError(
            f"{where}vector_store_cfg has {unknown}, which a {kind} store does not take; it "
            "takes type and batch_size (documents embedded per call)"
        )
    batch = store.get("batch_size", 128)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"{where}vector_store_cfg['batch_size']={batch!r} must be an int >= 1")
    return kind, store


def rag_spec(rag: dict[str, Any], where: str = "") -> RagSpec:  # noqa: C901  one check per field, in order
    """``RFLangChainRagSpec``'s concrete arguments as the executor's ``RagSpec`` (checked)."""
    where = f"{where}rag."
    spec = RagSpec()
    if rag.get("document_loader") is not None:
        spec.loaders = _loaders(rag["document_loader"], where)
    splitter = rag.get("text_splitter")
    if splitter is not None:
        base = _langchain("langchain_text_splitters", "TextSplitter")
        if not isinstance(splitter, base):
            raise ConfigError(
                f"{where}text_splitter={splitter!r} is not a LangChain text splitter "
                "(langchain_text_splitters.TextSplitter), e.g. RecursiveCharacterTextSplitter"
            )
        spec.splitter = splitter
    if rag.get("embedding_cfg") is not None:
        base = _langchain("langchain_core.embeddings", "Embeddings")
        spec.embedding_cls, spec.embedding_kwargs = _class_cfg(
            rag["embedding_cfg"], "embedding_cfg", base, where
        )
        if "huggingface" in spec.embedding_cls.__module__:
            require(
                "sentence_transformers", f"{where}embedding_cfg ({spec.embedding_cls.__name__})"
            )
    spec.store_type, spec.store_kwargs = _store(rag.get("vector_store_cfg"), where)
    retriever = rag.get("retriever")
    if retriever is not None:
        base = _langchain("langchain_core.retrievers", "BaseRetriever")
        if not isinstance(retriever, base):
            raise ConfigError(f"{where}retriever={retriever!r} is not a LangChain BaseRetriever")
        spec.retriever = retriever
    elif spec.store_type == "faiss":
        require("faiss", f"{where}vector_store_cfg type 'faiss' (faiss-cpu)")
        if spec.embedding_cls is None:
            raise ConfigError(f"{where}vector_store_cfg type 'faiss' needs an embedding_cfg")
    else:
        require("bm25s", f"{where}vector_store_cfg type 'bm25'")
    if not spec.loaders and spec.retriever is None:
        raise ConfigError(f"{where}: give a document_loader or a retriever")
    spec.search_type, spec.search_kwargs = search_settings(
        rag.get("search_cfg"), where, spec.store_type if spec.retriever is None else None
    )
    if rag.get("reranker_cfg") is not None:
        base = _langchain("langchain_core.documents", "BaseDocumentCompressor")
        spec.reranker_cls, spec.reranker_kwargs = _class_cfg(
            rag["reranker_cfg"], "reranker_cfg", base, where
        )
        if spec.reranker_cls.__name__ == "CrossEncoderReranker":
            require("sentence_transformers", f"{where}reranker_cfg (CrossEncoderReranker)")
        top_n = spec.reranker_kwargs.get("top_n")
        if isinstance(top_n, int) and top_n > spec.search_kwargs["k"]:
            raise ConfigError(
                f"{where}reranker_cfg top_n={top_n} is more than search_cfg k="
                f"{spec.search_kwargs['k']}: the reranker keeps top_n of the k retrieved; "
                "use top_n <= k"
            )
    spec.template = rag.get("document_template")
    spec.described = _index_description(spec)
    return spec


def _index_description(spec: RagSpec) -> dict[str, Any]:
    splitter = spec.splitter
    return {
        "loaders": [
            {"class": _qualname(x), **{k: repr(v) for k, v in sorted(vars(x).items())}}
            for x in spec.loaders
        ],
        "splitter": None if splitter is None else {
            "class": _qualname(splitter),
            **{k: repr(v) for k, v in sorted(vars(splitter).items())},
        },
        "embedding": None if spec.embedding_cls is None else {
            "class": _qualname(spec.embedding_cls), **spec.embedding_kwargs,
        },
        "store": {"type": spec.store_type, **spec.store_kwargs},
        "retriever": None if spec.retriever is None else id(spec.retriever),
    }  # fmt: skip


def prompt_spec(prompt: dict[str, Any], where: str = "") -> PromptSpec:
    """``RFPromptManager``'s concrete arguments as the executor's ``PromptSpec`` (checked)."""
    where = f"{where}prompt_manager."
    instructions = prompt.get("instructions") or ""
    path = prompt.get("instructions_file_path") or ""
    if not instructions and path:
        try:
            instructions = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{where}instructions_file_path={path!r}: {e}") from e
    spec = PromptSpec(instructions=instructions, examples=list(prompt.get("examples") or []),
                      k=int(prompt.get("k") or 3))  # fmt: skip
    if spec.examples:
        selectors = _langchain(
            "langchain_core.example_selectors", "SemanticSimilarityExampleSelector"
        )
        mmr = _langchain("langchain_core.example_selectors", "MaxMarginalRelevanceExampleSelector")
        cls = prompt.get("example_selector_cls")
        if cls not in (selectors, mmr):
            raise ConfigError(
                f"{where}example_selector_cls={cls!r} must be SemanticSimilarityExampleSelector "
                "or MaxMarginalRelevanceExampleSelector (langchain_core.example_selectors)"
            )
        template_cls = _langchain("langchain_core.prompts", "PromptTemplate")
        if not isinstance(prompt.get("example_prompt_template"), template_cls):
            raise ConfigError(f"{where}example_prompt_template must be a LangChain PromptTemplate")
        if not prompt.get("embedding_cfg"):
            raise ConfigError(f"{where}embedding_cfg is needed to select few-shot examples")
        base = _langchain("langchain_core.embeddings", "Embeddings")
        spec.embedding_cls, spec.embedding_kwargs = _class_cfg(
            prompt["embedding_cfg"], "embedding_cfg", base, where
        )
        require("faiss", f"{where}few-shot example selection (a FAISS index of the examples)")
        spec.example_selector_cls = cls
        spec.example_prompt_template = prompt["example_prompt_template"]
    return spec


# ---------------------------------------------------------------------------- the whole pipeline
FUNCTION_KEYS = ("preprocess_fn", "postprocess_fn", "compute_metrics_fn", "accumulate_metrics_fn")


def check_settings(settings: dict[str, Any], where: str = "") -> OnlineStrategy:
    """The config set's own keys; returns its online aggregation strategy."""
    batch = settings.get("batch_size", 8)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"{where}batch_size={batch!r} must be an int >= 1")
    for key in FUNCTION_KEYS:
        fn = settings.get(key)
        if fn is not None and not callable(fn):
            raise ConfigError(f"{where}{key}={fn!r} must be a function or None")
    adapter = settings.get("adapter")
    if adapter is not None and not (
        isinstance(adapter, (str, Path))
        or (isinstance(adapter, dict) and {"experiment", "run_id"} <= set(adapter))
    ):
        raise ConfigError(
            f"{where}adapter={adapter!r} must be an exported adapter directory or "
            "{'experiment': name, 'run_id': n} naming a run of a fit experiment"
        )
    return OnlineStrategy.from_kwargs(settings.get("online_strategy_kwargs"))


def check_pipeline(config: PipelineConfig, where: str = "") -> None:
    """Everything that can be checked without loading a model (see module docstring)."""
    check_settings(config.settings, where)
    generator_parts(config, where)
    if config.rag is not None:
        rag_spec(config.rag, where)
    if config.prompt is not None:
        prompt_spec(config.prompt, where)


def _name(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, type) or callable(value):
        return str(getattr(value, "__qualname__", type(value).__qualname__))
    return type(value).__name__


def _flat(prefix: str, values: dict[str, Any], out: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, dict):
            _flat(f"{prefix}{key}.", value, out)
        elif isinstance(value, (bool, int, float, str)):
            out[f"{prefix}{key}"] = value
        else:
            out[f"{prefix}{key}"] = _name(value)


def _splitter_name(splitter: Any) -> str:
    from actors.engine.algorithms.langchain_internals import splitter_sizes

    size, overlap = splitter_sizes(splitter)
    return f"{type(splitter).__name__}({size}/{overlap})"


def _endpoint_params(endpoint: Any) -> dict[str, str]:
    """RapidFire's ``endpoint_config`` as params: provider and model, never its api_key."""
    if not isinstance(endpoint, dict):
        return {}
    out = {"endpoint.provider": str(endpoint.get("provider", "openai"))}
    model = endpoint.get("endpoint")
    if isinstance(model, dict):
        out["endpoint.model"] = str(model.get("model") or model.get("name"))
    return out


def describe(config: PipelineConfig) -> dict[str, Any]:
    """Flat, JSON-able params of a pipeline (MLflow params, status, the live view)."""
    out: dict[str, Any] = {"generator": config.generator_cls.__name__}
    g = config.generator
    _flat("model_config.", {k: v for k, v in g["model_config"].items()}, out)
    out.update(_endpoint_params(g.get("endpoint_config")))
    _flat("sampling.", dict(g.get("sampling_params") or {}), out)
    for key in ("max_completion_tokens", "rpm_limit", "tpm_limit"):
        if g.get(key) is not None:
            out[key] = g[key]
    if config.rag is not None:
        rag = config.rag
        if rag.get("text_splitter") is not None:
            out["rag.text_splitter"] = _splitter_name(rag["text_splitter"])
        for key in ("embedding_cfg", "vector_store_cfg", "search_cfg", "reranker_cfg"):
            if rag.get(key) is not None:
                _flat(f"rag.{key.removesuffix('_cfg')}.", rag[key], out)
        if rag.get("retriever") is not None:
            out["rag.retriever"] = _name(rag["retriever"])
    if config.prompt is not None:
        _flat("prompt.", {k: v for k, v in config.prompt.items() if k != "examples"}, out)
    for key, value in config.settings.items():
        if key == "online_strategy_kwargs":
            _flat("online.", dict(value), out)
        elif key in FUNCTION_KEYS:
            out[key] = _name(value)
        else:
            out[key] = value if isinstance(value, (int, str, float)) else str(value)
    return out


Preprocess = Callable[[dict[str, list[Any]], Any, Any], dict[str, list[Any]]]

__all__ = [
    "EXTRA",
    "FUNCTION_KEYS",
    "PipelineConfig",
    "check_pipeline",
    "check_settings",
    "describe",
    "endpoint_client",
    "generation_settings",
    "generator_parts",
    "prompt_spec",
    "rag_spec",
    "require",
    "search_settings",
]
