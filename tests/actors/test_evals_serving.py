"""Which engine serves an RFvLLMModelConfig: vLLM where it is installed on a CUDA GPU, else the
executor's resident model (``actors.engine.evals.serving``). The rule and the vLLM arguments it
builds are checked here without vLLM; an executor that cannot honour a stored vLLM choice
serves the pipeline itself and says so once."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from datasets import Dataset

from actors.engine.evals.engine import PipelineEngine
from actors.engine.evals.serving import (
    TRANSFORMERS,
    VLLM,
    Platform,
    choose,
    engine_args,
    notes,
    sampling_args,
    select,
)
from actors.engine.evals.spec import GeneratorModel, GeneratorSpec, PipelineSpec
from actors.engine.evals.vllm_generator import usable_here
from actors.engine.executor import Executor
from policies.chunking import ChunkPlan
from rf_ray.toy import TOY_MODEL_NAME, default_create_model_fn

GPU_WITH_VLLM = Platform(vllm_installed=True, cuda=True)


def pipeline(run_id: int, model: str = TOY_MODEL_NAME, adapter: str | None = None) -> PipelineSpec:
    generator = GeneratorSpec(
        "local", model, generation={"max_new_tokens": 3, "do_sample": False}, wants_vllm=True,
        vllm_config={"model": model, "gpu_memory_utilization": 0.5},
        vllm_sampling={"temperature": 0, "max_tokens": 3},
    )  # fmt: skip
    return PipelineSpec(
        run_id=run_id, model_key=f"{model}:{{}}", model_config=GeneratorModel(model),
        plan=ChunkPlan(4, 1, 1, 2), seed=0, generator=generator, adapter=adapter,
        preprocess_fn=lambda batch, rag, pm: {**batch, "prompts": batch["q"]},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("platform", "engine", "why"),
    [
        (GPU_WITH_VLLM, VLLM, None),
        (Platform(vllm_installed=False, cuda=True), TRANSFORMERS, "vLLM is not installed"),
        (Platform(vllm_installed=True, cuda=False), TRANSFORMERS, "there is no CUDA GPU"),
        (Platform(vllm_installed=False, cuda=False), TRANSFORMERS, "vLLM is not installed"),
    ],
)
def test_vllm_serves_only_where_it_is_installed_on_a_cuda_gpu(platform, engine, why) -> None:
    assert select(pipeline(1).generator, platform) == (engine, why)


def test_api_and_plain_local_generators_are_not_given_a_choice() -> None:
    api = GeneratorSpec("api", "gpt", client={"base_url": "http://127.0.0.1:1/v1"})
    assert select(api, GPU_WITH_VLLM) == (TRANSFORMERS, None)
    assert select(GeneratorSpec("local", "m"), Platform(False, False)) == (TRANSFORMERS, None)


def _adapter(path: Path, rank: int) -> str:
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"r": rank}))
    return str(path)


def test_vllm_engines_are_shared_per_engine_arguments_and_serve_every_adapter(tmp_path) -> None:
    specs = [
        pipeline(1),
        pipeline(2, adapter=_adapter(tmp_path / "a", 4)),
        pipeline(3, adapter=_adapter(tmp_path / "b", 24)),
        pipeline(4, model="other"),
    ]
    choose(specs, GPU_WITH_VLLM)
    assert [s.generator.backend for s in specs] == [VLLM] * 4
    assert specs[0].model_key == specs[1].model_key == specs[2].model_key != specs[3].model_key
    assert specs[0].fusion_key == specs[2].fusion_key  # granted a shard together
    lora = {"enable_lora": True, "max_loras": 2, "max_lora_rank": 32}  # 24 -> vLLM's next: 32
    assert engine_args(specs[0].generator) == {
        "disable_log_stats": True, "model": TOY_MODEL_NAME, "gpu_memory_utilization": 0.5,
        **lora,
    }  # fmt: skip
    assert specs[3].generator.vllm_lora == {}  # no adapter on that model: LoRA off
    assert notes(specs) == []


def test_sampling_params_are_vllms_with_a_seed_per_eval_set_row() -> None:
    sampling = {"temperature": 0.7, "top_p": 0.9, "seed": 5}
    assert sampling_args({}, None, 0) == {"max_tokens": 16}  # vLLM's default
    first, again, other = (sampling_args(sampling, 5, row) for row in (3, 3, 4))
    assert first == again  # the same row draws alike however rows are batched or resumed
    assert first["seed"] != other["seed"]
    assert {k: first[k] for k in ("temperature", "top_p")} == {"temperature": 0.7, "top_p": 0.9}


def test_without_vllm_one_note_per_generator(tmp_path) -> None:
    specs = [pipeline(1), pipeline(2), pipeline(3, model="other")]
    choose(specs, Platform(vllm_installed=False, cuda=False))
    assert [s.generator.backend for s in specs] == [TRANSFORMERS] * 3
    lines = notes(specs)
    assert len(lines) == 2
    assert lines[0].startswith(f"RFvLLMModelConfig({TOY_MODEL_NAME}): vLLM is not installed")


@pytest.mark.skipif(usable_here() is None, reason="this machine runs vLLM on a CUDA GPU")
def test_an_executor_without_vllm_serves_a_vllm_pipeline_itself_and_says_so_once(
    caplog, tmp_path
) -> None:
    rows = [{"q": f"copy: {a} ="} for a in "abcd"]
    executor = Executor(default_create_model_fn, Dataset.from_list(rows), device="cpu")
    engine = PipelineEngine(executor, executor.train_dataset)
    specs = [pipeline(1), pipeline(2)]
    choose(specs, GPU_WITH_VLLM)  # as a driver on a GPU machine with vLLM would
    with caplog.at_level(logging.WARNING, logger="actors.engine.evals.engine"):
        for spec in specs:
            engine.add(spec)
        out = engine.run_group({1: (0, 2, str(tmp_path / "1")), 2: (0, 2, str(tmp_path / "2"))})
    said = [r for r in caplog.records if "was given vLLM" in r.getMessage()]
    assert len(said) == 1
    assert executor.stats.base_loads == {specs[0].model_key: 1}
    assert len(engine.pipelines[1].results["generated_text"]) == 2
    assert out[2].end_step == 2
