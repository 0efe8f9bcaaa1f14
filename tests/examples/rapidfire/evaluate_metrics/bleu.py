"""BLEU as an ``evaluate`` metric module, for ``evaluate.load("bleu")`` offline.

The hub's ``evaluate-metric/bleu`` script cannot be downloaded in CI; ``conftest.py`` puts this
module where ``evaluate`` looks for a cached copy of it. Corpus BLEU-4 from NLTK over
whitespace tokens (no smoothing, as the hub metric's default), with the hub metric's keys."""

import math
import warnings

import datasets
import evaluate
from nltk.translate.bleu_score import corpus_bleu


class Bleu(evaluate.Metric):
    def _info(self):
        text = datasets.Value("string")
        return evaluate.MetricInfo(
            description="corpus BLEU-4 (NLTK)",
            citation="Papineni et al., BLEU: a Method for Automatic Evaluation, 2002",
            inputs_description="predictions: list of str; references: list of str or of lists",
            features=[
                datasets.Features({"predictions": text, "references": datasets.Sequence(text)}),
                datasets.Features({"predictions": text, "references": text}),
            ],
        )

    def _compute(self, predictions, references, max_order=4, **_):
        refs = [[r] if isinstance(r, str) else list(r) for r in references]
        hyps = [p.split() for p in predictions]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NLTK warns for every n-gram order with no overlap
            score = corpus_bleu([[r.split() for r in rs] for rs in refs], hyps,
                                weights=[1 / max_order] * max_order)  # fmt: skip
        hyp_len = sum(len(h) for h in hyps)
        ref_len = sum(min((len(r.split()) for r in rs), default=0) for rs in refs)
        ratio = hyp_len / ref_len if ref_len else 0.0
        penalty = 1.0 if ratio > 1 or ratio == 0 else math.exp(1 - 1 / ratio)
        return {"bleu": float(score), "brevity_penalty": penalty, "length_ratio": ratio,
                "translation_length": hyp_len, "reference_length": ref_len}  # fmt: skip
