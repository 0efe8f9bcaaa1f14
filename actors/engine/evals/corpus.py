"""An evals experiment's corpora: each distinct corpus written once, read back by executors.

The driver loads and splits each distinct corpus once (``rf_ray.evals.run.load_corpora``: a
loader's error stops ``run_evals`` before anything is written). The documents go to one file in
the experiment directory, ``corpora/<key>.jsonl``, named by a hash of their content, and every
pipeline's stored spec holds only that key (``RagSpec.corpus``), not a copy of the documents:
N pipelines over one corpus store it once. An executor reads the file when it first builds the
corpus's index (``Retrieval``), also after a resume or an executor restart.

``corpus_file`` is the one place that spells the path (the experiment directory's layout has no
single owner yet; when it does, this function moves there). A file is never rewritten: the same
key means the same bytes.

One document per line: ``{"page_content": ..., "metadata": {...}, "id": ...}``; metadata must
be JSON (str, number, bool, None, lists and dicts of them), which LangChain's loaders give.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from actors.storage.durable import atomic_write, make_private_dir
from actors.storage.layout import ExperimentDir


def corpus_file(exp_dir: str | Path, key: str) -> Path:
    """Where the corpus ``key`` of the experiment at ``exp_dir`` is stored."""
    return ExperimentDir(exp_dir).corpus_file(key)


def encode(documents: list[Any]) -> bytes:
    """The documents as JSON lines; ``ValueError`` naming the first document whose metadata
    JSON cannot hold, and the key."""
    lines = []
    for i, doc in enumerate(documents):
        record: dict[str, Any] = {"page_content": doc.page_content, "metadata": doc.metadata}
        if getattr(doc, "id", None) is not None:
            record["id"] = doc.id
        try:
            lines.append(json.dumps(record, sort_keys=True, allow_nan=False))
        except (TypeError, ValueError) as exc:
            bad = [k for k, v in doc.metadata.items() if not _is_json(v)]
            raise ValueError(
                f"document {i} (of {len(documents)}) has metadata {bad or '?'} that JSON cannot "
                f"hold ({exc}); give the loader a metadata_func that keeps plain values "
                "(str, numbers, bool, None, lists and dicts of them)"
            ) from exc
    return ("\n".join(lines) + "\n").encode() if lines else b""


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def corpus_key(data: bytes) -> str:
    """The name of a corpus file: a hash of its bytes."""
    return hashlib.sha256(data).hexdigest()[:24]


def write_corpus(exp_dir: str | Path, key: str, documents: list[Any]) -> Path:
    """Store the corpus ``key`` (nothing is written when it is there already)."""
    path = corpus_file(exp_dir, key)
    if path.exists():
        return path
    make_private_dir(path.parent)
    atomic_write(path, encode(documents))
    return path


def read_corpus(exp_dir: str | Path, key: str) -> list[Any]:
    """The documents of corpus ``key`` as LangChain ``Document``s."""
    from langchain_core.documents import Document

    path = corpus_file(exp_dir, key)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the evals corpus {key} is missing at {path}: the experiment directory is "
            "incomplete (was it copied without its corpora/ folder?); run run_evals again"
        ) from None
    docs = []
    for line in text.splitlines():
        record = json.loads(line)
        docs.append(Document(record["page_content"], metadata=record["metadata"],
                             id=record.get("id")))  # fmt: skip
    return docs


__all__ = ["corpus_file", "corpus_key", "encode", "read_corpus", "write_corpus"]
