"""The evals step on a real executor (toy model, no Ray): pipelines of a shard generate in one
batched call and get what each would alone; a metric function that raises fails its pipeline
only, named; a shard's state is durable and a repeated grant returns its cached outcome."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from datasets import Dataset

from actors.engine.evals.engine import PipelineEngine, read_state
from actors.engine.evals.spec import GeneratorModel, GeneratorSpec, PipelineSpec
from actors.engine.executor import Executor
from actors.storage.layout import RunDir
from policies.chunking import ChunkPlan
from rf_ray.toy import TOY_MODEL_NAME, default_create_model_fn

ROWS = [{"q": f"copy: {a} {b} =", "answer": f"{a} {b}"} for a, b in zip("abcdefgh", "ijklmnop")]


def prompts(batch, rag, prompt_manager):
    return {**batch, "prompts": batch["q"]}


def metrics(batch):
    hits = [float(g.strip() == a) for g, a in zip(batch["generated_text"], batch["answer"])]
    em = {"value": sum(hits) / len(hits), "is_algebraic": True, "value_range": (0, 1)}
    return {"Total": {"value": len(hits)}, "em": em}


def accumulate(agg):
    n = sum(m["value"] for m in agg["Total"])
    em = sum(m["value"] * t["value"] for m, t in zip(agg["em"], agg["Total"])) / n
    return {"Total": {"value": n}, "em": {"value": em, "is_algebraic": True, "value_range": (0, 1)}}


def broken(batch):
    raise KeyError("ground_truth")


def spec(run_id: int, generation: dict, seed: int | None = None, compute=metrics) -> PipelineSpec:
    return PipelineSpec(
        run_id=run_id, model_key="toy", model_config=GeneratorModel(TOY_MODEL_NAME),
        plan=ChunkPlan(len(ROWS), 1, 1, 2), seed=7,
        generator=GeneratorSpec("local", TOY_MODEL_NAME, generation=generation, seed=seed),
        batch_size=3, preprocess_fn=prompts, compute_metrics_fn=compute,
        accumulate_metrics_fn=accumulate,
    )  # fmt: skip


GREEDY = {"max_new_tokens": 4, "do_sample": False}
SAMPLED = {"max_new_tokens": 4, "do_sample": True, "temperature": 0.9, "top_p": 0.9}


@pytest.fixture
def engine() -> PipelineEngine:
    executor = Executor(default_create_model_fn, Dataset.from_list(ROWS), device="cpu")
    return PipelineEngine(executor, executor.train_dataset)


def test_a_batched_shard_equals_each_pipeline_alone(engine: PipelineEngine, tmp_path) -> None:
    specs = [spec(1, GREEDY), spec(2, SAMPLED, seed=3), spec(3, {**GREEDY, "max_new_tokens": 2})]
    for s in specs:
        engine.add(s)
    together = engine.run_group({s.run_id: (0, 4, str(tmp_path / str(s.run_id))) for s in specs})
    assert engine.executor.stats.base_loads == {"toy": 1}
    for s in specs:
        alone = PipelineEngine(engine.executor, engine.dataset)
        alone.add(s)
        (out,) = alone.run_group({s.run_id: (0, 4, str(tmp_path / f"alone{s.run_id}"))}).values()
        assert engine.pipelines[s.run_id].results["generated_text"] == \
            alone.pipelines[s.run_id].results["generated_text"]  # fmt: skip
        assert out.eval_metrics["em"] == together[s.run_id].eval_metrics["em"]
    short = engine.pipelines[3].results["generated_text"]
    assert all(len(t.split()) <= 2 for t in short)


def test_a_raising_metric_fails_only_its_pipeline_named(engine: PipelineEngine, tmp_path) -> None:
    engine.add(spec(1, GREEDY))
    engine.add(spec(2, GREEDY, compute=broken))
    out = engine.run_group({1: (0, 4, str(tmp_path / "1")), 2: (0, 4, str(tmp_path / "2"))})
    assert out[1].end_step == 4
    assert "Samples Processed" in out[1].eval_metrics
    assert isinstance(out[2], Exception)
    assert "pipeline 2" in str(out[2])
    assert "compute_metrics_fn (broken)" in str(out[2])
    assert "KeyError" in str(out[2])
    engine.add(spec(3, GREEDY, compute=lambda batch: None))  # forgot its return
    (out3,) = engine.run_group({3: (0, 4, str(tmp_path / "3"))}).values()
    assert isinstance(out3, Exception)
    assert "pipeline 3: its compute_metrics_fn" in str(out3)
    assert "returned NoneType None; it must return a dict" in str(out3)


def test_state_is_durable_and_a_repeated_grant_is_cached(engine: PipelineEngine, tmp_path) -> None:
    engine.add(spec(1, GREEDY))
    first = engine.run_group({1: (0, 4, str(tmp_path))})[1]
    again = engine.run_group({1: (0, 4, str(tmp_path))})[1]
    assert again is first
    assert first.checkpoint == str(RunDir(tmp_path).evals_state(4))  # where the layout says
    state = read_state(first.checkpoint)
    assert state["rows_done"] == 4
    assert state["metrics"]["Samples Processed"] == [{"value": 3}, {"value": 1}]
    assert state["cumulative"]["em"]["ci_method"] == "normal"
    restored = PipelineEngine(engine.executor, engine.dataset)
    restored.add(spec(1, GREEDY), state)
    second = restored.run_group({1: (4, 8, str(tmp_path))})[1]
    assert json.loads(Path(second.checkpoint).read_text())["rows_done"] == 8
    assert len(restored.pipelines[1].results["q"]) == 8


def test_a_pipeline_generates_with_its_adapter_resident_beside_the_base(
    engine: PipelineEngine, tmp_path
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from rf_ray.toy import load_toy_model

    model, _ = load_toy_model()
    torch.manual_seed(0)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, param in peft.named_parameters():
        if "lora_B" in name:  # a trained adapter is not zero: make this one change the output
            torch.nn.init.normal_(param, std=0.5)
    peft.save_pretrained(tmp_path / "adapter")
    with_adapter = spec(2, GREEDY)
    with_adapter.adapter = str(tmp_path / "adapter")
    engine.add(spec(1, GREEDY))
    engine.add(with_adapter)
    out = engine.run_group({1: (0, 4, str(tmp_path / "1")), 2: (0, 4, str(tmp_path / "2"))})
    assert out[1].fused_with == out[2].fused_with == 2
    base = engine.pipelines[1].results["generated_text"]
    tuned = engine.pipelines[2].results["generated_text"]
    assert base != tuned
    assert engine.executor.stats.base_loads == {"toy": 1}  # one base, the adapter beside it
    alone = PipelineEngine(engine.executor, engine.dataset)
    alone.add(dataclasses.replace(with_adapter, run_id=3))
    alone.run_group({3: (0, 4, str(tmp_path / "3"))})
    assert alone.pipelines[3].results["generated_text"] == tuned
    engine.remove(2)
    assert "pipeline_2" not in engine.executor.bases["toy"].model.peft_config


def test_a_sampled_pipeline_restored_from_its_state_draws_as_if_uninterrupted(
    engine: PipelineEngine, tmp_path
) -> None:
    sampled = spec(1, {**SAMPLED, "temperature": 1.5}, seed=3)
    engine.add(sampled)
    engine.run_group({1: (0, 4, str(tmp_path / "a"))})
    engine.run_group({1: (4, 8, str(tmp_path / "a"))})
    first = PipelineEngine(engine.executor, engine.dataset)
    first.add(sampled)
    state = read_state(first.run_group({1: (0, 4, str(tmp_path / "b"))})[1].checkpoint)
    resumed = PipelineEngine(engine.executor, engine.dataset)  # e.g. after the driver died
    resumed.add(sampled, state)
    resumed.run_group({1: (4, 8, str(tmp_path / "b"))})
    assert resumed.pipelines[1].results["generated_text"] == \
        engine.pipelines[1].results["generated_text"]  # fmt: skip
