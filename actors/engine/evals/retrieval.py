"""Retrieval on the executor: indexes built once per distinct corpus, shared by pipelines.

``Retrieval`` owns what is expensive to build and the same for many pipelines:

* an index per ``RagSpec.index_key()`` (the corpus, loaded and split once on the driver and read
  back from the experiment directory, ``corpus.py``, then embedded into FAISS or indexed by
  BM25): pipelines that differ only in search settings, reranker or prompts share it;
* embedding models and cross-encoders per (class, arguments).

``Rag`` is what a pipeline's ``preprocess_fn`` receives as ``rag`` (RapidFire AI's
``get_context`` and ``serialize_documents``): its own retriever over the shared index, with
its own search settings, and its own reranker.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.engine.evals.corpus import read_corpus
from actors.engine.evals.spec import RagSpec

logger = logging.getLogger(__name__)


def default_template(doc: Any) -> str:
    """A document as context text: its metadata on one line, then its content."""
    meta = ", ".join(f"{k}={v}" for k, v in doc.metadata.items())
    return f"[{meta}]\n{doc.page_content}" if meta else doc.page_content


@dataclass
class Index:
    """One built index and the documents in it."""

    documents: list[Any]
    store: Any
    """A LangChain FAISS vector store, or the BM25 retriever (``store_type="bm25"``)."""
    seconds: float


@dataclass
class Rag:
    """A pipeline's retrieval: ``get_context`` and ``serialize_documents`` for its
    ``preprocess_fn``."""

    retriever: Any
    reranker: Any = None
    template: Any = None
    documents: list[Any] = field(default_factory=list)
    """Every document (chunk) of the index, for functions that need the corpus."""
    lock: Any = field(default_factory=threading.RLock)
    """Held while retrieving: the models are shared with other pipelines, whose shards may
    run on another thread (API pipelines), and a fast tokenizer must not be entered twice."""

    def get_context(
        self, batch_queries: list[str], use_reranker: bool = True, serialize: bool = True
    ) -> list[Any]:
        """Per query, its retrieved documents (reranked when the pipeline has a reranker),
        serialized to one string each unless ``serialize=False``."""
        with self.lock:
            batch_docs = [list(docs) for docs in self.retriever.batch(list(batch_queries))]
            if use_reranker and self.reranker is not None:
                batch_docs = [
                    list(self.reranker.compress_documents(docs, query))
                    for query, docs in zip(batch_queries, batch_docs)
                ]
        return self.serialize_documents(batch_docs) if serialize else batch_docs

    def serialize_documents(self, batch_docs: list[list[Any]]) -> list[str]:
        """Each query's documents as one context string (the pipeline's document template)."""
        template = self.template or default_template
        return ["\n\n".join(template(d) for d in docs) for docs in batch_docs]


def _built(what: str, cls: Any, kwargs: dict[str, Any], make: Any) -> Any:
    """``make()``; what it raises says which of the pipeline's components failed to build and
    with which model (not every argument: one may be an API key)."""
    try:
        return make()
    except Exception as exc:
        shown = ", ".join(f"{k}={kwargs[k]!r}" for k in ("model_name", "model", "model_kwargs")
                          if k in kwargs)  # fmt: skip
        raise ValueError(
            f"building its {what} {cls.__name__}({shown}) failed: {type(exc).__name__}: {exc}"
        ) from exc


def _key(cls: Any, kwargs: dict[str, Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}:" + json.dumps(
        kwargs, sort_keys=True, default=repr
    )


class Retrieval:
    """Indexes, embedding models and cross-encoders of one executor (see module docstring)."""

    def __init__(self, exp_dir: str | Path | None = None) -> None:
        self.exp_dir = exp_dir
        """The experiment directory, where stored corpora are read from (``corpus``)."""
        self.indexes: dict[str, Index] = {}
        self.builds: dict[str, int] = {}
        """How many times each index was built (once, unless the executor restarted)."""
        self._embeddings: dict[str, Any] = {}
        self._cross_encoders: dict[str, Any] = {}
        self.lock = threading.RLock()
        """One lock for every model here (see ``Rag.lock``)."""

    def embedding(self, cls: Any, kwargs: dict[str, Any]) -> Any:
        key = _key(cls, kwargs)
        if key not in self._embeddings:
            self._embeddings[key] = _built("embedding_cfg", cls, kwargs, lambda: cls(**kwargs))
        return self._embeddings[key]

    def index(self, spec: RagSpec) -> Index:
        """The index of ``spec``'s corpus, built on first use."""
        key = spec.index_key()
        if key not in self.indexes:
            started = time.perf_counter()
            docs = self._documents(spec)
            if not docs:
                raise ValueError("the rag spec's document loaders produced no documents")
            store = self._build_store(spec, docs)
            self.indexes[key] = Index(docs, store, time.perf_counter() - started)
            self.builds[key] = self.builds.get(key, 0) + 1
            logger.info("built %s index %s over %d documents", spec.store_type, key, len(docs))
        return self.indexes[key]

    def _documents(self, spec: RagSpec) -> list[Any]:
        """The corpus to index: the stored one (read back from the experiment directory), or
        the spec's own documents or loaders (a spec built in this process)."""
        if spec.documents is not None or spec.corpus is None:
            return spec.load_corpus()
        if self.exp_dir is None:
            raise ValueError(
                f"pipeline's corpus {spec.corpus} is stored in its experiment directory, and "
                "this executor was given none"
            )
        return read_corpus(self.exp_dir, spec.corpus)

    def _build_store(self, spec: RagSpec, docs: list[Any]) -> Any:
        if spec.store_type == "bm25":
            from actors.engine.evals.bm25 import BM25Retriever

            return BM25Retriever.from_documents(docs)
        from langchain_community.vectorstores import FAISS

        embedding = self.embedding(spec.embedding_cls, spec.embedding_kwargs)
        batch = int(spec.store_kwargs.get("batch_size", 128))
        store = FAISS.from_documents(docs[:batch], embedding)
        for start in range(batch, len(docs), batch):
            store.add_documents(docs[start : start + batch])
        return store

    def reranker(self, spec: RagSpec) -> Any:
        if spec.reranker_cls is None:
            return None
        kwargs = dict(spec.reranker_kwargs)
        if spec.reranker_cls.__name__ == "CrossEncoderReranker" and "model" not in kwargs:
            from langchain_community.cross_encoders import HuggingFaceCrossEncoder

            encoder_kwargs = {"model_name": kwargs.pop("model_name", None),
                              "model_kwargs": kwargs.pop("model_kwargs", {}) or {}}  # fmt: skip
            if encoder_kwargs["model_name"] is None:
                raise ValueError("reranker_cfg for CrossEncoderReranker needs a model_name")
            key = _key(HuggingFaceCrossEncoder, encoder_kwargs)
            if key not in self._cross_encoders:
                self._cross_encoders[key] = _built(
                    "reranker_cfg", HuggingFaceCrossEncoder, encoder_kwargs,
                    lambda: HuggingFaceCrossEncoder(**encoder_kwargs),
                )  # fmt: skip
            kwargs["model"] = self._cross_encoders[key]
        cls = spec.reranker_cls
        return _built("reranker_cfg", cls, spec.reranker_kwargs, lambda: cls(**kwargs))

    def rag(self, spec: RagSpec) -> Rag:
        """A pipeline's ``Rag``: its own retriever (search settings) over the shared index."""
        if spec.retriever is not None:
            return Rag(spec.retriever, self.reranker(spec), spec.template, lock=self.lock)
        index = self.index(spec)
        if spec.store_type == "bm25":
            retriever = index.store.with_k(int(spec.search_kwargs["k"]))
        else:
            retriever = index.store.as_retriever(
                search_type=spec.search_type, search_kwargs=dict(spec.search_kwargs)
            )
        return Rag(retriever, self.reranker(spec), spec.template, index.documents, self.lock)


__all__ = ["Index", "Rag", "Retrieval", "default_template"]
