"""The ready-made generation metrics (rf_ray.metrics), against values worked out by hand."""

from __future__ import annotations

import math
import pickle

import pytest

from rf_ray.metrics import (
    FromComputeMetrics,
    MetricSet,
    bleu,
    exact_match,
    resolve_metrics_fn,
    rouge_l,
    token_f1,
    tokens,
)


def test_tokens_normalise_case_and_punctuation():
    assert tokens("  The Cat, sat.\n") == ["the", "cat", "sat"]


def test_exact_match():
    assert exact_match(["A.", "b c", "x"], ["a", "b  c", "y"]) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("pred", "ref", "want"),
    [
        ("the cat sat", "cat sat down", 2 / 3),  # 2 common: p = 2/3, r = 2/3
        ("a a b", "a b b", 2 / 3),  # multiplicity: min counts a:1, b:1
        ("", "", 1.0),
        ("x", "", 0.0),
        ("x y", "z", 0.0),
    ],
)
def test_token_f1(pred, ref, want):
    assert token_f1([pred], [ref]) == pytest.approx(want)


@pytest.mark.parametrize(
    ("pred", "ref", "want"),
    [
        ("a b c d", "a c d e", 0.75),  # LCS a c d: p = r = 3/4
        ("d c b a", "a b c d", 0.25),  # order matters, unlike token F1
        ("a b", "a x b y z", 2 * (1.0 * 0.4) / 1.4),
        ("q", "r", 0.0),
    ],
)
def test_rouge_l(pred, ref, want):
    assert rouge_l([pred], [ref]) == pytest.approx(want)


def test_rouge_l_and_token_f1_disagree_on_order():
    assert token_f1(["d c b a"], ["a b c d"]) == 1.0
    assert rouge_l(["d c b a"], ["a b c d"]) < 1.0


def test_bleu():
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert bleu(["q"], ["r"]) == 0.0
    # 1 of 2 unigrams, 0+1 / 1+1 bigrams, 1/1 trigrams and 4-grams (smoothed, no n-grams);
    # brevity: prediction (2) shorter than reference (3).
    want = math.exp(1 - 3 / 2) * math.exp((math.log(1 / 2) + math.log(1 / 2)) / 4)
    assert bleu(["a x"], ["a b c"]) == pytest.approx(want)


def test_lengths_must_match():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge_l(["a", "b"], ["a"])


def test_metric_set_by_name_and_list():
    f = resolve_metrics_fn("rougeL")
    assert f(["a b"], ["a b"], ["p"]) == {"rougeL": 1.0}
    g = resolve_metrics_fn(["exact_match", "token_f1"])
    assert g(["a b"], ["a c"], ["p"]) == {"exact_match": 0.0, "token_f1": 0.5}
    assert pickle.loads(pickle.dumps(g)) == g  # Ray ships it to the executor
    assert g.__qualname__ == "exact_match+token_f1"


def test_a_callable_passes_through():
    def f(predictions, references, prompts):
        return {}

    assert resolve_metrics_fn(f) is f
    assert resolve_metrics_fn(None) is None


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("rouge", r"eval_metrics_fn=\['rouge'\]: unknown metric name\(s\) \['rouge'\]"),
        (["rougeL", "nope"], r"unknown metric name\(s\) \['nope'\]"),
        (3, "eval_metrics_fn=3 is neither a metric name"),
        ([], r"eval_metrics_fn=\[\]"),
    ],
)
def test_bad_names_are_refused_naming_field_and_value(value, match):
    with pytest.raises(ValueError, match=match):
        resolve_metrics_fn(value)


def test_metric_set_checks_its_names():
    with pytest.raises(ValueError, match="unknown metric"):
        MetricSet(("bogus",))


def _rapidfire_style(eval_preds):
    predictions, references = eval_preds
    return {"same": sum(p == r for p, r in zip(predictions, references)) / len(predictions)}


def test_a_rapidfire_text_compute_metrics_adapts_to_eval_metrics_fn():
    f = resolve_metrics_fn(FromComputeMetrics(_rapidfire_style))
    assert f(["a", "b"], ["a", "c"], ["p", "q"]) == {"same": 0.5}
    assert f.__qualname__ == "_rapidfire_style"  # named as the user's function in errors
    assert pickle.loads(pickle.dumps(f)) == f


# ------------------------------------------------------------------ RapidFire's compute_metrics


def _runs(**kwargs):
    from rf_ray.configs import RFModelConfig, RFSFTConfig
    from rf_ray.search import RFGridSearch

    cfg = RFModelConfig("tiny", training_args=RFSFTConfig(learning_rate=1e-4), **kwargs)
    return RFGridSearch(cfg).expand()


def test_compute_metrics_with_a_generation_config_scores_generated_text():
    """RapidFire's GenerationMetricsCallback calls compute_metrics((predictions, references))
    with decoded strings when a generation_config is set, over every eval row; TRL then gets
    no compute_metrics (it would hand the same function logits)."""
    (run,) = _runs(compute_metrics=_rapidfire_style, generation_config={"max_new_tokens": 8})
    assert run.compute_metrics is None
    gen = run.generation_eval
    assert isinstance(gen.metrics_fn, FromComputeMetrics)
    assert gen.metrics_fn.compute_metrics is _rapidfire_style
    assert gen.num_prompts is None  # every eval row, as RapidFire generates for all of them
    assert gen.metrics_fn(["a", "b"], ["a", "c"], ["p", "q"]) == {"same": 0.5}
    assert run.flat_params()["eval_metrics_fn"] == "_rapidfire_style"
    assert run.flat_params()["eval_generations"] == "all"


def test_a_list_of_compute_metrics_gives_each_run_its_own_generation_metric():
    from rf_ray.configs import List

    def other(eval_preds):
        return {"n": float(len(eval_preds[0]))}

    runs = _runs(compute_metrics=List([_rapidfire_style, other]), generation_config={})
    assert [r.generation_eval.metrics_fn.compute_metrics for r in runs] == [_rapidfire_style, other]


def test_without_a_generation_config_compute_metrics_stays_trls_logits_hook():
    (run,) = _runs(compute_metrics=_rapidfire_style)
    assert run.compute_metrics is _rapidfire_style
    assert run.generation_eval is None


def test_logits_metrics_keeps_trls_hook_beside_a_generation_config():
    from rf_ray.metrics import LogitsMetrics

    hook = LogitsMetrics(_rapidfire_style)
    (run,) = _runs(compute_metrics=hook, generation_config={"max_new_tokens": 4})
    assert run.compute_metrics is hook
    assert run.generation_eval is None
    assert hook((["x"], ["x"])) == {"same": 1.0}  # the EvalPrediction passes through
    assert pickle.loads(pickle.dumps(hook)) == hook


def test_compute_metrics_and_eval_metrics_fn_both_scoring_text_are_refused():
    from policies.errors import ConfigError

    with pytest.raises(ConfigError, match=r"give one of them.*LogitsMetrics"):
        _runs(compute_metrics=_rapidfire_style, generation_config={}, eval_metrics_fn="rougeL")


def test_a_clone_that_changes_compute_metrics_changes_its_generation_metric():
    from rf_ray.ops import modified

    def other(eval_preds):
        return {"n": 1.0}

    (run,) = _runs(compute_metrics=_rapidfire_style, generation_config={"max_new_tokens": 4})
    clone = modified(run, {"compute_metrics": other})
    assert clone.compute_metrics is None
    assert clone.generation_eval.metrics_fn.compute_metrics is other
    same = modified(run, {"learning_rate": 1e-3})
    assert same.generation_eval is run.generation_eval
