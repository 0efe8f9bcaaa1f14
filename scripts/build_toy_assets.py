"""Rebuild rf-ray's offline toy model: ``rf_ray/assets/tiny-llama`` (weights + tokenizer).

    .venv/bin/python scripts/build_toy_assets.py            # ~2 min on one CPU core
    .venv/bin/python scripts/build_toy_assets.py --steps 200 --out /tmp/tiny  # a quick try

Users never run this: the shipped files are what ``rf_ray.toy.load_toy_model`` loads. Run it
only when the vocabulary or the model shape changes, and commit the result (< 1 MB).

What it does:
1. builds a word-level tokenizer over ``rf_ray.toy.TOY_VOCAB_WORDS`` (whitespace-split words,
   ``<s>`` prepended, TRL-compatible chat template);
2. pretrains a tiny ``LlamaForCausalLM`` from scratch with a plain torch loop on a synthetic
   corpus of the toy task family in which every answer is *scrambled* (the right tokens in a
   random order, a random sum), plus counting runs and repeated spans. The base thus learns the
   format and which tokens an answer uses, but not the rule, so that SFT has loss to remove
   (the model card records its held-out loss and exact match, near chance);
3. saves both with ``save_pretrained`` (safetensors) and writes a small model card.

Deterministic: fixed seeds, ``torch.use_deterministic_algorithms``, one thread.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from rf_ray import toy

logger = logging.getLogger("build_toy_assets")

MODEL_SHAPE = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 256,
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {word: i for i, word in enumerate(toy.TOY_VOCAB_WORDS)}
    specials = toy.TOY_SPECIAL_TOKENS
    core = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk_token"]))
    # Whitespace only (not `Whitespace`, which would split "add:" into "add" ":"), so decoding
    # (which joins words with one space) gives back the text up to whitespace.
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bos = specials["bos_token"]
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        **specials,
        additional_special_tokens=list(toy.ROLE_TOKENS),
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
        padding_side="right",
        chat_template=toy.TOY_CHAT_TEMPLATE,
    )


# --- pretraining corpus ------------------------------------------------------------------------


def _scrambled_task(rng: random.Random) -> list[str]:
    task = rng.choice(toy.TOY_TASKS)
    args, answer = toy._TASK_FNS[task](rng)
    # A random sum, or the right tokens in a random order.
    wrong = [str(rng.randint(0, 98))] if task == "add" else rng.sample(answer, len(answer))
    return [f"{task}:", *args, "=", *wrong]


def _run(rng: random.Random) -> list[str]:
    words = toy.NUMBERS if rng.random() < 0.5 else toy.LETTERS
    length = rng.randint(3, 10)
    start = rng.randint(0, len(words) - length)
    run = list(words[start : start + length])
    return run[::-1] if rng.random() < 0.3 else run


def _repeat(rng: random.Random) -> list[str]:
    pool = toy.LETTERS + toy.NUMBERS[:10]
    span = rng.choices(pool, k=rng.randint(2, 5))
    return span * rng.randint(2, 3)


def corpus_line(rng: random.Random) -> list[str]:
    r = rng.random()
    if r < 0.6:
        return _scrambled_task(rng)
    if r < 0.8:
        return _run(rng)
    if r < 0.95:
        return _repeat(rng)
    return rng.choices(toy.LETTERS + toy.NUMBERS, k=rng.randint(3, 10))


def batch(rng: random.Random, tokenizer, size: int) -> dict[str, torch.Tensor]:
    texts = [" ".join(corpus_line(rng)) + " " + tokenizer.eos_token for _ in range(size)]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "labels": labels,
    }


# --- how good is the base on the real tasks ----------------------------------------------------


@torch.no_grad()
def sft_eval(model, tokenizer, n: int = 256) -> dict[str, float]:
    """Completion-only loss and greedy exact match on held-out SFT prompts."""
    model.eval()
    data = toy.sft_eval_dataset(n)
    losses, hits = [], 0
    for prompt, completion in zip(data["prompt"], data["completion"]):
        p = tokenizer(prompt)["input_ids"]
        full = tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
        ids = torch.tensor([full])
        labels = ids.clone()
        labels[0, : len(p)] = -100
        losses.append(model(input_ids=ids, labels=labels).loss.item())
        out = model.generate(
            torch.tensor([p]),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        answer = tokenizer.decode(out[0, len(p) :], skip_special_tokens=True)
        hits += answer.split() == completion.split()
    model.train()
    return {"completion_loss": sum(losses) / len(losses), "exact_match": hits / len(losses)}


def pretrain(tokenizer, steps: int, batch_size: int, lr: float, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **MODEL_SHAPE,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:  # linear warmup, cosine to 10%
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    rng = random.Random(seed)
    start, running = time.time(), None
    for step in range(steps):
        loss = model(**batch(rng, tokenizer, batch_size)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 250 == 0 or step == steps - 1:
            logger.info("step %5d  loss %.3f  (%.0fs)", step, running, time.time() - start)
    model.eval()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=toy.TOY_MODEL_PATH)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # One thread: the matmuls are tiny, and two threads on a busy 2-core box stall on each other.
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # cheap insurance: denormals make CPU matmuls crawl
    torch.use_deterministic_algorithms(True)

    tokenizer = build_tokenizer()
    model = pretrain(tokenizer, args.steps, args.batch_size, args.lr, args.seed)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    held_out = sft_eval(model, tokenizer)
    logger.info("base on held-out SFT prompts: %s", held_out)

    if args.out.exists():
        shutil.rmtree(args.out)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    n_params = sum(p.numel() for p in model.parameters())
    card = {
        "name": toy.TOY_MODEL_NAME,
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "pretraining": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr},
        "base_on_held_out_sft": {k: round(v, 4) for k, v in held_out.items()},
    }
    (args.out / "README.md").write_text(
        "# rf-ray/tiny-llama\n\n"
        "A ~0.1 M parameter Llama for rf-ray's offline tests and examples. Not a useful model.\n"
        "Rebuild with `python scripts/build_toy_assets.py`; see `rf_ray/toy.py` for the data.\n\n"
        f"```json\n{json.dumps(card, indent=2)}\n```\n"
    )
    logger.info("wrote %s (%d parameters)", args.out, n_params)


if __name__ == "__main__":
    main()
