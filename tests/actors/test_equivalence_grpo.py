"""GRPO trained in interleaved slices equals a vanilla ``GRPOTrainer.train()`` (bit-identical).

Vanilla is TRL's own usage: ``GRPOTrainer(model=base, peft_config=..., reward_funcs=...)``. The
executor drives the same trainer code: TRL's own dataloader (RepeatSampler order), generation
with the run's adapter active, reward scoring, the KL reference (base with adapters disabled,
``beta > 0``) and the loss. Generation samples from the global torch RNG, which the executor
saves and restores around each run's slices, so the tolerance is zero: same completions, same
rewards, same losses, same adapter weights. Dropout is on, accumulation is 2, and the run
crosses an epoch boundary (the sampler reshuffles) with another run trained in between.
"""

from __future__ import annotations

import zlib

import pytest
import torch
from peft import LoraConfig, get_peft_model_state_dict
from transformers.trainer_callback import PrinterCallback
from trl import GRPOConfig, GRPOTrainer

from actors.engine.algorithms.grpo import LoaderBatches, checked_reward
from actors.engine.executor import Executor
from policies.errors import RunFailedError
from rf_ray.configs import RFGRPOConfig, RFModelConfig
from rf_ray.search import RFGridSearch
from rf_ray.specs import build_specs
from rf_ray.toy import TOY_MODEL_NAME, arithmetic_reward, grpo_dataset, load_toy_model

N = 8
LORA = dict(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])
# Interesting args for a tiny run: 4 generations per prompt, 2 prompts per generation batch.
GRPO_ARGS = dict(
    per_device_train_batch_size=4, gradient_accumulation_steps=2, num_generations=4,
    max_completion_length=4, learning_rate=5e-3, num_train_epochs=2, beta=0.1, seed=11,
)  # fmt: skip


def spread_reward(prompts, completions, **kwargs):
    """A deterministic reward that varies within a group, so advantages (and gradients) are
    non-zero even when the toy model's sums are all wrong."""
    return [float(zlib.crc32(c.encode()) % 7) for c in completions]


REWARDS = [arithmetic_reward, spread_reward]  # arithmetic_reward reads the "answer" column


def _args(tmp_path, name, **kw):
    return GRPOConfig(
        output_dir=str(tmp_path / name), logging_steps=1, report_to="none", use_cpu=True,
        bf16=False, save_strategy="no", disable_tqdm=True, **{**GRPO_ARGS, **kw},
    )  # fmt: skip


def _specs(tmp_path, data, runs, num_chunks=2):
    """RunSpecs as the driver builds them (so the GRPO ChunkPlan is the real one), one per
    ``(reward_funcs, training_args overrides)``."""
    group = RFGridSearch(
        [
            RFModelConfig(
                model_name=TOY_MODEL_NAME,
                training_args=RFGRPOConfig(**{**GRPO_ARGS, **kw}, **LORA_SHORT),
                reward_funcs=funcs,
            )
            for funcs, kw in runs
        ]
    )
    return build_specs(group.expand(), tmp_path, len(data), num_chunks, seed=7)


LORA_SHORT = dict(lora_rank=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])


def _executor(data):
    return Executor(lambda _: load_toy_model(), data, device="cpu")


def test_interleaved_grpo_equals_vanilla(tmp_path):
    data = grpo_dataset(N)
    model, tok = load_toy_model()
    torch.manual_seed(11)
    vanilla = GRPOTrainer(
        model=model, peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA), reward_funcs=REWARDS,
        args=_args(tmp_path, "vanilla"), train_dataset=data, processing_class=tok,
    )  # fmt: skip
    vanilla.remove_callback(PrinterCallback)
    vanilla.train()
    history = [h for h in vanilla.state.log_history if "loss" in h]

    specs = _specs(tmp_path, data, [(REWARDS, {}), (REWARDS, {"learning_rate": 2e-2})])
    executor = _executor(data)
    for spec in specs:
        executor.add_run(spec)
    plan = specs[0].plan
    assert plan.total_steps == len(history) == 8
    steps = []
    for end in (1, 3, 6, plan.total_steps):  # slices cross the epoch boundary at step 4
        for run_id in (2, 1):
            result = executor.run_slice(run_id, end)
            if run_id == 1:
                steps += result.step_metrics
    timing = {"step_time"}  # wall-clock, differs between any two runs
    for got, want in zip(steps, history, strict=True):
        keys = set(want) - timing - {"epoch"}
        assert keys <= set(got)
        assert {k: got[k] for k in keys} == {k: want[k] for k in keys}
    assert any(m["loss"] != 0 for m in steps)  # advantages were not all zero
    assert any(m["kl"] > 0 for m in steps)  # the reference (adapters disabled) was used
    got_weights = get_peft_model_state_dict(
        executor.bases[specs[0].model_key].model, adapter_name="run_1"
    )
    for key, value in get_peft_model_state_dict(vanilla.model).items():
        torch.testing.assert_close(got_weights[key], value, rtol=0, atol=0)
    # The reference is the base with adapters disabled: no "ref" adapter, no second base copy.
    assert "ref" not in executor.bases[specs[0].model_key].model.peft_config
    counts = executor.resident_parameter_count()
    assert counts["base"] == sum(p.numel() for p in load_toy_model()[0].parameters())


@pytest.mark.parametrize(
    ("rows", "kw"),
    [
        (8, {}),
        (13, {}),  # an incomplete last prompt group is dropped
        (16, {"gradient_accumulation_steps": 1, "num_generations": 2}),
        (16, {"steps_per_generation": 4}),
        (12, {"num_iterations": 2, "gradient_accumulation_steps": 3, "num_generations": 6}),
    ],
)
def test_grpo_plan_counts_trl_dataloader(tmp_path, rows, kw):
    """The driver's GRPO steps per epoch (TRL's RepeatSampler formula) equal what the trainer's
    own dataloader yields, so chunk bounds and num_chunks checks hold before actors start."""
    data = grpo_dataset(rows)
    (spec,) = _specs(tmp_path, data, [(REWARDS, kw)], num_chunks=1)
    executor = _executor(data)
    executor.add_run(spec)
    loader = executor.registry[spec.run_id].trainer.get_train_dataloader()
    assert spec.plan.batches_per_epoch == len(loader)


def test_restored_grpo_run_resumes_the_data_order(tmp_path):
    """A run restored mid-epoch (warm-started clone, restarted executor) fast-forwards TRL's
    dataloader to where its checkpoint left off, and its micro-step counter with it."""
    data = grpo_dataset(N)
    (spec,) = _specs(tmp_path, data, [(REWARDS, {})])
    executor = _executor(data)
    executor.add_run(spec)
    trainer = executor.registry[spec.run_id].trainer
    straight = LoaderBatches(spec, trainer)
    prompts = [[row["prompt"] for b in straight.take(s) for row in b] for s in range(6)]
    restored = LoaderBatches(spec, trainer)
    assert [row["prompt"] for b in restored.take(5) for row in b] == prompts[5]
    assert trainer._step == 5 * spec.plan.grad_accum  # micro-steps before step 5 (epoch 2)
    assert trainer._buffered_inputs is None  # TRL regenerates, as on resume_from_checkpoint


def bad_length(prompts, completions, **kwargs):
    return [0.0] * 3


def bad_type(prompts, completions, **kwargs):
    return ["high"] * len(completions)


def bad_raise(prompts, completions, **kwargs):
    raise KeyError("answer")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (bad_length, "reward function 'bad_length' returned 3 values for 8 completions"),
        (bad_type, "reward function 'bad_type' returned 'high' (str) for completion 0"),
        (bad_raise, "reward function 'bad_raise' raised KeyError: 'answer'"),
    ],
)
def test_faulty_reward_fails_only_its_run(tmp_path, bad, message):
    data = grpo_dataset(N)
    one_epoch = {"num_train_epochs": 1}
    specs = _specs(tmp_path, data, [([arithmetic_reward, bad], one_epoch), (REWARDS, one_epoch)])
    executor = _executor(data)
    for spec in specs:
        executor.add_run(spec)
    with pytest.raises(RunFailedError) as info:
        executor.run_slice(1, 1)
    assert message in str(info.value)
    executor.remove_run(1)
    result = executor.run_slice(2, specs[1].plan.total_steps)  # the neighbour trains on
    assert len(result.step_metrics) == specs[1].plan.total_steps
    assert all("reward" in m for m in result.step_metrics)


def test_checked_reward_keeps_name_and_none():
    wrapped = checked_reward(arithmetic_reward)
    assert wrapped.__name__ == "arithmetic_reward"  # TRL names the reward metrics after it
    out = checked_reward(lambda prompts, completions, **kw: [None, 1])(
        prompts=["a", "b"], completions=["1", "2"]
    )
    assert out == [None, 1]
