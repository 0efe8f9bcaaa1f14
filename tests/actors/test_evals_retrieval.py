"""Retrieval on the executor: one index per distinct corpus, shared by pipelines; FAISS with the
tiny sentence-transformers model, BM25 (bm25s), the tiny cross-encoder reranker."""

from __future__ import annotations

import pytest
from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
from langchain_community.embeddings import HuggingFaceEmbeddings
from langchain_core.document_loaders import BaseLoader
from langchain_core.documents import Document

from actors.engine.evals.retrieval import Retrieval
from rf_ray.evals.build import rag_spec
from rf_ray.evals.toy import TINY_CROSS_ENCODER, TINY_EMBEDDER, fact_corpus


class FactLoader(BaseLoader):
    def __init__(self, docs: list[dict]) -> None:
        self.docs = docs

    def load(self) -> list[Document]:
        return [Document(d["text"], metadata={"doc_id": d["_id"]}) for d in self.docs]


DOCS, QUERIES = fact_corpus(num_docs=16, facts_per_doc=3, num_queries=24)
LOADER = FactLoader(DOCS)
EMBED = {"class": HuggingFaceEmbeddings, "model_name": TINY_EMBEDDER}


def hit_rate(retrieval: Retrieval, cfg: dict) -> float:
    rag = retrieval.rag(rag_spec(cfg))
    found = rag.get_context([q["query"] for q in QUERIES], serialize=False)
    ids = [[d.metadata["doc_id"] for d in docs] for docs in found]
    return sum(q["gold_ids"][0] in got for q, got in zip(QUERIES, ids)) / len(QUERIES)


def test_index_is_built_once_per_corpus_and_shared() -> None:
    retrieval = Retrieval()
    base = {"document_loader": LOADER, "embedding_cfg": EMBED}
    for k in (1, 3):
        hit_rate(retrieval, {**base, "search_cfg": {"k": k}})
    hit_rate(retrieval, {**base, "search_cfg": {"type": "mmr", "k": 2, "fetch_k": 4}})
    assert list(retrieval.builds.values()) == [1]
    hit_rate(retrieval, {**base, "vector_store_cfg": {"type": "bm25"}})
    assert sorted(retrieval.builds.values()) == [1, 1]


def test_bm25_finds_the_fact_and_more_k_never_hurts() -> None:
    retrieval = Retrieval()
    cfg = {"document_loader": LOADER, "vector_store_cfg": {"type": "bm25"}}
    one = hit_rate(retrieval, {**cfg, "search_cfg": {"k": 1}})
    four = hit_rate(retrieval, {**cfg, "search_cfg": {"k": 4}})
    assert one >= 0.5  # lexical match on the key; chance is 1/16
    assert four >= one


def test_reranker_keeps_top_n_and_context_is_serialized() -> None:
    retrieval = Retrieval()
    rag = retrieval.rag(rag_spec({
        "document_loader": LOADER, "embedding_cfg": EMBED, "search_cfg": {"k": 4},
        "reranker_cfg": {"class": CrossEncoderReranker, "model_name": TINY_CROSS_ENCODER,
                         "top_n": 2},
    }))  # fmt: skip
    docs = rag.get_context(["a b =", "c d ="], serialize=False)
    assert [len(d) for d in docs] == [2, 2]
    text = rag.get_context(["a b ="])[0]
    assert "doc_id=" in text
    assert " = " in text


def test_prompt_manager_picks_k_few_shot_examples_per_query() -> None:
    from langchain_core.example_selectors import SemanticSimilarityExampleSelector
    from langchain_core.prompts import PromptTemplate

    from actors.engine.evals.prompts import PromptManager
    from rf_ray.evals.build import prompt_spec

    examples = [{"question": f"{a} {b} =", "answer": str(i)}
                for i, (a, b) in enumerate(zip("abcdef", "ghijkl"))]  # fmt: skip
    spec = prompt_spec({
        "instructions": "answer with the value", "examples": examples, "k": 2,
        "embedding_cfg": EMBED, "example_selector_cls": SemanticSimilarityExampleSelector,
        "example_prompt_template": PromptTemplate.from_template("{question} {answer}"),
    })  # fmt: skip
    retrieval = Retrieval()
    manager = PromptManager(spec, retrieval.embedding(spec.embedding_cls, spec.embedding_kwargs))
    assert manager.get_instructions() == "answer with the value"
    shots = manager.get_fewshot_examples(["a g =", "f l ="])
    assert len(shots) == 2
    formatted = {f"{e['question']} {e['answer']}" for e in examples}
    for text in shots:
        lines = [line for line in text.split("\n\n") if line.strip()]
        assert len(lines) == 2
        assert set(lines) <= formatted


def test_a_component_that_cannot_be_built_is_named_with_its_model() -> None:
    # e.g. RapidFire's "model_kwargs": {"device": "cuda:0"} on a machine without CUDA; here a
    # model that is not there (offline), which fails the same way on every machine
    missing = {"class": HuggingFaceEmbeddings, "model_name": "/nowhere/embedder",
               "model_kwargs": {"device": "cpu"}}  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"embedding_cfg HuggingFaceEmbeddings\(model_name="
        r"'/nowhere/embedder', model_kwargs=\{'device': 'cpu'\}\) failed: ",
    ):
        Retrieval().rag(rag_spec({"document_loader": LOADER, "embedding_cfg": missing}))
    reranker = {"class": CrossEncoderReranker, "model_name": "/nowhere/ce", "top_n": 1}
    spec = rag_spec({"document_loader": LOADER, "vector_store_cfg": {"type": "bm25"},
                     "reranker_cfg": reranker})  # fmt: skip
    with pytest.raises(ValueError, match=r"reranker_cfg HuggingFaceCrossEncoder\(model_name="):
        Retrieval().rag(spec)
