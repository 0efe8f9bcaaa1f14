"""A pipeline's prompt manager on the executor: instructions and few-shot examples.

What a ``preprocess_fn`` receives as ``prompt_manager`` (RapidFire AI's ``get_instructions``
and ``get_fewshot_examples``), built from ``spec.PromptSpec``: LangChain's example selector over
a FAISS index of the examples picks ``k`` per query, formatted with the example template.
"""

from __future__ import annotations

import contextlib
from typing import Any

from actors.engine.evals.spec import PromptSpec


class PromptManager:
    """Instructions and per-query few-shot examples of one pipeline."""

    def __init__(self, spec: PromptSpec, embedding: Any = None, lock: Any = None) -> None:
        self.lock = lock or contextlib.nullcontext()
        """Held while selecting examples (the embedding model is shared: ``Rag.lock``)."""
        self.instructions = spec.instructions
        self.k = spec.k
        self._fewshot: Any = None
        if spec.examples:
            from langchain_community.vectorstores import FAISS
            from langchain_core.prompts import FewShotPromptTemplate

            selector = spec.example_selector_cls.from_examples(
                spec.examples, embedding, vectorstore_cls=FAISS, k=spec.k
            )
            self._fewshot = FewShotPromptTemplate(
                example_selector=selector, example_prompt=spec.example_prompt_template,
                prefix="", suffix="", input_variables=["user_query"],
            )  # fmt: skip

    def get_instructions(self) -> str:
        return self.instructions

    def get_fewshot_examples(self, user_queries: list[str]) -> list[str]:
        """Per query, its ``k`` most similar examples, formatted ("" without examples)."""
        if self._fewshot is None:
            return ["" for _ in user_queries]
        with self.lock:
            return [self._fewshot.format(user_query=q) for q in user_queries]


__all__ = ["PromptManager"]
