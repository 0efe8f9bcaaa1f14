"""Evals mode's offline toy: a tiny embedding model, a tiny cross-encoder and a fact corpus.

Tests and examples run with no network, so rf-ray ships two small retrieval models built the
way ``rf_ray.toy`` builds its tiny Llama (``python scripts/build_retrieval_assets.py``):

* ``TINY_EMBEDDER``: a sentence-transformers model (a 2-layer BERT of width 32 with mean
  pooling) for ``HuggingFaceEmbeddings(model_name=TINY_EMBEDDER)``;
* ``TINY_CROSS_ENCODER``: a BERT cross-encoder with one output for
  ``HuggingFaceCrossEncoder(model_name=TINY_CROSS_ENCODER)`` and ``CrossEncoderReranker``.

Both are randomly initialised, never trained: **their retrieval quality means nothing**. They
exercise the real code paths (sentence-transformers, FAISS, LangChain's reranker) at a few
hundred KB. A randomly initialised encoder with mean pooling still scores texts that share
words as closer than texts that do not (its output is near a random projection of the bag of
words), so retrieval is better than chance on the fact corpus, and BM25 is better still.

The fact corpus (``fact_corpus``) is made of key-value facts in the tiny Llama's vocabulary,
``"k q = 42"``: a question asks for one key's value (``"k q ="``), so a generator can only
answer it with the right fact in its context.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).resolve().parents[1] / "assets"
TINY_EMBEDDER = str(ASSETS / "tiny-embedder")
TINY_CROSS_ENCODER = str(ASSETS / "tiny-cross-encoder")
TINY_READER = str(ASSETS / "tiny-reader")
"""A tiny Llama (the toy tokenizer) trained to answer a key's value from the facts in its
context (``scripts/build_reader_asset.py``): it answers right only with the right fact."""

LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")
RETRIEVAL_VOCAB: tuple[str, ...] = (
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    *LETTERS, *(str(i) for i in range(100)),
    "=", ".", ",", "?", ":", "the", "of", "is", "what", "a", "and", "to", "in", "for",
    "context", "question", "answer", "fact", "facts", "value", "key",
)  # fmt: skip
"""The retrieval models' word-level vocabulary (append only: the shipped tokenizers use it)."""


def fact_corpus(
    num_docs: int = 24, facts_per_doc: int = 4, num_queries: int = 48, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(documents, queries)``: each document ``{"_id": i, "text": "k q = 42 . m z = 17 ."}``
    holds ``facts_per_doc`` facts with distinct keys; each query
    ``{"query_id": j, "query": "k q =", "answer": "42", "gold_ids": [i]}`` asks for one of
    them. Deterministic in ``seed``."""
    rng = random.Random(f"rf-ray/fact_corpus/{seed}")
    keys = [(a, b) for a in LETTERS for b in LETTERS if a != b]
    rng.shuffle(keys)
    needed = num_docs * facts_per_doc
    if needed > len(keys):
        raise ValueError(f"{needed} facts need more than the {len(keys)} distinct keys")
    docs, facts = [], []
    for i in range(num_docs):
        parts = []
        for j in range(facts_per_doc):
            a, b = keys[i * facts_per_doc + j]
            value = str(rng.randrange(100))
            parts.append(f"{a} {b} = {value} .")
            facts.append((f"{a} {b} =", value, i))
        docs.append({"_id": i, "text": " ".join(parts)})
    picked = rng.sample(facts, min(num_queries, len(facts)))
    queries = [
        {"query_id": j, "query": q, "answer": value, "gold_ids": [doc]}
        for j, (q, value, doc) in enumerate(picked)
    ]
    return docs, queries


__all__ = ["RETRIEVAL_VOCAB", "TINY_CROSS_ENCODER", "TINY_EMBEDDER", "TINY_READER", "fact_corpus"]
