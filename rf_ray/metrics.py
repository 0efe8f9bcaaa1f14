"""Ready-made generation metrics, usable by name: ``eval_metrics_fn="rougeL"`` or a list.

Every metric compares each prediction with its reference after the same normalisation (lower
case, punctuation dropped, whitespace-split into tokens) and averages over the examples, except
BLEU, which is a corpus score as its paper defines it. All run locally, in plain Python.

* ``exact_match``: 1 when the normalised prediction equals the normalised reference.
* ``token_f1``: harmonic mean of token precision and recall, counting tokens with multiplicity
  (the SQuAD answer score, Rajpurkar et al. 2016).
* ``rougeL``: ROUGE-L F1, from the longest common subsequence of tokens (Lin 2004, sec. 3.1).
* ``bleu``: corpus BLEU-4 with the brevity penalty (Papineni et al. 2002), with add-one smoothing
  of the 2- to 4-gram precisions (Lin and Och 2004) so that short answers do not all score 0.

A ``MetricSet`` has the signature of a user's ``eval_metrics_fn``:
``f(predictions, references, prompts) -> dict[str, float]``.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policies.errors import ConfigError

__all__ = ["METRICS", "FromComputeMetrics", "LogitsMetrics", "MetricSet", "bleu", "exact_match",
           "resolve_metrics_fn", "rouge_l", "split_compute_metrics", "token_f1",
           "tokens"]  # fmt: skip

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def tokens(text: str) -> list[str]:
    """Lower-cased words of ``text``, punctuation removed."""
    return _PUNCT.sub(" ", text.lower()).split()


def _check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(references)} references; "
            "each prediction needs its reference"
        )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after normalisation."""
    _check_lengths(predictions, references)
    return _mean([float(tokens(p) == tokens(r)) for p, r in zip(predictions, references)])


def _f1(pred: list[str], ref: list[str]) -> float:
    if not pred or not ref:
        return float(pred == ref)
    return _f_measure(sum((Counter(pred) & Counter(ref)).values()), len(pred), len(ref))


def _f_measure(overlap: int, pred_len: int, ref_len: int) -> float:
    """F1 of an overlap of ``overlap`` tokens between a prediction and a reference."""
    if overlap == 0:
        return 0.0
    precision, recall = overlap / pred_len, overlap / ref_len
    return 2 * precision * recall / (precision + recall)


def token_f1(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean token-overlap F1 (tokens counted with multiplicity)."""
    _check_lengths(predictions, references)
    return _mean([_f1(tokens(p), tokens(r)) for p, r in zip(predictions, references)])


def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (one row of the dynamic programme at a time)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _rouge_l(pred: list[str], ref: list[str]) -> float:
    if not pred or not ref:
        return float(pred == ref)
    return _f_measure(_lcs(pred, ref), len(pred), len(ref))


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 over the examples."""
    _check_lengths(predictions, references)
    return _mean([_rouge_l(tokens(p), tokens(r)) for p, r in zip(predictions, references)])


def _ngrams(words: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def bleu(predictions: Sequence[str], references: Sequence[str], max_n: int = 4) -> float:
    """Corpus BLEU-``max_n`` in [0, 1] (one reference per prediction)."""
    _check_lengths(predictions, references)
    matches, totals = [0] * max_n, [0] * max_n
    pred_len = ref_len = 0
    for p, r in zip(predictions, references):
        pw, rw = tokens(p), tokens(r)
        pred_len, ref_len = pred_len + len(pw), ref_len + len(rw)
        for n in range(1, max_n + 1):
            counts = _ngrams(pw, n)
            matches[n - 1] += sum((counts & _ngrams(rw, n)).values())
            totals[n - 1] += sum(counts.values())
    if pred_len == 0 or matches[0] == 0:
        return 0.0
    smooth = [0] + [1] * (max_n - 1)  # add-one for n >= 2 only
    log_p = (
        sum(math.log((m + s) / (t + s)) for m, t, s in zip(matches, totals, smooth) if t + s > 0)
        / max_n
    )
    brevity = 1.0 if pred_len > ref_len else math.exp(1 - ref_len / pred_len)
    return brevity * math.exp(log_p)


METRICS: dict[str, Callable[[Sequence[str], Sequence[str]], float]] = {
    "exact_match": exact_match,
    "token_f1": token_f1,
    "rougeL": rouge_l,
    "bleu": bleu,
}


@dataclass(frozen=True)
class MetricSet:
    """Named metrics as one ``eval_metrics_fn``; picklable, so Ray ships it to the executor."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        unknown = [n for n in self.names if n not in METRICS]
        if unknown or not self.names:
            raise ConfigError(
                f"eval_metrics_fn={list(self.names)!r}: unknown metric name(s) {unknown!r}; "
                f"use any of {sorted(METRICS)} or pass a function "
                "f(predictions, references, prompts) -> dict[str, float]"
            )
        # MLflow params and the leaderboard show a callable by its __qualname__.
        object.__setattr__(self, "__qualname__", "+".join(self.names))

    def __call__(
        self, predictions: Sequence[str], references: Sequence[str], prompts: Sequence[str]
    ) -> dict[str, float]:
        return {name: METRICS[name](predictions, references) for name in self.names}


@dataclass(frozen=True)
class FromComputeMetrics:
    """RapidFire AI's text metric, ``compute_metrics((predictions, references)) -> dict``, as an
    ``eval_metrics_fn``.

    RapidFire calls a run's ``compute_metrics`` this way whenever the run also sets a
    ``generation_config`` (its ``GenerationMetricsCallback``): one tuple of two lists of decoded
    strings, the generations and the reference answers, in eval-set order; it logs the dict it
    returns under the dict's own keys. ``RFModelConfig(compute_metrics=f,
    generation_config={...})`` does the same here (``split_compute_metrics`` wraps ``f`` in
    this); ``eval_metrics_fn=FromComputeMetrics(f)`` says it explicitly."""

    compute_metrics: Callable[..., Any]

    def __post_init__(self) -> None:
        if not callable(self.compute_metrics):
            raise ConfigError(f"FromComputeMetrics({self.compute_metrics!r}): not callable")
        name = getattr(self.compute_metrics, "__qualname__", type(self.compute_metrics).__name__)
        object.__setattr__(self, "__qualname__", str(name))

    def __call__(
        self, predictions: Sequence[str], references: Sequence[str], prompts: Sequence[str]
    ) -> dict[str, float]:
        return dict(self.compute_metrics((list(predictions), list(references))))


@dataclass(frozen=True)
class LogitsMetrics:
    """TRL's ``compute_metrics`` hook (the eval loop's ``EvalPrediction``: logits and labels),
    kept even when the run sets a ``generation_config``:
    ``RFModelConfig(compute_metrics=LogitsMetrics(f), generation_config={...})``.

    Without a ``generation_config`` a plain ``compute_metrics`` is already TRL's hook; with one,
    rf-ray follows RapidFire and scores generated text (``FromComputeMetrics``). This wrapper
    is how a run asks for both: TRL's metrics on logits and generation with its settings."""

    compute_metrics: Callable[..., Any]

    def __post_init__(self) -> None:
        if not callable(self.compute_metrics):
            raise ConfigError(f"LogitsMetrics({self.compute_metrics!r}): not callable")
        name = getattr(self.compute_metrics, "__qualname__", type(self.compute_metrics).__name__)
        object.__setattr__(self, "__qualname__", str(name))

    def __call__(self, eval_prediction: Any) -> Any:
        return self.compute_metrics(eval_prediction)


def split_compute_metrics(
    compute_metrics: Callable[..., Any] | None,
    generation_config: Mapping[str, Any] | None,
    generation_eval: Any,
    where: str = "RFModelConfig",
) -> tuple[Callable[..., Any] | None, Any]:
    """``(TRL's compute_metrics, generation_eval)`` of one run, with RapidFire's semantics.

    With a ``generation_config``, a plain ``compute_metrics`` scores generated text: it becomes
    the run's generation metric (``FromComputeMetrics``, over the whole eval set, as RapidFire
    generates for every eval row), and TRL gets no ``compute_metrics``. ``LogitsMetrics(f)``
    stays TRL's hook. Without a ``generation_config`` nothing changes."""
    if (
        compute_metrics is None
        or generation_config is None
        or isinstance(compute_metrics, LogitsMetrics)
    ):
        return compute_metrics, generation_eval
    if generation_eval is not None:
        raise ConfigError(
            f"{where}: compute_metrics={_name(compute_metrics)} with a generation_config scores "
            "generated text (RapidFire's semantics), and eval_metrics_fn does too: give one of "
            "them, or wrap compute_metrics in rf_ray.metrics.LogitsMetrics to keep it TRL's "
            "hook on logits"
        )
    from actors.engine.gen_eval import GenerationEval

    return None, GenerationEval(FromComputeMetrics(compute_metrics), num_prompts=None)


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", type(fn).__qualname__))


def resolve_metrics_fn(value: Any, field: str = "eval_metrics_fn") -> Callable[..., Any] | None:
    """A metric name, a list of names, or a callable, as one callable (``None`` stays ``None``).
    Raises ``ConfigError`` (a ``ValueError``) naming ``field`` and the value for anything else."""
    if value is None or callable(value):
        return value
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        try:
            return MetricSet(tuple(value))
        except ConfigError as e:
            raise ConfigError(str(e).replace("eval_metrics_fn=", f"{field}=", 1)) from None
    raise ConfigError(
        f"{field}={value!r} is neither a metric name ({', '.join(sorted(METRICS))}), a list of "
        "them, nor a function f(predictions, references, prompts) -> dict[str, float]"
    )
