"""DPO trained in interleaved slices equals a vanilla ``DPOTrainer.train()`` (bit-identical).

Vanilla is TRL's own usage: ``DPOTrainer(model=base, peft_config=...)``, whose reference policy
is the base with adapters disabled; rf-ray uses the same reference on its shared base.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model_state_dict
from trl import DPOConfig, DPOTrainer

from actors.engine.executor import Executor
from actors.engine.spec import RunSpec
from policies.chunking import ChunkPlan, epoch_order
from rf_ray.toy import dpo_dataset, load_toy_model

N, SEED = 40, 7
LORA = dict(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])


def _args(tmp_path, name, lr=5e-3):
    return DPOConfig(
        output_dir=str(tmp_path / name), per_device_train_batch_size=4,
        gradient_accumulation_steps=2, learning_rate=lr, num_train_epochs=1, logging_steps=1,
        report_to="none", use_cpu=True, bf16=False, seed=11, save_strategy="no",
        disable_tqdm=True, train_sampling_strategy="sequential", beta=0.1, max_length=64,
    )  # fmt: skip


def test_interleaved_dpo_equals_vanilla(tmp_path):
    data = dpo_dataset(N)
    model, tok = load_toy_model()
    torch.manual_seed(11)
    vanilla = DPOTrainer(
        model=model, peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
        args=_args(tmp_path, "vanilla"), train_dataset=data.select(epoch_order(N, SEED, 0)),
        processing_class=tok,
    )  # fmt: skip
    vanilla.train()
    history = [h for h in vanilla.state.log_history if "loss" in h]

    executor = Executor(lambda _: load_toy_model(), data, device="cpu")
    for run_id, lr in [(1, 5e-3), (2, 2e-2)]:
        executor.add_run(
            RunSpec(run_id=run_id, model_key="toy", model_config=None, trainer_type="DPO",
                    trl_args=_args(tmp_path, f"r{run_id}", lr),
                    lora_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
                    plan=ChunkPlan(N, 4, 2, num_chunks=3), seed=SEED)
        )  # fmt: skip
    steps = []
    for end in (2, 4, 5):
        for run_id in (2, 1):
            result = executor.run_slice(run_id, end)
            if run_id == 1:
                steps += result.step_metrics
    assert [m["loss"] for m in steps] == [h["loss"] for h in history]
    # TRL's DPO metrics reach the step metrics (and from there MLflow).
    for key in ("rewards/chosen", "rewards/margins", "rewards/accuracies", "logps/chosen"):
        assert [m[key] for m in steps] == [h[key] for h in history]
    got = get_peft_model_state_dict(executor.bases["toy"].model, adapter_name="run_1")
    for key, value in get_peft_model_state_dict(vanilla.model).items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)
    # The reference is the base with adapters disabled: no "ref" adapter, no second base copy.
    assert "ref" not in executor.bases["toy"].model.peft_config
    counts = executor.resident_parameter_count()
    assert counts["base"] == sum(p.numel() for p in load_toy_model()[0].parameters())
