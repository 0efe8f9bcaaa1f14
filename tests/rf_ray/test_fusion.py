"""Fusion end to end: run_fit trains runs in fused groups on the Ray actors, with the same
outcome as time-slicing (to the tolerance of tests/actors/test_fused.py), and pruning and ops
work unchanged: a run leaving a group does not disturb the others."""

from __future__ import annotations

import pytest

from rf_ray import (
    ConfigError,
    Experiment,
    FusionPolicy,
    List,
    NoPruning,
    RFModelConfig,
    RFSFTConfig,
    SuccessiveHalving,
)
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset, sft_eval_dataset

pytestmark = pytest.mark.slow

RATES = [3e-3, 1e-3, 3e-4, 1e-4]


def _config() -> RFModelConfig:
    return RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(
            learning_rate=List(RATES),
            lora_rank=4,
            per_device_train_batch_size=4,
            num_train_epochs=1,
            max_length=48,
        ),
    )


def _fit(tmp_path, name, fusion, blocking=True, **kw):
    exp = Experiment(name, experiment_path=tmp_path)
    fit = dict(num_chunks=2, seed=3, pruner=NoPruning(), live_view=False)
    fit.update(kw)
    exp.run_fit(
        _config(),
        train_dataset=sft_dataset(48),
        eval_dataset=sft_eval_dataset(16),
        fusion=fusion,
        blocking=blocking,
        **fit,
    )
    return exp


def _final_eval(exp):
    chunks = exp.get_chunk_results()
    last = chunks.sort_values("chunk").groupby("run_id").last()
    return last["eval_loss"].to_dict(), chunks


@pytest.fixture(scope="module")
def time_sliced(ray_cluster, tmp_path_factory):
    exp = _fit(tmp_path_factory.mktemp("ts"), "sliced", fusion=False)
    exp.end()
    return _final_eval(exp)


def test_run_fit_fuses_and_matches_time_slicing(time_sliced, tmp_path):
    exp = _fit(tmp_path, "fused", fusion=True)
    stats = exp.stats()
    exp.end()
    want, sliced_chunks = time_sliced
    got, chunks = _final_eval(exp)
    assert set(got) == {1, 2, 3, 4}
    for run_id, value in want.items():
        assert got[run_id] == pytest.approx(value, rel=1e-3)
    # Once every trial is up (the first chunk's groups take the trials already started), each
    # chunk of every run is trained in one pass with the three others.
    assert chunks[chunks["chunk"] == 2]["fused_with"].tolist() == [4.0] * 4
    assert sliced_chunks["fused_with"].tolist() == [1.0] * 8
    assert stats["base_loads"] == 1
    assert stats["executors"][0]["fusion"]["slices"] >= 2


def test_budget_splits_groups(ray_cluster, tmp_path):
    # 4 rows x 48 tokens per micro-batch: a 400-token budget admits two runs per pass.
    exp = _fit(tmp_path, "split", fusion=FusionPolicy(max_runs=8, max_tokens=400))
    exp.end()
    _, chunks = _final_eval(exp)
    assert chunks["fused_with"].max() == 2.0
    assert chunks[chunks["chunk"] == 2]["fused_with"].tolist() == [2.0] * 4


def test_stopping_a_member_leaves_the_others_unchanged(time_sliced, tmp_path):
    exp = _fit(tmp_path, "steered", fusion=True, blocking=False, max_slice_steps=1)
    exp.wait_for_progress(2, steps=1, timeout=240)
    exp.stop(2)  # it leaves the group at the next slice boundary
    info = exp.wait().set_index("run_id")
    exp.end()
    assert info.loc[2, "status"] == "stopped"
    assert (info.loc[[1, 3, 4], "status"] == "completed").all()
    want, _ = time_sliced
    got, _ = _final_eval(exp)
    for run_id in (1, 3, 4):
        assert got[run_id] == pytest.approx(want[run_id], rel=1e-3)


def test_pruning_with_fusion(ray_cluster, tmp_path):
    exp = _fit(tmp_path, "pruned", fusion=True, pruner=SuccessiveHalving(eta=2))
    info = exp.get_runs_info().set_index("run_id")
    exp.end()
    assert sorted(info["status"].tolist()) == ["completed", "completed", "pruned", "pruned"]
    _, chunks = _final_eval(exp)
    second = chunks[chunks["chunk"] == 2]
    assert second["fused_with"].tolist() == [2.0, 2.0]  # the survivors share a pass


def test_bad_fusion_value_is_refused_before_anything_starts(tmp_path):
    exp = Experiment("bad", experiment_path=tmp_path)
    with pytest.raises(ConfigError, match=r"fusion=.yes."):
        exp.run_fit(_config(), train_dataset=sft_dataset(48), fusion="yes")
    assert not (tmp_path / "bad").exists()
