"""bf16 autocast must not freeze a run's weights within a slice.

autocast keeps a bf16 copy of each trainable leaf tensor for the life of its region; the
optimizer updates the float32 weights in place without invalidating it. The executor runs a
whole slice (several optimizer steps) in one region, so with that cache on, every forward after a
slice's first step saw the slice's starting LoRA weights (found on an H200: a run's losses
depended on where its slices were cut). The CUDA path is run here on the CPU by turning on the
executor's own bf16 switch; CPU autocast has the same cache.
"""

from __future__ import annotations

from peft import LoraConfig
from trl import SFTConfig

from actors.engine.executor import Executor
from actors.engine.spec import RunSpec
from policies.chunking import ChunkPlan
from rf_ray.toy import load_toy_model, sft_dataset

STEPS, BATCH = 6, 8


def _spec(tmp_path):
    args = SFTConfig(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=BATCH, learning_rate=3e-2,
        num_train_epochs=1, logging_steps=1, max_length=64, report_to="none", use_cpu=True,
        bf16=False, seed=5, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    lora = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=["q_proj"])
    return RunSpec(
        run_id=1, model_key="toy", model_config=None, trainer_type="SFT", trl_args=args,
        lora_config=lora, plan=ChunkPlan(BATCH * STEPS, BATCH, 1, num_chunks=2), seed=3,
    )  # fmt: skip


def _losses(tmp_path, cuts):
    data = sft_dataset(BATCH * STEPS, seed=3)
    executor = Executor(lambda _: load_toy_model(), data, device="cpu")
    executor.use_bf16 = True  # the CUDA path's autocast, on the CPU
    executor.add_run(_spec(tmp_path))
    return [m["loss"] for end in cuts for m in executor.run_slice(1, end).step_metrics]


def test_a_run_trains_the_same_in_one_bf16_slice_or_in_several(tmp_path):
    whole = _losses(tmp_path, [STEPS])
    cut = _losses(tmp_path, [2, 4, STEPS])
    assert whole == cut
    # and it does train within a slice: the loss moves after the first step
    assert len(set(whole)) == STEPS
