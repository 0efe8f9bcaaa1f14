"""QLoRA on a CUDA GPU: one shared 4-bit base (bitsandbytes), each run's LoRA adapter trained on
it in turn, evaluated between slices, its generations its own (issue 22 item 2). No Ray.

Written for CUDA and skipped without it: on a CPU, ``run_fit`` loads such a base unquantized
and says so (``rf_ray.compat.check_requirements``; bitsandbytes' CPU kernels have no backward,
and an adapter trained after an evaluation on them stops learning).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig

from actors.engine.executor import Executor
from actors.engine.gen_eval import GenerationEval
from actors.engine.spec import RunSpec
from policies.chunking import ChunkPlan
from rf_ray.metrics import MetricSet
from rf_ray.toy import TOY_MODEL_PATH, sft_dataset, sft_eval_dataset

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes"),
]

QUANTIZATION = {
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_compute_dtype": "bfloat16",
    "bnb_4bit_use_double_quant": True,
}
LOADS: list[int] = []


class _Config:
    generation_config = {"max_new_tokens": 6, "do_sample": False}


def load_4bit(_config):
    LOADS.append(1)
    model = AutoModelForCausalLM.from_pretrained(
        TOY_MODEL_PATH, quantization_config=QUANTIZATION, device_map={"": 0}
    )
    return model, AutoTokenizer.from_pretrained(TOY_MODEL_PATH)


def _spec(tmp_path, run_id, lr, optim="adamw_torch"):
    args = SFTConfig(
        output_dir=str(tmp_path / str(run_id)), per_device_train_batch_size=4, learning_rate=lr,
        num_train_epochs=1, max_length=48, report_to="none", bf16=False, seed=run_id,
        save_strategy="no", optim=optim,
    )  # fmt: skip
    lora = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=["q_proj"])
    return RunSpec(
        run_id=run_id, model_key="toy-4bit", model_config=_Config(), trainer_type="SFT",
        trl_args=args, lora_config=lora, plan=ChunkPlan(16, 4, 1, num_chunks=2), seed=0,
        generation_eval=GenerationEval(MetricSet(("rougeL",)), 4),
    )  # fmt: skip


def _lora_b(executor, run_id):
    model = executor.bases["toy-4bit"].model
    name = f"run_{run_id}"
    return {n: p.detach().float().clone() for n, p in model.named_parameters()
            if "lora_B" in n and f".{name}." in n}  # fmt: skip


def test_runs_train_in_turn_on_one_4bit_base_with_evaluations_between(tmp_path):
    LOADS.clear()
    executor = Executor(load_4bit, sft_dataset(16), sft_eval_dataset(4), "cuda")
    specs = [_spec(tmp_path, 1, 2e-3), _spec(tmp_path, 2, 1e-3, optim="paged_adamw_8bit")]
    for spec in specs:
        executor.add_run(spec)
    assert LOADS == [1]  # one base for both runs
    reason = executor.fusable(1)
    assert reason is not None
    assert "Linear4bit" in reason  # fused slices need plain Linear LoRA layers: time-sliced
    for chunk in range(2):
        for spec in specs:  # each run after the other's evaluation (the CPU kernels fail here)
            before = _lora_b(executor, spec.run_id)
            result = executor.run_slice(spec.run_id, spec.plan.chunk_bounds(chunk)[1], True)
            after = _lora_b(executor, spec.run_id)
            assert all(torch.isfinite(torch.tensor(m["loss"])) for m in result.step_metrics)
            assert all(m["grad_norm"] > 0 for m in result.step_metrics), result.step_metrics
            assert any(not torch.equal(before[k], after[k]) for k in after), spec.run_id
            assert "rougeL" in result.eval_metrics  # generated alone on the quantized base
    base = executor.bases["toy-4bit"].raw_model
    assert type(base.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
