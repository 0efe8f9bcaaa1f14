"""A run trained in interleaved slices equals a vanilla ``SFTTrainer.train()``.

The tolerance is zero: on CPU in float32 the executor performs the very same floating-point
operations in the same order as ``Trainer._run_epoch`` (same batches, same token counts for the
loss normaliser, same dropout RNG stream), so per-step losses and adapter weights are
bit-identical. Any drift means the slice loop diverged from TRL's.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from trl import SFTConfig, SFTTrainer

from actors.engine.executor import Executor
from actors.engine.spec import RunSpec
from policies.chunking import ChunkPlan, epoch_order
from rf_ray.toy import load_toy_model, sft_dataset

SEED = 7
N = 44  # not a multiple of the batch size: the last micro-batch and last step are short


def _args(tmp_path, name, **kw):
    base = dict(
        output_dir=str(tmp_path / name),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=3e-3,
        lr_scheduler_type="cosine",
        num_train_epochs=1,
        warmup_steps=1,
        logging_steps=1,
        max_length=48,
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=11,
        save_strategy="no",
        disable_tqdm=True,
        train_sampling_strategy="sequential",
    )
    base.update(kw)
    return SFTConfig(**base)


LORA = dict(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])


def _vanilla(tmp_path, data):
    model, tok = load_toy_model()
    torch.manual_seed(11)  # the run's seed, as the executor seeds each adapter
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
    # Vanilla TRL over the same example order rf-ray uses (its seed-shuffled epoch order).
    ordered = data.select(epoch_order(len(data), SEED, 0))
    trainer = SFTTrainer(
        model=peft_model,
        args=_args(tmp_path, "vanilla"),
        train_dataset=ordered,
        processing_class=tok,
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses, get_peft_model_state_dict(peft_model)


@pytest.mark.parametrize("slice_steps", [1, 2, 4])
def test_interleaved_slices_equal_vanilla_sft(tmp_path, slice_steps):
    data = sft_dataset(N, seed=3)
    want_losses, want_weights = _vanilla(tmp_path, data)

    executor = Executor(lambda _: load_toy_model(), data, device="cpu")
    plans = {}
    for run_id, lr in [(1, 3e-3), (2, 1e-2), (3, 1e-3)]:
        args = _args(tmp_path, f"run{run_id}", learning_rate=lr)
        plan = ChunkPlan(N, 4, 2, num_chunks=3)
        plans[run_id] = plan
        executor.add_run(
            RunSpec(
                run_id=run_id,
                model_key="toy",
                model_config=None,
                trainer_type="SFT",
                trl_args=args,
                lora_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
                plan=plan,
                seed=SEED,
            )
        )
    losses: dict[int, list[float]] = {1: [], 2: [], 3: []}
    total = plans[1].total_steps
    for end in range(slice_steps, total + slice_steps, slice_steps):
        for run_id in (3, 1, 2):  # interleave, run 1 never first
            result = executor.run_slice(run_id, min(end, total))
            losses[run_id] += [m["loss"] for m in result.step_metrics]

    assert executor.stats.base_loads == {"toy": 1}
    assert losses[1] == want_losses
    got = get_peft_model_state_dict(executor.bases["toy"].model, adapter_name="run_1")
    assert set(got) == set(want_weights)
    for key, value in want_weights.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)
    # The other runs really trained differently (the check above is not vacuous).
    assert losses[2] != losses[1]


class _EpochOrderSampler(torch.utils.data.Sampler):
    """Vanilla Trainer sampling in rf-ray's per-epoch order (``epoch_order``)."""

    def __init__(self, n):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        return iter(epoch_order(self.n, SEED, self.epoch))

    def __len__(self):
        return self.n


class _OrderedSFTTrainer(SFTTrainer):
    def _get_train_sampler(self, train_dataset=None):
        return _EpochOrderSampler(len(train_dataset or self.train_dataset))


def test_two_epochs_with_reshuffle_equal_vanilla(tmp_path):
    data = sft_dataset(N, seed=3)
    model, tok = load_toy_model()
    torch.manual_seed(11)
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **LORA))
    args = _args(tmp_path, "vanilla2", num_train_epochs=2)
    trainer = _OrderedSFTTrainer(
        model=peft_model, args=args, train_dataset=data, processing_class=tok
    )
    trainer.train()
    want = [h["loss"] for h in trainer.state.log_history if "loss" in h]

    executor = Executor(lambda _: load_toy_model(), data, device="cpu")
    plan = ChunkPlan(N, 4, 2, num_chunks=2, num_train_epochs=2)
    executor.add_run(
        RunSpec(run_id=1, model_key="toy", model_config=None, trainer_type="SFT",
                trl_args=_args(tmp_path, "rf2", num_train_epochs=2),
                lora_config=LoraConfig(task_type="CAUSAL_LM", **LORA), plan=plan, seed=SEED)
    )  # fmt: skip
    got = []
    for chunk in range(plan.total_chunks):
        got += [m["loss"] for m in executor.run_slice(1, plan.chunk_bounds(chunk)[1]).step_metrics]
    assert len(got) == plan.total_steps == 12
    assert got == want
