"""Evals configs: RapidFire's RAG spec, prompt manager and generator configs expand through
RFGridSearch / RFRandomSearch, and bad input is refused up front with a clear error."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
from langchain_community.embeddings import HuggingFaceEmbeddings
from langchain_core.document_loaders import BaseLoader
from langchain_core.documents import Document
from langchain_text_splitters import CharacterTextSplitter, RecursiveCharacterTextSplitter

from policies.errors import ConfigError
from rf_ray.automl import (
    List,
    RFAPIModelConfig,
    RFGridSearch,
    RFLangChainRagSpec,
    RFPromptManager,
    RFRandomSearch,
    RFvLLMModelConfig,
)
from rf_ray.evals.build import describe, rag_spec
from rf_ray.evals.clone import modified_pipeline
from rf_ray.evals.run import pipeline_spec
from rf_ray.evals.toy import TINY_CROSS_ENCODER, TINY_EMBEDDER
from rf_ray.toy import TOY_MODEL_NAME


class ListLoader(BaseLoader):
    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def load(self) -> list[Document]:
        return [Document(t, metadata={"i": i}) for i, t in enumerate(self.texts)]


EMBED = {"class": HuggingFaceEmbeddings, "model_name": TINY_EMBEDDER}
RERANK = {"class": CrossEncoderReranker, "model_name": TINY_CROSS_ENCODER}


def rag(**kw):
    base = dict(document_loader=ListLoader(["a b = 1 .", "c d = 2 ."]), embedding_cfg=EMBED)
    return RFLangChainRagSpec(**{**base, **kw})


def generator(**kw):
    return RFvLLMModelConfig(model_config={"model": TOY_MODEL_NAME},
                             sampling_params={"temperature": 0, "max_tokens": 4}, **kw)  # fmt: skip


def test_tutorial_grid_gives_one_pipeline_per_combination() -> None:
    spec = rag(
        text_splitter=List([RecursiveCharacterTextSplitter(chunk_size=256, chunk_overlap=32),
                            RecursiveCharacterTextSplitter(chunk_size=128, chunk_overlap=32)]),
        search_cfg={"type": "similarity", "k": 8},
        reranker_cfg={**RERANK, "top_n": List([2, 5])},
    )  # fmt: skip
    pipelines = RFGridSearch({"vllm_config": generator(rag=spec), "batch_size": 8}).expand()
    params = [describe(p) for p in pipelines]
    assert len(pipelines) == 4
    assert [(p["rag.text_splitter"], p["rag.reranker.top_n"]) for p in params] == [
        ("RecursiveCharacterTextSplitter(256/32)", 2),
        ("RecursiveCharacterTextSplitter(256/32)", 5),
        ("RecursiveCharacterTextSplitter(128/32)", 2),
        ("RecursiveCharacterTextSplitter(128/32)", 5),
    ]
    assert all(p["batch_size"] == 8 for p in params)


def test_lists_anywhere_in_components_and_settings_and_a_list_of_generators() -> None:
    gens = [generator(rag=rag(search_cfg={"k": List([1, 2])})), generator()]
    pipelines = RFGridSearch({"vllm_config": gens, "batch_size": List([2, 4])}).expand()
    assert len(pipelines) == (2 + 1) * 2
    drawn = RFRandomSearch({"vllm_config": gens, "batch_size": List([2, 4])}, 3, seed=0).expand()
    assert len({tuple(sorted(describe(p).items())) for p in drawn}) == 3


def test_a_list_inside_a_lists_choice_is_expanded_too() -> None:
    # RapidFire's scifact notebook: a List of embedding configs, one with a List of models.
    embeddings = List([{**EMBED, "model_name": List(["e1", "e2"])}, {**EMBED, "model_name": "e3"}])
    searches = List([{"type": "similarity", "k": 2}, {"type": "mmr", "k": List([1, 2])}])
    config_set = {"vllm_config": generator(rag=rag(embedding_cfg=embeddings, search_cfg=searches))}
    params = [describe(p) for p in RFGridSearch(config_set).expand()]
    got = [(p["rag.embedding.model_name"], p["rag.search.type"], p["rag.search.k"]) for p in params]
    assert sorted(got) == [(e, t, k) for e in ("e1", "e2", "e3")
                           for t, k in (("mmr", 1), ("mmr", 2), ("similarity", 2))]  # fmt: skip
    drawn = RFRandomSearch(config_set, 4, seed=0).expand()
    assert all(isinstance(describe(p)["rag.embedding.model_name"], str) for p in drawn)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: rag(enable_gpu_search=List([True, False])), "enable_gpu_search"),
        (lambda: generator(rag=List([rag(), rag()])), "rag="),
        (lambda: RFAPIModelConfig(client_config={"base_url": "http://x"},
                                  model_config={"model": "m"}, rpm_limit=List([1, 2])),
         "rpm_limit"),
        (lambda: RFGridSearch({"vllm_config": generator(),
                               "online_strategy_kwargs": {"confidence_level": List([0.9, 0.95])}}),
         "online_strategy_kwargs"),
    ],
)  # fmt: skip
def test_a_list_where_none_is_allowed_is_refused_by_name(make, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"document_loader": "corpus.jsonl"}, "not a LangChain document loader"),
        ({"text_splitter": object()}, "not a LangChain text splitter"),
        ({"embedding_cfg": {"class": dict}}, "embedding_cfg\\['class'\\]"),
        ({"vector_store_cfg": {"type": "pinecone"}}, "vector_store_cfg\\['type'\\]"),
        (
            {"vector_store_cfg": {"type": "faiss", "distance_strategy": "COSINE"}},
            r"\['distance_strategy'\].*takes type and batch_size",
        ),
        ({"vector_store_cfg": {"batch_size": 0}}, r"\['batch_size'\]=0"),
        ({"search_cfg": {"type": "fuzzy"}}, "search_cfg\\['type'\\]"),
        ({"search_cfg": {"k": 2, "fetch_kk": 9}}, r"\['fetch_kk'\].*'similarity'.*fetch_k"),
        ({"search_cfg": {"k": 2, "lambda_mult": 0.5}}, r"\['lambda_mult'\].*'similarity'"),
        (
            {"vector_store_cfg": {"type": "bm25"}, "search_cfg": {"k": 2, "fetch_k": 9}},
            r"\['fetch_k'\].*over bm25.*takes k",
        ),
        ({"search_cfg": {"k": 2}, "reranker_cfg": {**RERANK, "top_n": 3}}, "top_n=3"),
    ],
)
def test_wrong_kind_of_component_is_refused_when_the_search_expands(kw, match: str) -> None:
    group = RFGridSearch({"vllm_config": generator(rag=rag(**kw))})
    with pytest.raises(ConfigError, match=match):
        group.expand()


def test_unknown_sampling_param_and_unknown_argument_are_named() -> None:
    bad = RFvLLMModelConfig(model_config={"model": TOY_MODEL_NAME}, sampling_params={"n": 4})
    with pytest.raises(ConfigError, match="'n'"):
        RFGridSearch({"vllm_config": bad}).expand()
    with pytest.raises(TypeError, match="retreiver"):
        RFLangChainRagSpec(document_loader=ListLoader([]), retreiver=None)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="unknown key"):
        RFGridSearch({"vllm_config": generator(), "batchsize": 4})
    with pytest.raises(ConfigError, match="k=0"):
        RFPromptManager(instructions="x", k=0)


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fault injection: this machine has faiss; hide it as a machine without it would.
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"faiss.*rf-ray\[evals\]"):
        rag_spec({"document_loader": ListLoader(["x"]), "embedding_cfg": EMBED})
    # BM25 does not need it.
    spec = rag_spec({"document_loader": ListLoader(["x"]), "vector_store_cfg": {"type": "bm25"}})
    assert spec.store_type == "bm25"


def test_character_splitter_and_bm25_share_an_index_key_only_when_equal() -> None:
    a = rag_spec({"document_loader": (loader := ListLoader(["x"])), "embedding_cfg": EMBED,
                  "search_cfg": {"k": 1}})  # fmt: skip
    b = rag_spec({"document_loader": loader, "embedding_cfg": EMBED, "search_cfg": {"k": 3}})
    splitter = CharacterTextSplitter(chunk_size=5, chunk_overlap=0)
    c = rag_spec({"document_loader": loader, "embedding_cfg": EMBED, "text_splitter": splitter})
    assert a.index_key() == b.index_key() != c.index_key()


def _pipeline(config_set: dict):
    (config,) = RFGridSearch(config_set).expand()
    return _spec(config)


@pytest.mark.parametrize(
    ("store", "changes", "match"),
    [
        ("bm25", {"search_cfg.type": "mmr"}, "bm25 ranks by score only"),
        ("faiss", {"search_cfg.kk": 2}, r"\['kk'\]"),
        ("faiss", {"reranker_cfg.top_n": 1}, "has no reranker"),
        ("api", {"sampling_params.temperature": 0.7}, "model_config, not sampling_params"),
    ],
)
def test_a_clone_change_that_would_do_nothing_is_refused(store, changes, match) -> None:
    if store == "api":
        api = RFAPIModelConfig(client_config={"base_url": "http://127.0.0.1:9"},
                               model_config={"model": "m"}, rag=rag())  # fmt: skip
        parent = _pipeline({"api_config": api})
    else:
        parent = _pipeline({"vllm_config": generator(rag=rag(vector_store_cfg={"type": store}))})
    with pytest.raises(ConfigError, match=match):
        modified_pipeline(parent, changes, 2)


def test_a_clone_that_changes_the_search_type_keeps_only_what_the_new_type_takes() -> None:
    parent = _pipeline({"vllm_config": generator(rag=rag(search_cfg={"type": "mmr", "k": 2}))})
    clone = modified_pipeline(parent, {"search_cfg.type": "similarity"}, 2)
    assert clone.rag is not None
    assert clone.rag.search_type == "similarity"
    assert clone.rag.search_kwargs["k"] == 2
    assert "lambda_mult" not in clone.rag.search_kwargs  # mmr's, which similarity refuses


def test_rapidfires_endpoint_config_calls_the_providers_openai_compatible_root() -> None:
    # RapidFire's gsm8k notebook: two endpoint configs, the second with a List in model_config
    gemini = RFAPIModelConfig(
        client_config={"max_retries": 2},
        endpoint_config={"provider": "gemini", "api_key_name": "my_gemini_key", "api_key": "g-1",
                         "endpoint": {"model": "gemini-2.5-flash-lite", "name": "flash-lite"}},
        model_config={"max_completion_tokens": List([64, 128])}, rpm_limit=30, tpm_limit=3000,
    )  # fmt: skip
    local = RFAPIModelConfig(
        client_config={}, model_config={},
        endpoint_config={"provider": "openai", "api_base_url": "http://127.0.0.1:9/v1",
                         "endpoint": List([{"model": "a"}, {"name": "b"}])},
    )  # fmt: skip
    specs = [_spec(c) for c in RFGridSearch({"api_config": List([gemini, local])}).expand()]
    assert [(s.generator.client["base_url"], s.generator.model_name) for s in specs] == [
        ("https://generativelanguage.googleapis.com/v1beta/openai", "gemini-2.5-flash-lite"),
        ("https://generativelanguage.googleapis.com/v1beta/openai", "gemini-2.5-flash-lite"),
        ("http://127.0.0.1:9/v1", "a"),
        ("http://127.0.0.1:9/v1", "b"),
    ]
    first = specs[0]
    assert first.generator.client == {"max_retries": 2, "base_url": first.generator.client[
        "base_url"], "api_key": "g-1"}  # fmt: skip
    assert [s.generator.max_completion_tokens for s in specs[:2]] == [64, 128]
    assert first.params["endpoint.model"] == "gemini-2.5-flash-lite"
    assert "g-1" not in str(first.params)  # the key is no param (MLflow, status)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"endpoint_config": {"provider": "bedrock", "api_key": "k", "endpoint": {"model": "m"}}},
         "provider 'bedrock'.*api_base_url"),
        ({"endpoint_config": {"provider": "openai", "endpoint": {"model": "m"}}},
         "needs an api_key"),
        ({"endpoint_config": {"api_key": "k", "api_version": "1", "endpoint": {"model": "m"}}},
         r"\['api_version'\]"),
        ({"endpoint_config": {"api_key": "k", "endpoint": {"usage_tracking": True}}},
         "naming its model"),
        ({"endpoint_config": {"api_key": "k", "endpoint": {"model": "m"}},
          "model_config": {"model": "n"}}, "differ"),
    ],
)  # fmt: skip
def test_a_bad_endpoint_config_is_refused_by_name(kwargs, match) -> None:
    group = RFGridSearch({"api_config": RFAPIModelConfig(client_config={}, **kwargs)})
    with pytest.raises(ConfigError, match=match):
        _spec(group.expand()[0])


def test_split_token_limits_are_refused_saying_what_to_give() -> None:
    with pytest.raises(ConfigError, match="give tpm_limit"):
        RFAPIModelConfig(client_config={"base_url": "http://x"}, model_config={"model": "m"},
                         itpm_limit=800, otpm_limit=160)  # fmt: skip


def _spec(config):
    return pipeline_spec(config, 1, 10, 2, 0, Path("."))
