"""Run ids come from the store: a refused clone burns its id, a later run_fit takes fresh ids,
and no run's files are ever overwritten.

(The second run_fit takes its first id from ``Store.next_run_id()``, which counts the runs
table, the ids reserved for clones and the ``runs/<id>`` directories on disk.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.storage.layout import ExperimentDir
from actors.storage.store import Store
from rf_ray import ConfigError, Experiment
from tests.rf_ray.test_locking import ROWS, _config, _finish, _start_held

pytestmark = pytest.mark.slow


def _files(exp_dir: Path) -> dict[str, bytes]:
    """Every file under ``runs/`` that a start writes (specs), with its bytes."""
    return {
        str(p.relative_to(exp_dir)): p.read_bytes()
        for p in sorted(ExperimentDir(exp_dir).runs_dir.rglob("*"))
        if p.is_file() and "spec" in p.name
    }


def test_a_refused_clone_burns_its_id_and_a_later_run_fit_overwrites_nothing(ray_cluster, tmp_path):
    from rf_ray.toy import sft_dataset

    exp = Experiment("ids", experiment_path=tmp_path)
    session = _start_held(exp, [1e-3, 3e-4])
    try:
        with pytest.raises(ConfigError, match="warm-started clone"):
            exp.clone_modify(1, {"lora_rank": 8}, warm_start=True)  # refused before any id
        with pytest.raises(ConfigError, match="rejected the run"):
            exp.clone_modify(1, {"optim": "not-an-optimizer"})  # refused by TRL, id reserved
    finally:
        _finish(session)
    with Store(exp.dir, readonly=True) as store:
        assert [r["run_id"] for r in store.runs()] == [1, 2]
        assert store.next_run_id() == 4  # 3 went to the refused clone
    before = _files(exp.dir)

    info = exp.run_fit(
        _config([3e-3]), train_dataset=sft_dataset(ROWS), num_chunks=2, seed=1,
        max_slice_steps=1, live_view=False, fusion=False,
    )  # fmt: skip
    exp.end()
    assert info["run_id"].tolist() == [1, 2, 4]
    assert info.set_index("run_id").loc[4, "status"] == "completed"
    after = _files(exp.dir)
    assert {k: after[k] for k in before} == before  # nothing of runs 1 and 2 was rewritten
    assert not ExperimentDir(exp.dir).run(3).path.exists()
