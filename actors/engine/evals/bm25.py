"""BM25 as a LangChain retriever, on ``bm25s`` (a maintained BM25 over sparse matrices).

LangChain's own ``BM25Retriever`` wraps ``rank_bm25``, which is no longer maintained; this one
has the same use (``BM25Retriever.from_documents(docs)``, then ``invoke``/``batch``) and keeps
one index that retrievers with different ``k`` share (``with_k``). Tokens are words of one or
more characters, lower-cased, no stop words (a single letter can be a key).
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

TOKEN_PATTERN = r"(?u)\b\w+\b"


class BM25Retriever(BaseRetriever):
    """The ``k`` best documents by BM25 score (``bm25s.BM25``, its default Lucene variant)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any
    tokenizer: Any
    documents: list[Document]
    k: int = 4

    @classmethod
    def from_documents(cls, documents: list[Document], k: int = 4) -> BM25Retriever:
        import bm25s
        from bm25s.tokenization import Tokenizer

        tokenizer = Tokenizer(lower=True, splitter=TOKEN_PATTERN, stopwords=None)
        ids = tokenizer.tokenize(
            [d.page_content for d in documents], return_as="ids", show_progress=False
        )
        index = bm25s.BM25()
        index.index(ids, show_progress=False)
        return cls(index=index, tokenizer=tokenizer, documents=list(documents), k=k)

    def with_k(self, k: int) -> BM25Retriever:
        """A retriever of ``k`` documents over the same index."""
        return BM25Retriever(index=self.index, tokenizer=self.tokenizer,
                             documents=self.documents, k=k)  # fmt: skip

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        ids = self.tokenizer.tokenize(
            [query], update_vocab=False, return_as="ids", show_progress=False
        )
        k = min(self.k, len(self.documents))
        found, _ = self.index.retrieve(ids, k=k, show_progress=False)
        return [self.documents[int(i)] for i in found[0]]


__all__ = ["BM25Retriever"]
