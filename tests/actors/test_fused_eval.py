"""Fused evaluation (one no-grad pass over the shared base for several runs) gives each run the
metrics its own time-sliced evaluation gives.

Tolerance. Both evaluations run the same trainer code on the same adapter weights; only the
forward differs: the fused one multiplies a taller, right-padded batch (other runs' rows
concatenated), so float32 kernels block and sum in a different order. Nothing accumulates across
steps (no optimizer), so the metrics agree to float32 rounding of a mean over a few hundred
tokens: relative 1e-5 is ~100 float32 ulps and far below what a wrong adapter on a row, a
misaligned slice or a padding token counted as a target would move them (all of which change
eval_loss in the first or second digit on these trained adapters; checked below by the
``spread`` between runs).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from peft import LoraConfig
from trl import DPOConfig, SFTConfig

from actors.engine import fused_eval
from actors.engine.executor import Executor
from actors.engine.spec import RunSpec
from policies.chunking import ChunkPlan
from rf_ray.toy import dpo_dataset, load_toy_model, sft_dataset

SEED = 7
TIMING = (
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
    "eval_model_preparation_time",
)


def _sft(tmp_path, run_id, lr, r=4, eval_bs=4, targets=("q_proj", "v_proj")):
    args = SFTConfig(
        output_dir=str(tmp_path / f"r{run_id}"), per_device_train_batch_size=4,
        per_device_eval_batch_size=eval_bs, gradient_accumulation_steps=1, learning_rate=lr,
        num_train_epochs=1, logging_steps=1, max_length=48, report_to="none", use_cpu=True,
        bf16=False, seed=11 + run_id, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    lora = LoraConfig(
        task_type="CAUSAL_LM", r=r, lora_alpha=2 * r, target_modules=list(targets)
    )  # fmt: skip
    return RunSpec(
        run_id=run_id, model_key="toy", model_config=None, trainer_type="SFT", trl_args=args,
        lora_config=lora, plan=ChunkPlan(24, 4, 1, num_chunks=2), seed=SEED,
    )  # fmt: skip


def _dpo(tmp_path, run_id, lr, beta=0.1, r=4, eval_bs=4):
    args = DPOConfig(
        output_dir=str(tmp_path / f"d{run_id}"), per_device_train_batch_size=4,
        per_device_eval_batch_size=eval_bs, gradient_accumulation_steps=1, learning_rate=lr,
        num_train_epochs=1, logging_steps=1, report_to="none", use_cpu=True, bf16=False,
        seed=11 + run_id, save_strategy="no", disable_tqdm=True, beta=beta, max_length=64,
    )  # fmt: skip
    lora = LoraConfig(
        task_type="CAUSAL_LM", r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"]
    )
    return RunSpec(
        run_id=run_id, model_key="toy", model_config=None, trainer_type="DPO", trl_args=args,
        lora_config=lora, plan=ChunkPlan(24, 4, 1, num_chunks=2), seed=SEED,
    )  # fmt: skip


def _trained(specs, train, evaluation):
    """An executor holding ``specs``, each trained time-sliced over its first chunk (a fresh
    LoRA adapter is the identity: all runs would evaluate alike)."""
    executor = Executor(lambda _: load_toy_model(), train, evaluation, device="cpu")
    for spec in specs:
        executor.add_run(spec)
        executor.run_slice(spec.run_id, spec.plan.chunk_bounds(0)[1])
    return executor


def _assert_same(fused, alone, specs):
    for spec in specs:
        got, want = fused[spec.run_id], alone[spec.run_id]
        assert not isinstance(got, BaseException), got
        assert set(got) == set(want)
        for key in set(want) - set(TIMING):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (spec.run_id, key)
    losses = sorted(alone[s.run_id]["eval_loss"] for s in specs)
    spread = min(b - a for a, b in itertools.pairwise(losses))
    assert spread > 1e-3  # the runs really differ: a row served the wrong adapter would show


def test_fused_sft_eval_equals_time_sliced_mixed_ranks(tmp_path):
    """Mixed ranks, target modules and eval batch sizes (so the runs' eval loops have different
    lengths and keep meeting until the longest one ends)."""
    specs = [
        _sft(tmp_path, 1, 1e-2),
        _sft(tmp_path, 2, 3e-2, r=8, eval_bs=3),
        _sft(tmp_path, 3, 2e-2, r=2, eval_bs=5, targets=("q_proj", "k_proj", "o_proj")),
    ]
    executor = _trained(specs, sft_dataset(24, seed=3), sft_dataset(14, seed=9))
    alone = {s.run_id: executor.evaluator.evaluate(s.run_id) for s in specs}
    entry = executor.bases["toy"]
    fused, server = fused_eval.evaluate_fused(
        entry.model, [executor.registry[s.run_id] for s in specs], 0, executor.runtime.autocast
    )
    _assert_same(fused, alone, specs)
    # 14 rows in batches of 4 (4 batches), 3 (5) and 5 (3): three rounds of all three runs,
    # one of runs 1 and 2, and run 2's last batch alone.
    assert server.stats.fused_forwards == 4
    assert server.stats.fused_calls == 3 * 3 + 2
    assert server.stats.alone_calls == 1
    # The executor's own group path gives the same, and counts the group.
    grouped = executor.evaluator.evaluate_group([s.run_id for s in specs])
    _assert_same(grouped, alone, specs)
    assert executor.stats.fusion.eval_groups == 1


def test_fused_dpo_eval_equals_time_sliced(tmp_path):
    """DPO: each lane's reference forward (adapters off, lane-local) is served in one fused
    adapters-off pass, the policy forwards in another."""
    specs = [_dpo(tmp_path, 1, 2e-2), _dpo(tmp_path, 2, 5e-2, beta=0.3, r=8, eval_bs=3)]
    executor = _trained(specs, dpo_dataset(24), dpo_dataset(10, seed=5))
    alone = {s.run_id: executor.evaluator.evaluate(s.run_id) for s in specs}
    entry = executor.bases["toy"]
    fused, server = fused_eval.evaluate_fused(
        entry.model, [executor.registry[s.run_id] for s in specs], 0, executor.runtime.autocast
    )
    _assert_same(fused, alone, specs)
    assert any(k.startswith("eval_rewards/") for k in fused[1])
    # Rounds: 3 with both runs (reference + policy each), then run 2's fourth batch alone.
    assert server.stats.fused_forwards == 6
    assert server.stats.alone_calls == 2
    assert "ref" not in entry.model.peft_config


def test_a_failing_eval_fails_only_its_run(tmp_path):
    """Fault injection: one run's loss raises during evaluation. It fails (after its time-sliced
    retry fails too); the others get their metrics, as if evaluated alone."""
    specs = [_sft(tmp_path, 1, 1e-2), _sft(tmp_path, 2, 3e-2, r=8), _sft(tmp_path, 3, 2e-2)]
    executor = _trained(specs, sft_dataset(24, seed=3), sft_dataset(14, seed=9))
    alone = {s.run_id: executor.evaluator.evaluate(s.run_id) for s in specs}

    def broken(*args, **kwargs):
        raise RuntimeError("injected: eval loss exploded")

    executor.registry[2].trainer.compute_loss = broken
    out = executor.evaluator.evaluate_group([1, 2, 3])
    assert isinstance(out[2], RuntimeError)
    assert "injected" in str(out[2])
    _assert_same(out, alone, [specs[0], specs[2]])
    assert executor.stats.fusion.eval_fallbacks == 1


def test_fused_slice_evaluates_its_runs_fused(tmp_path):
    """``run_fused`` with evaluation: each run's SliceResult carries its own eval metrics, from
    one fused evaluation group."""
    specs = [_sft(tmp_path, 1, 1e-2), _sft(tmp_path, 2, 3e-2, r=8)]
    executor = Executor(
        lambda _: load_toy_model(), sft_dataset(24, seed=3), sft_dataset(14, seed=9), device="cpu"
    )
    for spec in specs:
        executor.add_run(spec)
    out = executor.run_fused([(s.run_id, s.plan.chunk_bounds(0)[1], True) for s in specs])
    assert executor.stats.fusion.eval_groups == 1
    for spec in specs:
        result = out[spec.run_id]
        assert not isinstance(result, BaseException), result
        assert result.fused_with == 2
        want = executor.evaluator.evaluate(spec.run_id)
        assert result.eval_metrics is not None
        assert result.eval_metrics["eval_loss"] == pytest.approx(want["eval_loss"], rel=1e-5)
    assert torch.is_grad_enabled()


def test_out_of_memory_in_a_fused_eval_pass_serves_each_run_alone(tmp_path, monkeypatch):
    """Fault injection: every fused forward runs out of memory. Each call is then served alone,
    as time-sliced evaluation makes it (its adapter active), so the metrics are the same."""
    import contextlib

    from actors.engine import lora_kernel

    specs = [_sft(tmp_path, 1, 1e-2), _sft(tmp_path, 2, 3e-2, r=8)]
    executor = _trained(specs, sft_dataset(24, seed=3), sft_dataset(8, seed=9))
    alone = {s.run_id: executor.evaluator.evaluate(s.run_id) for s in specs}

    @contextlib.contextmanager
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("injected: CUDA out of memory")
        yield

    monkeypatch.setattr(lora_kernel, "segmented_lora", out_of_memory)
    entry = executor.bases["toy"]
    out, server = fused_eval.evaluate_fused(
        entry.model, [executor.registry[s.run_id] for s in specs], 0, executor.runtime.autocast
    )
    assert server.stats.fused_forwards == 0
    assert server.stats.fallbacks == 2  # two rounds of 4 rows each
    assert server.stats.alone_calls == 4
    for spec in specs:
        got, want = out[spec.run_id], alone[spec.run_id]
        assert not isinstance(got, BaseException), got
        assert {k: v for k, v in got.items() if k not in TIMING} == {
            k: v for k, v in want.items() if k not in TIMING
        }
