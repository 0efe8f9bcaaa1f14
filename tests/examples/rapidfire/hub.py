"""The hub datasets RapidFire AI's tutorial notebooks load, as small in-memory stand-ins with the
same columns, so the ports in this package run offline (``HF_HUB_OFFLINE=1``) on the toy model.

A port changes its notebook's ``from datasets import load_dataset`` into
``from tests.examples.rapidfire.hub import load_dataset`` and keeps the notebook's own
``load_dataset(...)`` lines. The rows are the toy tasks of ``rf_ray.toy`` (copy, reverse, sort,
add: what the embedded tiny Llama was built for), written into each dataset's columns:

* ``bitext/Bitext-customer-support-llm-chatbot-training-dataset``: ``flags``, ``instruction``,
  ``category``, ``intent``, ``response`` (one split, ``train``);
* ``trl-lib/ultrafeedback_binarized``: ``chosen`` and ``rejected`` (conversations of a user turn
  and an assistant turn: TRL's implicit-prompt preference format), ``score_chosen``,
  ``score_rejected``;
* ``openai/gsm8k`` (config ``main``): ``question``, ``answer`` (a working, then ``#### <n>``).
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset, DatasetDict

from rf_ray.toy import dpo_dataset, grpo_dataset, sft_dataset

ROWS = 256
"""Rows in each stand-in's train split (the ports select far fewer)."""


def _bitext(n: int) -> Dataset:
    rows = sft_dataset(n, seed=0)
    return Dataset.from_dict(
        {
            "flags": ["B"] * n,
            "instruction": rows["prompt"],
            "category": ["TOY"] * n,
            "intent": [p.split(":")[0] for p in rows["prompt"]],
            "response": [c.strip() for c in rows["completion"]],
        }
    )


def _ultrafeedback(n: int) -> Dataset:
    rows = dpo_dataset(n, seed=0)

    def chat(prompt: str, answer: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]

    return Dataset.from_dict(
        {
            "chosen": [chat(p, c.strip()) for p, c in zip(rows["prompt"], rows["chosen"])],
            "rejected": [chat(p, r.strip()) for p, r in zip(rows["prompt"], rows["rejected"])],
            "score_chosen": [9.0] * n,
            "score_rejected": [3.0] * n,
        }
    )


def _gsm8k(n: int, seed: int) -> Dataset:
    rows = grpo_dataset(n, seed=seed)
    answers = [
        f"{p.removeprefix('add: ').removesuffix(' =').replace(' ', ' + ')} = {a}\n#### {a}"
        for p, a in zip(rows["prompt"], rows["answer"])
    ]
    return Dataset.from_dict({"question": rows["prompt"], "answer": answers})


_DATASETS: dict[str, Any] = {
    "bitext/Bitext-customer-support-llm-chatbot-training-dataset": lambda: DatasetDict(
        {"train": _bitext(ROWS)}
    ),
    "trl-lib/ultrafeedback_binarized": lambda: DatasetDict(
        {"train": _ultrafeedback(ROWS), "test": _ultrafeedback(32)}
    ),
    "openai/gsm8k": lambda: DatasetDict({"train": _gsm8k(ROWS, 0), "test": _gsm8k(64, 1)}),
}


def load_dataset(path: str, name: str | None = None, split: str | None = None) -> Any:
    """``datasets.load_dataset`` for the hub datasets above, offline: a ``DatasetDict``, or one
    split with ``split=``."""
    if path not in _DATASETS:
        raise ValueError(f"{path!r} has no offline stand-in here; known: {sorted(_DATASETS)}")
    if path == "openai/gsm8k" and name != "main":
        raise ValueError(f"openai/gsm8k needs its config name 'main', got {name!r}")
    data = _DATASETS[path]()
    return data if split is None else data[split]
