"""Durable checkpoints: safetensors + JSON only, and a run restored from one continues exactly."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model_state_dict
from trl import SFTConfig

from actors.engine import snapshot
from actors.engine.executor import Executor
from actors.engine.spec import RunSpec
from actors.storage import checkpoint
from actors.storage.layout import RunDir
from policies.chunking import ChunkPlan
from rf_ray.toy import load_toy_model, sft_dataset


def _spec(tmp_path, plan, optim="adamw_torch"):
    args = SFTConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=5e-3,
        num_train_epochs=1, max_length=48, report_to="none", use_cpu=True, bf16=False, seed=3,
        save_strategy="no", logging_steps=1, disable_tqdm=True, optim=optim,
    )  # fmt: skip
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.1)
    return RunSpec(run_id=1, model_key="toy", model_config=None, trainer_type="SFT",
                   trl_args=args, lora_config=lora, plan=plan, seed=5)  # fmt: skip


NO_BNB = importlib.util.find_spec("bitsandbytes") is None


# bitsandbytes keeps its 8-bit optimizer state in a nested dict (RapidFire's notebooks use it).
@pytest.mark.parametrize(
    "optim",
    ["adamw_torch", pytest.param("adamw_8bit", marks=pytest.mark.skipif(NO_BNB, reason="bnb"))],
)
def test_restored_run_continues_bit_identically(tmp_path, optim):
    data = sft_dataset(32, seed=2)
    plan = ChunkPlan(32, 4, 1, num_chunks=2)  # 8 steps, chunks of 4
    first = Executor(lambda _: load_toy_model(), data, device="cpu")
    first.add_run(_spec(tmp_path, plan, optim))
    first.run_slice(1, 4)
    record = first.registry[1]
    path = checkpoint.save(snapshot.capture(record, first.bases["toy"].model), tmp_path / "run")
    want = [m["loss"] for m in first.run_slice(1, 8).step_metrics]
    want_w = get_peft_model_state_dict(first.bases["toy"].model, adapter_name="run_1")

    second = Executor(lambda _: load_toy_model(), data, device="cpu")
    second.add_run(_spec(tmp_path, plan, optim), checkpoint.load(path))
    assert second.registry[1].steps_done == 4
    got = [m["loss"] for m in second.run_slice(1, 8).step_metrics]
    got_w = get_peft_model_state_dict(second.bases["toy"].model, adapter_name="run_1")
    assert got == want
    for k, v in want_w.items():
        torch.testing.assert_close(got_w[k], v, rtol=0, atol=0)


def test_checkpoint_is_safetensors_and_json_only_and_replaced_atomically(tmp_path):
    data = sft_dataset(16, seed=2)
    ex = Executor(lambda _: load_toy_model(), data, device="cpu")
    ex.add_run(_spec(tmp_path, ChunkPlan(16, 4, 1, num_chunks=2)))
    for end in (2, 4):
        ex.run_slice(1, end)
        last = checkpoint.save(
            snapshot.capture(ex.registry[1], ex.bases["toy"].model), tmp_path / "run"
        )
    kept = sorted(p.name for p in RunDir(tmp_path / "run").checkpoints_dir.iterdir())
    assert kept == ["step-00000004"]  # older one replaced, no temp dirs left behind
    names = sorted(p.name for p in last.iterdir())
    assert names == ["adapter.safetensors", "optimizer.safetensors", "state.json"]
    meta = json.loads((last / "state.json").read_text())
    assert meta["steps_done"] == 4
    assert meta["run_id"] == 1
