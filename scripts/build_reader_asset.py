"""Build ``rf_ray/assets/tiny-reader``: a tiny Llama (the toy tokenizer) that answers a key's
value when the fact is in its context, for ``examples/rag_eval.py``.

    .venv/bin/python scripts/build_reader_asset.py     # a few minutes on one CPU core

Trained from scratch on the fact corpus's format (``rf_ray.evals.toy``): a context of a few
facts ``"k q = 42 ."`` then a question ``"k q ="``; the loss is on the answer only. It learns to
copy the value that follows the question's key in the context, so it answers right only when
retrieval put the right fact in its context. Deterministic (fixed seeds, one thread).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from rf_ray import toy
from rf_ray.evals.toy import LETTERS, TINY_READER

SHAPE = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 256,
}


def example(rng: random.Random) -> tuple[str, str]:
    facts = [(rng.choice(LETTERS), rng.choice(LETTERS), str(rng.randrange(100)))
             for _ in range(rng.randint(2, 8))]  # fmt: skip
    a, b, value = rng.choice(facts)
    context = " ".join(f"{x} {y} = {v} ." for x, y, v in facts)
    messages = [{"role": "user", "content": f"{context} {a} {b} ="}]
    return messages, value


def batch(rng: random.Random, tokenizer, size: int) -> dict[str, torch.Tensor]:
    rows, labels = [], []
    for _ in range(size):
        messages, value = example(rng)
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer = tokenizer(f" {value}", add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        rows.append(ids + answer)
        labels.append([-100] * len(ids) + answer)
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "labels": torch.tensor([x + [-100] * (width - len(x)) for x in labels]),
    }


def accuracy(model, tokenizer, n: int = 200) -> float:
    rng, right = random.Random(99), 0
    for _ in range(n):
        messages, value = example(rng)
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        out = model.generate(
            ids, max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        right += tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip() == value
    return right / n


def main(steps: int = 3000) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(toy.TOY_MODEL_PATH)
    ids = {k: getattr(tokenizer, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    config = LlamaConfig(vocab_size=len(tokenizer), **SHAPE, **ids)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.05)
    rng = random.Random(0)
    for step in range(steps):
        loss = model(**batch(rng, tokenizer, 64)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad()
        if step % 250 == 0:
            print(step, round(float(loss), 3), flush=True)
    model.eval()
    acc = accuracy(model, tokenizer)
    print("accuracy with the fact in context:", acc)
    out = Path(TINY_READER)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(
        "# rf-ray/tiny-reader\n\nA tiny Llama (the toy tokenizer) trained from scratch to "
        "answer a key's value from the facts in its context "
        "(`scripts/build_reader_asset.py`).\n\n```json\n"
        + json.dumps({"shape": SHAPE, "steps": steps, "accuracy_fact_in_context": acc}, indent=2)
        + "\n```\n"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000)
