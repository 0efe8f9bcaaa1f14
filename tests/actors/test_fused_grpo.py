"""GRPO runs trained in fused slices match the same runs trained alone in time slices.

Each run's generation samples from the run's own RNG stream (the fused cursor's, swapped into
its lane), its rewards come from its own reward functions and its loss from its own
GRPOTrainer. So the first generation of every run is token for token the time-sliced one, and
so are its rewards. After that the adapters differ by the fused forward's float32 rounding
(see tests/actors/test_fused.py for why that is ~1e-7 per step and what Adam does with it);
sampling a toy vocabulary with 4 new tokens from logits that differ at 1e-6 picks the same
tokens unless a uniform draw falls within ~1e-6 of a boundary, so later completions match too in
practice, and the test holds the whole curve to it: rewards equal, losses and KL to 1e-3
relative, final adapters within 1% of the distance they travelled. A real bug (a row generated
or scored with another run's adapter, the KL reference taken with adapters on, a shared RNG
stream, a shared optimizer step) changes completions, rewards or weights at the first step.
"""

from __future__ import annotations

import zlib

import pytest

from actors.engine.executor import Executor
from rf_ray.configs import RFGRPOConfig, RFModelConfig
from rf_ray.search import RFGridSearch
from rf_ray.specs import build_specs
from rf_ray.toy import TOY_MODEL_NAME, arithmetic_reward, grpo_dataset, load_toy_model
from tests.actors.test_fused import _train as train_both_chunks
from tests.actors.test_fused import _weights

N = 8
BASE = dict(
    per_device_train_batch_size=4, gradient_accumulation_steps=2, num_generations=4,
    max_completion_length=4, learning_rate=5e-3, num_train_epochs=1, beta=0.1, seed=11,
    lora_rank=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
)  # fmt: skip


def spread_reward(prompts, completions, **kwargs):
    """Varies within a group, so advantages (and gradients) are non-zero."""
    return [float(zlib.crc32(c.encode()) % 7) for c in completions]


def length_reward(prompts, completions, **kwargs):
    return [float(len(c)) / 4 for c in completions]


def _specs(tmp_path, runs):
    group = RFGridSearch(
        [
            RFModelConfig(
                model_name=TOY_MODEL_NAME,
                training_args=RFGRPOConfig(**{**BASE, **kw}),
                reward_funcs=funcs,
            )
            for funcs, kw in runs
        ]
    )
    return build_specs(group.expand(), tmp_path, N, 2, seed=7)


def _train(specs, fuse):
    return train_both_chunks(specs, grpo_dataset(N), fuse)


RUNS = [
    ([arithmetic_reward, spread_reward], {}),
    ([spread_reward, length_reward], {"learning_rate": 2e-2, "lora_rank": 8, "lora_alpha": 16}),
    (
        [spread_reward],
        {"gradient_accumulation_steps": 1, "num_generations": 2, "beta": 0.3},
    ),
]


def test_fused_grpo_matches_time_sliced(tmp_path):
    """Three runs with their own reward functions, ranks, KL weights, generation group sizes and
    accumulation windows, fused over two chunks, against the same runs time-sliced."""
    specs = _specs(tmp_path, RUNS)
    assert len({s.fusion_key for s in specs}) == 1
    assert specs[0].fusion_key is not None
    ex_a, init, alone = _train(specs, fuse=False)
    ex_f, _, together = _train(specs, fuse=True)
    assert ex_f.stats.fusion.slices == 2
    # Old/reference log-probs of the runs were computed in shared passes.
    assert ex_f.stats.fusion.shared_calls > 0
    for spec in specs:
        rid = spec.run_id
        a, f = alone[rid], together[rid]
        assert [m["step"] for m in f] == [m["step"] for m in a]
        reward_keys = [k for k in a[0] if k.startswith("reward")]
        assert reward_keys
        for ma, mf in zip(a, f):
            # Same completions, scored by the run's own functions: same rewards.
            assert {k: mf[k] for k in reward_keys} == {k: ma[k] for k in reward_keys}
            assert mf["loss"] == pytest.approx(ma["loss"], rel=1e-3, abs=1e-5)
            assert mf["kl"] == pytest.approx(ma["kl"], rel=1e-3, abs=1e-6)
            assert mf["learning_rate"] == ma["learning_rate"]
        assert any(m["kl"] > 0 for m in f)  # the reference (adapters off) really differed
        final = _weights(ex_a, spec)
        travelled = float((final - init[rid]).norm())
        gap = float((_weights(ex_f, spec) - final).norm())
        assert travelled > 0
        assert gap < 0.01 * travelled, (rid, gap, travelled)
    assert "ref" not in ex_f.bases[specs[0].model_key].model.peft_config


def test_a_failing_reward_fails_only_its_run(tmp_path):
    """A reward function that raises in one lane fails that run, naming the function; the
    other run trains on, as it would alone."""

    def broken_reward(prompts, completions, **kwargs):
        raise ValueError("injected")

    specs = _specs(tmp_path, [([spread_reward], {}), ([broken_reward], {})])
    executor = Executor(lambda _: load_toy_model(), grpo_dataset(N), device="cpu")
    for spec in specs:
        executor.add_run(spec)
    end = specs[0].plan.chunk_bounds(0)[1]
    out = executor.run_fused([(1, end, False), (2, end, False)])
    assert isinstance(out[2], Exception)
    assert "broken_reward" in str(out[2])
    assert not isinstance(out[1], BaseException), out[1]
    _, _, alone = _train(specs[:1], fuse=False)
    assert [m["loss"] for m in out[1].step_metrics] == pytest.approx(
        [m["loss"] for m in alone[1][: len(out[1].step_metrics)]], rel=1e-3, abs=1e-5
    )


def test_generation_settings_that_cannot_share_a_batch_do_not_fuse(tmp_path):
    same, other_len, other_temp = _specs(
        tmp_path,
        [
            ([spread_reward], {}),
            ([spread_reward], {"max_completion_length": 6}),
            ([spread_reward], {"temperature": 0.7}),
        ],
    )
    keys = {same.fusion_key, other_len.fusion_key, other_temp.fusion_key}
    assert None not in keys
    assert len(keys) == 3
    # Different reward functions, learning rates or group sizes do share a batch.
    (a, b) = _specs(tmp_path, RUNS[:1] + RUNS[2:])
    assert a.fusion_key == b.fusion_key
