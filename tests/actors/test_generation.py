"""Multi-adapter generation (``actors.engine.generation.generate_multi``) against each adapter's own
``model.generate``: one batched call must give every request what it would get alone.

Greedy: identical tokens. Sampling: each request draws from its own generator in the order its
own ``generate`` draws from the global RNG, so the tokens are identical too when ``generate``
alone is seeded with the generator's starting state.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GenerationConfig

from actors.engine.gen_eval import encode_prompts
from actors.engine.generation import GenRequest, generate_alone, generate_multi
from rf_ray.toy import load_toy_model, sft_eval_dataset

RANKS = {"run_1": 2, "run_2": 4, "run_3": 8}


@pytest.fixture(scope="module")
def model_and_tokenizer():
    base, tokenizer = load_toy_model()
    model = None
    for i, (name, r) in enumerate(RANKS.items()):
        torch.manual_seed(100 + i)
        lora = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=2 * r,
                          target_modules=["q_proj", "v_proj", "up_proj"])  # fmt: skip
        if model is None:
            model = get_peft_model(base, lora, adapter_name=name)
        else:
            model.add_adapter(name, lora)
    # Fresh LoRA B matrices are zero: give every adapter weights of its own, so that a row
    # served by the wrong adapter generates something else.
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for pname, p in model.named_parameters():
            if "lora_B" in pname:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    model.eval()
    tokenizer.padding_side = "left"
    return model, tokenizer


def _prompts(tokenizer, start, n):
    texts = sft_eval_dataset(32)["prompt"][start : start + n]
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=True)


def _alone(model, req, seed=None):
    model.set_adapter(req.adapter)
    if seed is not None:
        torch.manual_seed(seed)
    return model.generate(
        input_ids=req.input_ids, attention_mask=req.attention_mask,
        generation_config=req.generation_config,
    )  # fmt: skip


def _config(tokenizer, **kw):
    return GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **kw
    )


class _CountingGenerate:
    """Counts the model's ``generate`` calls (the batched path makes one for all requests)."""

    def __init__(self, model):
        self.model, self.calls = model, 0
        self.original = model.generate

    def __enter__(self):
        def counted(*args, **kwargs):
            self.calls += 1
            return self.original(*args, **kwargs)

        self.model.generate = counted
        return self

    def __exit__(self, *exc):
        del self.model.generate


def test_greedy_matches_each_adapter_alone(model_and_tokenizer):
    model, tok = model_and_tokenizer
    requests = []
    for i, (name, new) in enumerate(zip(RANKS, (12, 5, 9))):
        enc = _prompts(tok, 3 * i, 2 + i)  # different row counts and prompt widths
        requests.append(
            GenRequest(
                name,
                enc["input_ids"],
                enc["attention_mask"],
                _config(tok, max_new_tokens=new, do_sample=False),
                None,
            )
        )
    with _CountingGenerate(model) as counter:
        outs = generate_multi(model, requests)
    assert counter.calls == 1  # one batched generate for the three adapters
    alone = [_alone(model, r) for r in requests]
    for req, got, want in zip(requests, outs, alone):
        assert torch.equal(got, want), req.adapter
    # The adapters really differ: the same prompts under another adapter generate other tokens.
    swapped = GenRequest("run_3", requests[0].input_ids, requests[0].attention_mask,
                         requests[0].generation_config, None)  # fmt: skip
    assert not torch.equal(_alone(model, swapped), alone[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampling_uses_each_runs_generator_like_generate_alone(model_and_tokenizer, seed):
    model, tok = model_and_tokenizer
    settings = [
        {"do_sample": True, "temperature": 0.7, "top_k": 20, "max_new_tokens": 10},
        {"do_sample": False, "max_new_tokens": 6},
        {"do_sample": True, "top_p": 0.9, "repetition_penalty": 1.3, "max_new_tokens": 8},
    ]
    requests = []
    for i, (name, kw) in enumerate(zip(RANKS, settings)):
        enc = _prompts(tok, 4 * i, 3)
        gen = torch.Generator().manual_seed(1000 * seed + i) if kw["do_sample"] else None
        requests.append(GenRequest(name, enc["input_ids"], enc["attention_mask"],
                                   _config(tok, **kw), gen))  # fmt: skip
    with _CountingGenerate(model) as counter:
        outs = generate_multi(model, requests)
    assert counter.calls == 1
    for i, (req, got) in enumerate(zip(requests, outs)):
        want = _alone(model, req, seed=1000 * seed + i if req.generator is not None else None)
        assert torch.equal(got, want), req.adapter
        if req.generator is not None:
            # The generator advanced exactly as the global RNG did in generate alone.
            assert torch.equal(req.generator.get_state(), torch.get_rng_state())


def test_unbatchable_settings_fall_back_to_their_own_generate(model_and_tokenizer):
    model, tok = model_and_tokenizer
    enc = _prompts(tok, 0, 2)
    beam = GenRequest(
        "run_2",
        enc["input_ids"],
        enc["attention_mask"],
        _config(tok, max_new_tokens=5, num_beams=2, do_sample=False),
        None,
    )
    greedy = GenRequest(
        "run_1",
        enc["input_ids"],
        enc["attention_mask"],
        _config(tok, max_new_tokens=5, do_sample=False),
        None,
    )
    with _CountingGenerate(model) as counter:
        outs = generate_multi(model, [beam, greedy])
    assert counter.calls == 2  # the beam-search request alone, the other batched
    assert torch.equal(outs[0], _alone(model, beam))
    assert torch.equal(outs[1], _alone(model, greedy))


def test_bad_request_shapes_are_refused(model_and_tokenizer):
    model, tok = model_and_tokenizer
    enc = _prompts(tok, 0, 2)
    bad = GenRequest(
        "run_1",
        enc["input_ids"],
        enc["attention_mask"][:, 1:],
        _config(tok, max_new_tokens=3),
        None,
    )
    with pytest.raises(ValueError, match=r"requests\[0\] \(run_1\)"):
        generate_multi(model, [bad])


def test_a_quantized_base_generates_each_run_alone():
    """On a bitsandbytes-quantized base PEFT's LoRA layers are not ``lora.Linear``, which
    ``segmented_lora`` patches: batching two adapters would give both the active one's output.
    ``generate_multi`` then generates each request alone, with its own adapter."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from actors.engine.generation import segments_reach_every_lora_layer
    from rf_ray.toy import TOY_MODEL_PATH

    base = AutoModelForCausalLM.from_pretrained(
        TOY_MODEL_PATH, quantization_config={"load_in_4bit": True}
    )
    lora = {"task_type": "CAUSAL_LM", "r": 4, "target_modules": ["q_proj", "v_proj"]}
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(**lora, init_lora_weights=False), adapter_name="a")
    model.add_adapter("b", LoraConfig(**lora, init_lora_weights=False, lora_alpha=64))
    assert not segments_reach_every_lora_layer(model)
    _, tok = load_toy_model()
    ids, mask = encode_prompts(tok, ["copy: a b c =", "reverse: x y ="])
    config = GenerationConfig(max_new_tokens=5, do_sample=False, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)  # fmt: skip
    requests = [GenRequest(name, ids, mask, config) for name in ("a", "b")]
    together = generate_multi(model, requests)
    for request, out in zip(requests, together):
        assert torch.equal(out, generate_alone(model, request))
    assert not torch.equal(together[0], together[1])  # the two adapters do differ
