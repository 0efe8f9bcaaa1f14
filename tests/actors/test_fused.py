"""A run trained in fused slices (one base pass for several runs) matches the same run trained
alone in time slices.

Tolerance. Time-slicing is bit-exact with vanilla TRL (test_equivalence*.py); fusion is not and
cannot be: a fused pass multiplies a larger, right-padded matrix, so float32 kernels block and sum
in a different order. The first step's loss therefore agrees to float32 rounding (~1e-7), and
Adam then carries such differences along (it divides by sqrt(v), so a rounding-level gradient
difference moves a weight by up to ~lr in one step when its gradient is near zero). The check is
relative to what training itself does: the distance between the fused and the time-sliced
adapter must be under 1% of the distance the adapter travelled from its initialisation, and
under 1% of the distance between two runs that differ only in learning rate. A real bug (a row
seeing another run's adapter, a loss normalised over the wrong tokens, a shared optimizer step)
moves weights by the same order as training and fails both.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from peft import LoraConfig, get_peft_model_state_dict
from trl import DPOConfig, SFTConfig

from actors.engine import eligibility, fused, lora_kernel
from actors.engine.executor import Executor
from actors.engine.spec import RunSpec
from policies.chunking import ChunkPlan
from rf_ray.toy import dpo_dataset, load_toy_model, sft_dataset

SEED = 7


def _sft(tmp_path, run_id, lr, bs=4, ga=2, r=4, targets=("q_proj", "v_proj"), dropout=0.0, n=44):
    args = SFTConfig(
        output_dir=str(tmp_path / f"r{run_id}"), per_device_train_batch_size=bs,
        gradient_accumulation_steps=ga, learning_rate=lr, lr_scheduler_type="cosine",
        num_train_epochs=1, warmup_steps=1, logging_steps=1, max_length=48, report_to="none",
        use_cpu=True, bf16=False, seed=11 + run_id, save_strategy="no", disable_tqdm=True,
        max_grad_norm=1.0,
    )  # fmt: skip
    lora = LoraConfig(
        task_type="CAUSAL_LM", r=r, lora_alpha=2 * r, lora_dropout=dropout,
        target_modules=list(targets),
    )  # fmt: skip
    return RunSpec(
        run_id=run_id, model_key="toy", model_config=None, trainer_type="SFT", trl_args=args,
        lora_config=lora, plan=ChunkPlan(n, bs, ga, num_chunks=2), seed=SEED,
    )  # fmt: skip


def _dpo(tmp_path, run_id, lr, beta=0.1, bs=4, ga=2, n=40):
    args = DPOConfig(
        output_dir=str(tmp_path / f"d{run_id}"), per_device_train_batch_size=bs,
        gradient_accumulation_steps=ga, learning_rate=lr, num_train_epochs=1, logging_steps=1,
        report_to="none", use_cpu=True, bf16=False, seed=11 + run_id, save_strategy="no",
        disable_tqdm=True, beta=beta, max_length=64,
    )  # fmt: skip
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    return RunSpec(
        run_id=run_id, model_key="toy", model_config=None, trainer_type="DPO", trl_args=args,
        lora_config=lora, plan=ChunkPlan(n, bs, ga, num_chunks=2), seed=SEED,
    )  # fmt: skip


def _train(specs, data, fuse):
    """Train every spec over both chunks, fused (one group per chunk) or time-sliced."""
    executor = Executor(lambda _: load_toy_model(), data, device="cpu")
    for spec in specs:
        executor.add_run(spec)
    initial = {s.run_id: _weights(executor, s) for s in specs}
    steps: dict[int, list[dict[str, float]]] = {s.run_id: [] for s in specs}
    for chunk in range(2):
        grants = [(s.run_id, s.plan.chunk_bounds(chunk)[1], False) for s in specs]
        if fuse:
            outcomes = executor.run_fused(grants)
        else:
            outcomes = {r: executor.run_slice(r, end) for r, end, _ in grants}
        for run_id, result in outcomes.items():
            assert not isinstance(result, BaseException), result
            assert result.fused_with == (len(specs) if fuse else 1)
            steps[run_id] += result.step_metrics
    return executor, initial, steps


def _weights(executor, spec):
    state = get_peft_model_state_dict(
        executor.bases[spec.model_key].model, adapter_name=spec.adapter_name
    )
    return torch.cat([v.flatten() for _, v in sorted(state.items())]).clone()


def _assert_matches(specs, alone, together):
    ex_a, init, steps_a = alone
    ex_f, _, steps_f = together
    final = {s.run_id: _weights(ex_a, s) for s in specs}
    spread = min(
        float((final[a.run_id] - final[b.run_id]).norm())
        for a in specs
        for b in specs
        if a.run_id < b.run_id and final[a.run_id].shape == final[b.run_id].shape
    )
    for spec in specs:
        rid = spec.run_id
        assert [m["step"] for m in steps_f[rid]] == [m["step"] for m in steps_a[rid]]
        assert steps_f[rid][0]["loss"] == pytest.approx(steps_a[rid][0]["loss"], rel=1e-5)
        for a, f in zip(steps_a[rid], steps_f[rid]):
            assert f["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-4)
            assert f["learning_rate"] == a["learning_rate"]  # each run's own schedule
        travelled = float((final[rid] - init[rid]).norm())
        gap = float((_weights(ex_f, spec) - final[rid]).norm())
        assert travelled > 0
        assert gap < 0.01 * travelled, (rid, gap, travelled)
        assert gap < 0.01 * spread, (rid, gap, spread)


def test_fused_sft_matches_time_sliced_mixed_runs(tmp_path):
    """Different learning rates, ranks, target modules, batch sizes and accumulation windows
    (so runs step at different cadences) in one fused group."""
    data = sft_dataset(44, seed=3)
    specs = [
        _sft(tmp_path, 1, 3e-3),
        _sft(tmp_path, 2, 1e-2, r=8),
        _sft(tmp_path, 3, 1e-3, bs=2, ga=1, targets=("q_proj", "k_proj", "o_proj")),
        _sft(tmp_path, 4, 3e-3, bs=8, ga=1),
    ]
    alone = _train(specs, data, fuse=False)
    together = _train(specs, data, fuse=True)
    _assert_matches(specs, alone, together)
    assert together[0].stats.fusion.slices == 2
    # Cadence: run 3 (batch 2, no accumulation) took 22 optimizer steps, run 1 took 6.
    assert len(together[2][3]) == 22
    assert len(together[2][1]) == 6
    # TRL's own per-run metrics come through, from each run's own rows.
    assert together[2][3][0]["num_tokens"] != together[2][4][0]["num_tokens"]


def test_fused_dpo_matches_time_sliced(tmp_path):
    data = dpo_dataset(40)
    specs = [_dpo(tmp_path, 1, 5e-3), _dpo(tmp_path, 2, 2e-2, beta=0.3), _dpo(tmp_path, 3, 1e-2)]
    alone = _train(specs, data, fuse=False)
    together = _train(specs, data, fuse=True)
    _assert_matches(specs, alone, together)
    for spec in specs:  # the reference term (from the fused adapters-off pass) matches too
        for a, f in zip(alone[2][spec.run_id], together[2][spec.run_id]):
            assert f["rewards/margins"] == pytest.approx(a["rewards/margins"], rel=1e-2, abs=1e-4)
    # The reference is still the base with adapters disabled: no copy of the base.
    assert "ref" not in together[0].bases["toy"].model.peft_config


def test_fused_dropout_matches_statistically(tmp_path):
    """With LoRA dropout on, the fused stream is the run's own but not torch's fused-kernel
    stream: compare the loss curves' means over seeds, not the values."""
    data = sft_dataset(64, seed=3)
    gaps, noise = [], []
    for seed in range(3):
        specs = [
            _sft(tmp_path, 10 * seed + 1, 3e-3, dropout=0.3, n=64),
            _sft(tmp_path, 10 * seed + 2, 1e-2, dropout=0.3, n=64),
        ]
        _, _, a = _train(specs, data, fuse=False)
        _, _, f = _train(specs, data, fuse=True)
        for spec in specs:
            la = [m["loss"] for m in a[spec.run_id]]
            lf = [m["loss"] for m in f[spec.run_id]]
            assert la != lf  # different dropout draws really happened
            gaps.append(statistics.mean(lf) - statistics.mean(la))
            noise.append(statistics.pstdev(la))
    # The mean loss gap is centred within the step-to-step noise of a single curve.
    assert abs(statistics.mean(gaps)) < statistics.mean(noise)
    assert all(math.isfinite(g) for g in gaps)


def test_fused_dropout_stream_is_the_runs_own(tmp_path):
    """A run's fused result does not depend on which runs share its pass."""
    data = sft_dataset(44, seed=3)
    a1, b1, c1 = (
        _sft(tmp_path, 1, 3e-3, dropout=0.2),
        _sft(tmp_path, 2, 1e-2, dropout=0.2),
        _sft(tmp_path, 3, 1e-3, dropout=0.2, r=8),
    )
    _, _, with_b = _train([a1, b1], data, fuse=True)
    _, _, with_c = _train([a1, c1], data, fuse=True)
    for x, y in zip(with_b[1], with_c[1]):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)


def test_one_diverging_run_fails_alone(tmp_path):
    data = sft_dataset(44, seed=3)
    good = _sft(tmp_path, 1, 3e-3)
    bad = _sft(tmp_path, 2, 1e-2)
    executor = Executor(lambda _: load_toy_model(), data, device="cpu")
    executor.add_run(good)
    executor.add_run(bad)
    # Corrupt one adapter: its loss is NaN from the first step.
    model = executor.bases["toy"].model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".run_2." in name and "lora_B" in name:
                p.fill_(float("nan"))
    out = executor.run_fused([(1, 3, False), (2, 3, False)])
    assert isinstance(out[2], Exception)
    assert "loss became nan" in str(out[2])
    assert not isinstance(out[1], BaseException)
    assert out[1].end_step == 3
    assert all(math.isfinite(m["loss"]) for m in out[1].step_metrics)
    alone = _train([good], data, fuse=False)[2][1][:3]
    assert [m["loss"] for m in out[1].step_metrics] == pytest.approx(
        [m["loss"] for m in alone], rel=1e-4
    )


def test_fusion_keys_keep_grpo_other_bases_and_algorithms_apart(tmp_path):
    import dataclasses

    sft, dpo = _sft(tmp_path, 1, 1e-3), _dpo(tmp_path, 2, 1e-3)
    assert sft.fusion_key == "toy|SFT"
    assert dpo.fusion_key == "toy|DPO"
    assert dataclasses.replace(sft, model_key="other").fusion_key == "other|SFT"
    assert dataclasses.replace(sft, trainer_type="GRPO").fusion_key is None  # generates per run
    # Budget units: rows x max length; a DPO row is a chosen and a rejected sequence.
    assert sft.fusion_tokens == 4 * 48
    assert dpo.fusion_tokens == 2 * 4 * 64


def test_unfusable_runs_are_time_sliced(tmp_path):
    """DoRA (a LoRA variant) cannot share the fused kernels: the group falls back per run."""
    data = sft_dataset(44, seed=3)
    plain = _sft(tmp_path, 1, 3e-3)
    dora = _sft(tmp_path, 2, 3e-3)
    dora.lora_config.use_dora = True
    executor = Executor(lambda _: load_toy_model(), data, device="cpu")
    executor.add_run(plain)
    executor.add_run(dora)
    assert eligibility.run_fusable(executor.registry, 1) is None
    assert "DoRA" in eligibility.run_fusable(executor.registry, 2)
    out = executor.run_fused([(1, 3, False), (2, 3, False)])
    assert all(r.fused_with == 1 for r in out.values())
    assert executor.stats.fusion.slices == 0


def test_concat_rows_pads_right_with_neutral_values():
    a = {"input_ids": torch.tensor([[5, 6, 7]]), "labels": torch.tensor([[5, 6, 7]]),
         "attention_mask": torch.ones(1, 3, dtype=torch.long), "use_cache": False}  # fmt: skip
    b = {"input_ids": torch.tensor([[8, 9]] * 2), "labels": torch.tensor([[8, 9]] * 2),
         "attention_mask": torch.ones(2, 2, dtype=torch.long), "use_cache": False}  # fmt: skip
    combined, lengths = lora_kernel.concat_rows([a, b], pad_id=0)
    assert lengths == [3, 2]
    assert combined["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0], [8, 9, 0]]
    assert combined["labels"][1:, 2].tolist() == [-100, -100]
    assert combined["attention_mask"][1:, 2].tolist() == [0, 0]
    assert combined["use_cache"] is False
    with pytest.raises(lora_kernel.NotFusableError, match="use_cache"):
        lora_kernel.concat_rows([a, {**b, "use_cache": True}], pad_id=0)


def test_out_of_memory_mid_slice_falls_back_to_time_slicing(tmp_path, monkeypatch):
    """Fault injection: the fused pass runs out of memory at its third micro-step. The steps it
    finished stand, the rest of the slice is time-sliced, and every run ends where it would
    have."""
    data = sft_dataset(44, seed=3)
    specs = [_sft(tmp_path, 1, 3e-3, ga=1), _sft(tmp_path, 2, 1e-2, ga=1)]
    executor = Executor(lambda _: load_toy_model(), data, device="cpu")
    for spec in specs:
        executor.add_run(spec)
    real = fused.fused_micro_step
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(fused, "fused_micro_step", flaky)
    out = executor.run_fused([(1, 6, False), (2, 6, False)])
    for run_id in (1, 2):
        result = out[run_id]
        assert not isinstance(result, BaseException), result
        assert (result.start_step, result.end_step) == (0, 6)
        assert [m["step"] for m in result.step_metrics] == [1, 2, 3, 4, 5, 6]
    assert executor.stats.fusion.oom == 1
    assert executor.stats.fusion.fallbacks == 1
    assert executor.stats.fusion.last_oom_tokens == sum(s.fusion_tokens for s in specs)
    monkeypatch.setattr(fused, "fused_micro_step", real)
    _, _, alone = _train(specs, data, fuse=False)
    for run_id in (1, 2):
        want = [m["loss"] for m in alone[run_id][:6]]
        assert [m["loss"] for m in out[run_id].step_metrics] == pytest.approx(want, rel=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_on_cuda_in_bf16(tmp_path):
    """On CUDA the executor runs under bf16 autocast; fused and time-sliced agree to bf16
    rounding (8 bits of mantissa: a looser bound than float32's)."""
    data = sft_dataset(44, seed=3)
    specs = [_sft(tmp_path, 1, 3e-3), _sft(tmp_path, 2, 1e-2, r=8)]
    for spec in specs:
        spec.trl_args.use_cpu = False

    def train(fuse):
        executor = Executor(lambda _: load_toy_model(), data, device="cuda")
        assert executor.use_bf16
        for spec in specs:
            executor.add_run(spec)
        grants = [(s.run_id, s.plan.total_steps, False) for s in specs]
        if fuse:
            out = executor.run_fused(grants)
        else:
            out = {r: executor.run_slice(r, end) for r, end, _ in grants}
        assert all(result.memory["device_mem_peak_mib"] > 0 for result in out.values())
        return {r: [m["loss"] for m in result.step_metrics] for r, result in out.items()}

    alone, together = train(False), train(True)
    for run_id, losses in alone.items():
        assert together[run_id] == pytest.approx(losses, rel=3e-2)
