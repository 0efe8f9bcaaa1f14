"""Generation metrics inside the executor (no Ray): at a chunk end each run generates with its
own adapter, a fused group generates in one batch, and a failing metric function fails only its
run, naming the function."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig
from transformers import GenerationConfig
from trl import SFTConfig

from actors.engine.executor import Executor
from actors.engine.gen_eval import GenerationEval
from actors.engine.spec import RunSpec
from actors.storage.layout import ExperimentDir, RunDir
from policies.chunking import ChunkPlan
from policies.errors import RunFailedError
from rf_ray.metrics import MetricSet
from rf_ray.toy import load_toy_model, sft_dataset, sft_eval_dataset

SEED = 7
GEN = {"max_new_tokens": 6, "do_sample": False}


class _Config:  # the part of a RunConfig the executor reads for generation
    generation_config = GEN


def _spec(tmp_path, run_id, lr, metrics_fn=None):
    args = SFTConfig(
        output_dir=str(ExperimentDir(tmp_path).run(run_id).path), per_device_train_batch_size=4,
        gradient_accumulation_steps=1, learning_rate=lr, num_train_epochs=1, logging_steps=1,
        max_length=48, report_to="none", use_cpu=True, bf16=False, seed=11 + run_id,
        save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    return RunSpec(
        run_id=run_id, model_key="toy", model_config=_Config(), trainer_type="SFT",
        trl_args=args, lora_config=lora, plan=ChunkPlan(16, 4, 1, num_chunks=2), seed=SEED,
        generation_eval=GenerationEval(metrics_fn or MetricSet(("rougeL", "exact_match")), 6),
    )  # fmt: skip


def _boom(predictions, references, prompts):
    raise ZeroDivisionError("boom")


@pytest.fixture(scope="module")
def fused_chunk(tmp_path_factory):
    """Three runs, one fused chunk with evaluation; run 3's metric function raises."""
    tmp = tmp_path_factory.mktemp("gen")
    executor = Executor(lambda _: load_toy_model(), sft_dataset(16), sft_eval_dataset(8), "cpu")
    specs = [_spec(tmp, 1, 5e-3), _spec(tmp, 2, 1e-4), _spec(tmp, 3, 1e-3, _boom)]
    for spec in specs:
        executor.add_run(spec)
    outcomes = executor.run_fused([(s.run_id, s.plan.chunk_bounds(0)[1], True) for s in specs])
    return executor, specs, outcomes


def _alone_predictions(executor, spec):
    """What the run's adapter generates for the eval prompts on its own (plain generate)."""
    entry = executor.bases["toy"]
    model, tok = entry.model, entry.tokenizer
    model.set_adapter(spec.adapter_name)
    model.eval()
    out = []
    for prompt in sft_eval_dataset(8)["prompt"][:6]:
        ids = tok(prompt, return_tensors="pt")
        gen = model.generate(
            **ids,
            generation_config=GenerationConfig(
                **GEN, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
            ),
        )
        out.append(tok.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    model.train()
    return [p.strip() for p in out]


def test_fused_chunk_end_logs_each_runs_generation_metrics(fused_chunk):
    executor, specs, outcomes = fused_chunk
    for spec in specs[:2]:
        result = outcomes[spec.run_id]
        assert result.fused_with == 3
        metrics = result.eval_metrics
        assert {"eval_loss", "rougeL", "exact_match", "gen_seconds"} <= set(metrics)
        samples = json.loads(samples_file(spec).read_text())
        assert samples["metric_names"] == ["exact_match", "rougeL"]
        assert len(samples["samples"]) == 6
        # Each run's generations are its own adapter's, as generate alone gives them.
        predictions = [s["generation"] for s in samples["samples"]]
        assert predictions == _alone_predictions(executor, spec)
        references = [s["reference"] for s in samples["samples"]]
        assert metrics["rougeL"] == pytest.approx(
            MetricSet(("rougeL",))(predictions, references, [])["rougeL"]
        )


def samples_file(spec):
    return RunDir(spec.trl_args.output_dir).samples_file


def test_a_raising_metric_function_fails_only_its_run_naming_it(fused_chunk):
    _, specs, outcomes = fused_chunk
    error = outcomes[3]
    assert isinstance(error, RunFailedError)
    assert "eval_metrics_fn _boom raised ZeroDivisionError('boom')" in str(error)
    assert not samples_file(specs[2]).exists()


def test_time_sliced_chunk_end_generates_too(fused_chunk):
    executor, specs, _ = fused_chunk
    spec = specs[0]
    result = executor.run_slice(spec.run_id, spec.plan.chunk_bounds(1)[1], evaluate=True)
    assert "rougeL" in result.eval_metrics
    samples = json.loads(samples_file(spec).read_text())
    assert samples["step"] == spec.plan.chunk_bounds(1)[1]
    assert [s["generation"] for s in samples["samples"]] == _alone_predictions(executor, spec)
    with pytest.raises(RunFailedError, match="eval_metrics_fn _boom"):
        executor.run_slice(3, specs[2].plan.chunk_bounds(0)[1], evaluate=True)
    assert torch.is_grad_enabled()


# --------------------------------------------------------------------------- eval-set formats
@pytest.mark.parametrize(
    ("row", "prompt", "reference"),
    [
        ({"prompt": "add: 1 2 =", "completion": " 3"}, "add: 1 2 =", " 3"),
        (
            {
                "messages": [
                    {"role": "user", "content": "copy: a"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            [{"role": "user", "content": "copy: a"}],
            "a",
        ),
        ({"prompt": "sort: 2 1 =", "chosen": " 1 2", "rejected": " 2 1"}, "sort: 2 1 =", " 1 2"),
        (
            {
                "prompt": [{"role": "user", "content": "q"}],
                "completion": [{"role": "assistant", "content": "r"}],
            },
            [{"role": "user", "content": "q"}],
            "r",
        ),
    ],
)
def test_prompts_and_references_come_from_the_known_columns(row, prompt, reference):
    from actors.engine.gen_eval import prompt_and_reference

    assert prompt_and_reference(row) == (prompt, reference)


def test_a_prompts_fn_reads_other_columns_and_chat_prompts_use_the_template():
    from actors.engine.gen_eval import encode_prompts, prompt_and_reference

    row = {"question": "reverse: a b", "answer": "b a"}
    assert prompt_and_reference(row, lambda r: (r["question"], r["answer"])) == (
        "reverse: a b",
        "b a",
    )
    with pytest.raises(ValueError, match=r"columns \['answer', 'question'\].*eval_prompts_fn"):
        prompt_and_reference(row)
    _, tok = load_toy_model()
    chat = [{"role": "user", "content": "copy: a b"}]
    ids, mask = encode_prompts(tok, ["copy: a b", chat])
    assert ids.shape == mask.shape
    assert mask[0].sum() < mask[1].sum()  # left-padded to the longer chat prompt
    assert mask[0, 0] == 0
    assert mask[:, -1].tolist() == [1, 1]
    text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert ids[1][mask[1].bool()].tolist() == tok(text, add_special_tokens=False)["input_ids"]
    assert int((ids[1] == tok.bos_token_id).sum()) == 1  # the template's, not a second one


@pytest.mark.parametrize(
    ("row", "prompt", "reference"),
    [
        ({"input": "copy: a b", "output": "a b"}, "copy: a b", "a b"),
        ({"instruction": "sort: 2 1", "response": "1 2", "intent": "x"}, "sort: 2 1", "1 2"),
    ],
)
def test_rapidfires_other_prompt_columns_are_read(row, prompt, reference):
    from actors.engine.gen_eval import prompt_and_reference

    assert prompt_and_reference(row) == (prompt, reference)


def test_rapidfires_prompt_settings_shape_the_prompts_not_generate():
    """RapidFire's callback pops max_input_length, truncation_side and add_generation_prompt
    from generation_config (they are not generate() keywords) and drops use_cache."""
    from actors.engine.gen_eval import PROMPT_SETTINGS, encode_prompts

    _, tok = load_toy_model()
    chat = [{"role": "user", "content": "copy: a b c d"}]
    full, _ = encode_prompts(tok, [chat])
    tail, _ = encode_prompts(tok, [chat], {"max_input_length": 3})
    head, _ = encode_prompts(tok, [chat], {"max_input_length": 3, "truncation_side": "right"})
    bare, _ = encode_prompts(tok, [chat], {"add_generation_prompt": False})
    assert tail[0].tolist() == full[0, -3:].tolist()
    assert head[0].tolist() == full[0, :3].tolist()
    assert bare.shape[1] < full.shape[1]  # no assistant cue
    assert set(PROMPT_SETTINGS) == {
        "max_input_length", "truncation_side", "add_generation_prompt", "use_cache"
    }  # fmt: skip
