"""ROUGE as an ``evaluate`` metric module, for ``evaluate.load("rouge")`` offline.

The hub's ``evaluate-metric/rouge`` script cannot be downloaded in CI; ``conftest.py`` puts this
module where ``evaluate`` looks for a cached copy of it. It scores with Google's
``rouge_score`` (what the hub metric uses) and returns the mean F-measure of each ROUGE type
under the type's name, as the hub metric does with its default aggregation."""

import datasets
import evaluate
from rouge_score import rouge_scorer

TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="ROUGE (rouge_score), mean F-measure per type",
            citation="Lin, ROUGE: A Package for Automatic Evaluation of Summaries, 2004",
            inputs_description="predictions: list of str; references: list of str",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, rouge_types=None, use_stemmer=False, **_):
        types = list(rouge_types or TYPES)
        scorer = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer)
        scores = [scorer.score(r, p) for p, r in zip(predictions, references)]
        n = max(len(scores), 1)
        return {t: sum(s[t].fmeasure for s in scores) / n for t in types}
