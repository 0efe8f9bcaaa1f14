"""Ready-made evals metrics in RapidFire AI's shapes: a ``compute_metrics_fn`` and its
``accumulate_metrics_fn``, usable as they are or called from your own.

    config_set = {..., **evals_metrics(retrieval_k=5, generation=("exact_match", "token_f1"))}

Retrieval, against gold document ids (per query: ``batch["retrieved_documents"]``, the ids in
rank order, and ``batch["ground_truth_documents"]``, the relevant ids):

* ``Precision``, ``Recall``, ``F1 Score``: of the retrieved set against the relevant set;
* ``NDCG@k``: discounted cumulative gain of the first ``k`` retrieved, over the ideal ranking of
  ``min(k, relevant)`` hits (Jarvelin and Kekalainen 2002), binary relevance;
* ``MRR``: the reciprocal rank of the first relevant document (0 when none is retrieved).

Generation, against references (``batch["generated_text"]`` and ``batch["answer"]``, or the
columns named): ``exact_match``, ``token_f1`` and ``rougeL`` from ``rf_ray.metrics`` (the same
normalisation as fit mode's generation metrics).

Each metric is a mean over queries in [0, 1], marked ``is_algebraic`` with its ``value_range``,
so online aggregation reports a confidence interval for it; ``Total`` counts the queries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from policies.errors import ConfigError
from rf_ray.metrics import METRICS


def precision_recall_f1(retrieved: Sequence[Any], relevant: Sequence[Any]) -> tuple[float, ...]:
    got, want = set(retrieved), set(relevant)
    hits = len(got & want)
    p = hits / len(got) if got else 0.0
    r = hits / len(want) if want else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def ndcg_at_k(retrieved: Sequence[Any], relevant: Sequence[Any], k: int) -> float:
    want = set(relevant)
    gain = sum(1 / math.log2(i + 2) for i, d in enumerate(retrieved[:k]) if d in want)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(k, len(want))))
    return gain / ideal if ideal else 0.0


def reciprocal_rank(retrieved: Sequence[Any], relevant: Sequence[Any]) -> float:
    want = set(relevant)
    return next((1 / (i + 1) for i, d in enumerate(retrieved) if d in want), 0.0)


def _mean_metric(values: list[float]) -> dict[str, Any]:
    return {"value": sum(values) / len(values) if values else 0.0, "is_algebraic": True,
            "value_range": (0, 1)}  # fmt: skip


def retrieval_metrics(
    batch: dict[str, list[Any]],
    k: int = 5,
    retrieved: str = "retrieved_documents",
    relevant: str = "ground_truth_documents",
) -> dict[str, dict[str, Any]]:
    """Per-batch retrieval metrics (means over the batch's queries)."""
    rows = list(zip(batch[retrieved], batch[relevant]))
    prf = [precision_recall_f1(r, g) for r, g in rows]
    return {
        "Total": {"value": len(rows)},
        "Precision": _mean_metric([x[0] for x in prf]),
        "Recall": _mean_metric([x[1] for x in prf]),
        "F1 Score": _mean_metric([x[2] for x in prf]),
        f"NDCG@{k}": _mean_metric([ndcg_at_k(r, g, k) for r, g in rows]),
        "MRR": _mean_metric([reciprocal_rank(r, g) for r, g in rows]),
    }


def generation_metrics(
    batch: dict[str, list[Any]],
    names: Sequence[str] = ("exact_match", "token_f1", "rougeL"),
    predictions: str = "generated_text",
    references: str = "answer",
) -> dict[str, dict[str, Any]]:
    """Per-batch generation metrics (``rf_ray.metrics`` by name), each a mean over the batch."""
    preds = [str(p) for p in batch[predictions]]
    refs = [str(r) for r in batch[references]]
    out: dict[str, dict[str, Any]] = {"Total": {"value": len(preds)}}
    for name in names:
        fn = METRICS[name]
        out[name] = _mean_metric([fn([p], [r]) for p, r in zip(preds, refs)])
    return out


def accumulate(aggregated: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """RapidFire's ``accumulate_metrics_fn`` for the metrics above: each algebraic metric's
    batch means weighted by the batch's ``Total``; ``Total`` summed."""
    totals = [float(m["value"]) for m in aggregated["Total"]]
    n = sum(totals)
    out: dict[str, dict[str, Any]] = {"Total": {"value": n}}
    for name, values in aggregated.items():
        if name == "Total" or not values or not values[0].get("is_algebraic"):
            continue
        mean = sum(float(v["value"]) * t for v, t in zip(values, totals)) / n if n else 0.0
        out[name] = {"value": mean, "is_algebraic": True,
                     "value_range": tuple(values[0].get("value_range", (0, 1)))}  # fmt: skip
    return out


def evals_metrics(
    retrieval_k: int | None = 5, generation: Sequence[str] = ()
) -> dict[str, Callable[..., Any]]:
    """``{"compute_metrics_fn": ..., "accumulate_metrics_fn": ...}`` for a config set: the
    retrieval metrics (with ``NDCG@retrieval_k``; None: none) and the named generation
    metrics."""
    unknown = [n for n in generation if n not in METRICS]
    if unknown:
        raise ConfigError(f"unknown generation metric(s) {unknown}; known: {sorted(METRICS)}")
    if retrieval_k is None and not generation:
        raise ConfigError("evals_metrics needs retrieval_k or at least one generation metric")
    names = tuple(generation)

    def compute_metrics_fn(batch: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if retrieval_k is not None:
            out.update(retrieval_metrics(batch, retrieval_k))
        if names:
            out.update(generation_metrics(batch, names))
        return out

    return {"compute_metrics_fn": compute_metrics_fn, "accumulate_metrics_fn": accumulate}


__all__ = [
    "accumulate",
    "evals_metrics",
    "generation_metrics",
    "ndcg_at_k",
    "precision_recall_f1",
    "reciprocal_rank",
    "retrieval_metrics",
]
