"""How an evals experiment reads in ``rf-ray status`` and the live view (``EvalsView``), on a
store's shape as the scheduler writes it: no Ray, no model."""

from __future__ import annotations

from pathlib import Path

from actors.storage.layout import ExperimentDir
from policies.settings import SETTINGS_KEY
from rf_ray.evals.progress import EvalsView

SHARD = {"Recall": 0.5, "Recall/lower": 0.3, "Recall/upper": 0.7, "MRR": 0.4, "MRR/lower": 0.2,
         "MRR/upper": 0.6, "exact_match": 0.1, "exact_match/lower": 0.0,
         "exact_match/upper": 0.2}  # fmt: skip


def _pipelines(tmp_path: Path, *run_ids: int) -> Path:
    for rid in run_ids:
        path = ExperimentDir(tmp_path).run(rid).pipeline_file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    return tmp_path


def test_the_pruners_metric_comes_first_as_the_store_holds_the_settings(tmp_path: Path) -> None:
    # The pruner is stored inside the experiment's settings (one value), not as a loose key:
    # exact_match sorts after the others, and is still the first column because it is pruned on.
    meta = {SETTINGS_KEY: {"pruner": {"type": "interval", "metric": "exact_match", "mode": "max"}}}
    view = EvalsView.of(_pipelines(tmp_path, 1), [1], meta, [(1, 1, SHARD)])
    assert view is not None
    assert view.metric == "exact_match"
    assert view.columns() == ["exact_match", "MRR"]
    assert view.cell(1, "exact_match") == "0.1 [0, 0.2]"
