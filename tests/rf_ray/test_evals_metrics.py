"""Ready-made evals metrics: retrieval metrics against gold ids, generation metrics through
rf_ray.metrics, and the accumulation RapidFire's online aggregation expects."""

from __future__ import annotations

import math

import pytest

from policies import OnlineStrategy, add_intervals
from policies.errors import ConfigError
from rf_ray.evals.metrics import (
    accumulate,
    evals_metrics,
    ndcg_at_k,
    precision_recall_f1,
    reciprocal_rank,
)


def test_retrieval_metrics_by_hand() -> None:
    assert precision_recall_f1([1, 2, 3, 4], [2, 9]) == (0.25, 0.5, pytest.approx(1 / 3))
    assert reciprocal_rank([5, 6, 2], [2]) == pytest.approx(1 / 3)
    assert reciprocal_rank([5, 6], [2]) == 0.0
    # one hit at rank 2 of k=3, two relevant: (1/log2 3) / (1 + 1/log2 3)
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k([7, 2, 8], [2, 3], k=3) == pytest.approx(expected)
    assert ndcg_at_k([2, 3], [2, 3], k=5) == pytest.approx(1.0)


def test_batch_metrics_accumulate_weighted_by_batch_size_and_get_intervals() -> None:
    fns = evals_metrics(retrieval_k=2, generation=("exact_match",))
    first = fns["compute_metrics_fn"]({
        "retrieved_documents": [[1, 2], [3, 4], [5, 6]], "ground_truth_documents": [[1], [9], [6]],
        "generated_text": ["42", "7", "x"], "answer": ["42", "8", "x"],
    })  # fmt: skip
    second = fns["compute_metrics_fn"]({
        "retrieved_documents": [[1]], "ground_truth_documents": [[1]],
        "generated_text": ["a"], "answer": ["b"],
    })  # fmt: skip
    assert first["MRR"]["value"] == pytest.approx((1 + 0 + 0.5) / 3)
    aggregated = {k: [first[k], second[k]] for k in first}
    total = fns["accumulate_metrics_fn"](aggregated)
    assert total["Total"]["value"] == 4
    assert total["exact_match"]["value"] == pytest.approx(2 / 4)
    assert total["Recall"]["value"] == pytest.approx(3 / 4)
    with_ci = add_intervals(total, 4, OnlineStrategy(), population=10)
    assert with_ci["Recall"]["lower_bound"] < 0.75 < with_ci["Recall"]["upper_bound"]
    assert accumulate is fns["accumulate_metrics_fn"]


def test_unknown_generation_metric_is_refused() -> None:
    with pytest.raises(ConfigError, match="bluer"):
        evals_metrics(generation=("bluer",))
