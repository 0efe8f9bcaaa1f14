"""The LangChain privates rf-ray uses, each behind one function (see ``internals``).

A text splitter keeps its sizes in private attributes and has no public reader; evals mode
names a pipeline's splitter by them (``rf_ray.evals.build.describe``: the params MLflow, the
store and ``rf-ray status`` show, which tell two pipelines' splitters apart).
"""

from __future__ import annotations

from typing import Any

from actors.engine.algorithms.internals import Private

VERSION = "langchain-text-splitters 1.1.3"
_SPLITTER = "langchain_text_splitters.base:TextSplitter"

PRIVATES = (
    Private(_SPLITTER, "_chunk_size", None, VERSION, instance_only=True),
    Private(_SPLITTER, "_chunk_overlap", None, VERSION, instance_only=True),
)


def splitter_sizes(splitter: Any) -> tuple[int | None, int | None]:
    """``(chunk_size, chunk_overlap)`` of a LangChain text splitter, None where it has none."""
    return getattr(splitter, "_chunk_size", None), getattr(splitter, "_chunk_overlap", None)
