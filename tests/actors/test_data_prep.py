"""Dataset preparation runs once per distinct (tokenizer, processing settings): a second run
with the same settings trains on the very rows the first run's ``SFTTrainer`` prepared (TRL
skips its own preparation), and trains exactly as it would have alone. Runs whose settings
differ (``max_length``; ``seed`` when TRL shuffles the prepared set) prepare their own."""

from __future__ import annotations

import dataclasses

import torch
from peft import get_peft_model_state_dict

from actors.engine.executor import Executor
from rf_ray.toy import load_toy_model, sft_dataset
from tests.actors.test_idempotent_slice import N, _spec


def _run(tmp_path, run_id: int, **args):
    spec = _spec(tmp_path, run_id)
    return dataclasses.replace(spec, trl_args=dataclasses.replace(spec.trl_args, **args))


def _adapter(executor: Executor, run_id: int) -> dict[str, torch.Tensor]:
    model = executor.bases["toy"].model
    name = executor.registry[run_id].spec.adapter_name
    return {
        k: v.detach().clone()
        for k, v in get_peft_model_state_dict(model, adapter_name=name).items()
    }


def _no_timings(metrics):
    return {
        k: v for k, v in metrics.items() if not k.endswith(("_runtime", "_per_second", "_time"))
    }


def test_a_second_run_with_the_same_settings_reuses_the_prepared_rows_and_trains_the_same(
    tmp_path,
):
    shared = Executor(load_toy_model, sft_dataset(N, seed=0), sft_dataset(8, seed=5), device="cpu")
    shared.add_run(_run(tmp_path, 1, learning_rate=1e-3))
    shared.add_run(_run(tmp_path, 2, learning_rate=3e-3))
    first, second = shared.registry[1].trainer, shared.registry[2].trainer
    assert second.train_dataset is first.train_dataset  # not prepared again
    assert second.eval_dataset is first.eval_dataset
    assert [p.runs for p in shared.registry.prepared.by_key.values()] == [2]
    shared.run_slice(2, 2, evaluate=True)

    alone = Executor(load_toy_model, sft_dataset(N, seed=0), sft_dataset(8, seed=5), device="cpu")
    alone.add_run(_run(tmp_path, 2, learning_rate=3e-3))
    assert alone.registry[2].trainer.train_dataset is not first.train_dataset
    alone.run_slice(2, 2, evaluate=True)
    ours, theirs = shared.registry[2].last_result, alone.registry[2].last_result
    assert ours.step_metrics == theirs.step_metrics
    assert _no_timings(ours.eval_metrics) == _no_timings(theirs.eval_metrics)
    expected = _adapter(alone, 2)
    for name, tensor in _adapter(shared, 2).items():
        assert torch.equal(tensor, expected[name]), name


def test_runs_with_other_processing_settings_prepare_their_own(tmp_path):
    executor = Executor(load_toy_model, sft_dataset(N, seed=0), device="cpu")
    executor.add_run(_run(tmp_path, 1))
    executor.add_run(_run(tmp_path, 2, max_length=24))
    executor.add_run(_run(tmp_path, 3, shuffle_dataset=True, seed=1))
    executor.add_run(_run(tmp_path, 4, shuffle_dataset=True, seed=2))
    datasets = [executor.registry[r].trainer.train_dataset for r in (1, 2, 3, 4)]
    assert len({id(d) for d in datasets}) == 4
    assert len(executor.registry.prepared.by_key) == 4
    assert max(len(row) for row in datasets[1]["input_ids"]) <= 24
