"""The offline toy: a tiny Llama, its tokenizer, and synthetic SFT / DPO / GRPO data.

rf-ray must run end to end with no network (``HF_HUB_OFFLINE=1``), in tests and in the examples.
So it ships its own base model in ``rf_ray/assets/tiny-llama`` (a ~0.1 M parameter
``LlamaForCausalLM`` with a word-level tokenizer of ~140 tokens), and this module generates the
task data that model was built for. The model was briefly pretrained on a corpus of the same task
family in which every answer was *scrambled* (right tokens, wrong order; a random sum), so it
knows the format but does not solve the tasks: LoRA fine-tuning has a clear loss to push down.
To rebuild the assets, run ``python scripts/build_toy_assets.py``.

Tasks (plain prompt-completion format, as TRL expects; the completion starts with a space so
that ``prompt + completion`` tokenizes as the two pieces do)::

    copy: q x b =     ->  " q x b"
    reverse: q x b =  ->  " b x q"
    sort: 3 1 2 =     ->  " 1 2 3"
    add: 12 7 =       ->  " 19"

Text is whitespace-separated words from :data:`TOY_VOCAB_WORDS`, so the tokenizer round-trips
any dataset string up to whitespace: ``decode(encode(s)) == " ".join(s.split())``.

    >>> from rf_ray.toy import load_toy_model, sft_dataset
    >>> model, tokenizer = load_toy_model()
    >>> sft_dataset(2)[0]  # doctest: +SKIP
    {'prompt': 'sort: 7 0 7 2 =', 'completion': ' 0 2 7 7'}
"""

from __future__ import annotations

import logging
import random
import re
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "TOY_CHAT_TEMPLATE",
    "TOY_MODEL_NAME",
    "TOY_MODEL_PATH",
    "TOY_SPECIAL_TOKENS",
    "TOY_TASKS",
    "TOY_VOCAB_WORDS",
    "arithmetic_reward",
    "default_create_model_fn",
    "dpo_dataset",
    "format_reward",
    "grpo_dataset",
    "grpo_reverse_dataset",
    "load_toy_model",
    "order_reward",
    "sft_conversational_dataset",
    "sft_dataset",
    "sft_eval_dataset",
]

logger = logging.getLogger(__name__)

TOY_MODEL_NAME = "rf-ray/tiny-llama"
TOY_MODEL_PATH = Path(__file__).resolve().parent / "assets" / "tiny-llama"

# --- vocabulary --------------------------------------------------------------------------------

TOY_SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
}
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
TOY_TASKS = ("copy", "reverse", "sort", "add")
LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")
NUMBERS = tuple(str(i) for i in range(100))
# Every word the datasets (and the pretraining corpus) may contain. Order fixes the token ids,
# so append only: the shipped tokenizer was built from this list.
TOY_VOCAB_WORDS: tuple[str, ...] = (
    *TOY_SPECIAL_TOKENS.values(),
    *ROLE_TOKENS,
    *(f"{task}:" for task in TOY_TASKS),
    "=",
    *LETTERS,
    *NUMBERS,
)

# Jinja chat template for TRL's conversational format. `{% generation %}` marks assistant
# tokens so `assistant_only_loss=True` works; the prompt rendered with `add_generation_prompt`
# is a token prefix of the full conversation, which TRL needs to find the completion.
TOY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>{% generation %} {{ message['content'] }} {{ eos_token }}{% endgeneration %} "
    "{% else %}"
    "<|{{ message['role'] }}|> {{ message['content'] }} "
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# --- model loading -----------------------------------------------------------------------------


def _is_toy(model_name: str | Path) -> bool:
    if str(model_name) == TOY_MODEL_NAME:
        return True
    try:
        return Path(model_name).resolve() == TOY_MODEL_PATH
    except (OSError, ValueError):
        return False


def _load_pretrained(
    name: str | Path, model_kwargs: dict[str, Any], tokenizer_kwargs: dict[str, Any]
) -> tuple[Any, Any]:
    # Imported here so that importing rf_ray.toy for its datasets stays cheap.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(name, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(name, **tokenizer_kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_toy_model(dtype: Any = None) -> tuple[Any, Any]:
    """Load the shipped tiny Llama and its tokenizer from :data:`TOY_MODEL_PATH`, offline.

    ``dtype`` (a ``torch.dtype`` or a string such as ``"bfloat16"``) defaults to the stored
    float32.
    """
    model_kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        model_kwargs["dtype"] = dtype
    return _load_pretrained(TOY_MODEL_PATH, model_kwargs, {"local_files_only": True})


def default_create_model_fn(model_config: Any) -> tuple[Any, Any]:
    """Build ``(model, tokenizer)`` from anything with ``model_name``, ``model_kwargs`` and
    ``tokenizer_kwargs`` attributes.

    :data:`TOY_MODEL_NAME` (or the asset path) loads the shipped toy from disk; any other name
    goes to ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` unchanged, so hub names
    work on machines that have them (cached or online).
    """
    name = model_config.model_name
    model_kwargs = dict(getattr(model_config, "model_kwargs", None) or {})
    tokenizer_kwargs = dict(getattr(model_config, "tokenizer_kwargs", None) or {})
    if _is_toy(name):
        logger.debug("Loading the toy model from %s", TOY_MODEL_PATH)
        model_kwargs.setdefault("local_files_only", True)
        tokenizer_kwargs.setdefault("local_files_only", True)
        return _load_pretrained(TOY_MODEL_PATH, model_kwargs, tokenizer_kwargs)
    return _load_pretrained(name, model_kwargs, tokenizer_kwargs)


# --- tasks -------------------------------------------------------------------------------------
# A task draws its arguments from `rng` and returns (argument words, answer words).
Example = tuple[list[str], list[str]]


def _letters(rng: random.Random) -> list[str]:
    # Distinct letters, so that reverse(x) != x and a swapped answer is always wrong.
    return rng.sample(LETTERS, rng.randint(3, 6))


def _copy(rng: random.Random) -> Example:
    args = _letters(rng)
    return args, list(args)


def _reverse(rng: random.Random) -> Example:
    args = _letters(rng)
    return args, args[::-1]


def _sort(rng: random.Random) -> Example:
    args = [str(rng.randint(0, 9)) for _ in range(rng.randint(3, 6))]
    return args, sorted(args, key=int)


def _add(rng: random.Random, high: int = 49) -> Example:
    a, b = rng.randint(0, high), rng.randint(0, high)
    return [str(a), str(b)], [str(a + b)]


_TASK_FNS: dict[str, Callable[[random.Random], Example]] = {
    "copy": _copy,
    "reverse": _reverse,
    "sort": _sort,
    "add": _add,
}


def _prompt(task: str, args: list[str]) -> str:
    return f"{task}: {' '.join(args)} ="


def _is_eval(task: str, args: list[str]) -> bool:
    # A stable hash (not Python's salted `hash`) splits the prompt space once for all seeds:
    # 1 prompt in 8 is held out, so train and eval sets are disjoint whatever their seeds.
    return zlib.crc32(_prompt(task, args).encode()) % 8 == 0


def _check(name: str, n: int, seed: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"{name}: n must be a positive int, got {n!r}")
    if not isinstance(seed, int):
        raise ValueError(f"{name}: seed must be an int, got {seed!r}")


def _examples(
    n: int, seed: int, *, held_out: bool, tasks: tuple[str, ...] = TOY_TASKS
) -> list[tuple[str, list[str], list[str]]]:
    """``n`` (task, args, answer) triples; tasks cycle in a seeded order, prompts on one side
    of the train/eval split. The seed is mixed with the split so that seed 0 of each differs."""
    rng = random.Random(f"rf-ray-toy/{seed}/{'eval' if held_out else 'train'}")
    out: list[tuple[str, list[str], list[str]]] = []
    while len(out) < n:
        task = tasks[len(out) % len(tasks)]
        args, answer = _TASK_FNS[task](rng)
        if _is_eval(task, args) == held_out:
            out.append((task, args, answer))
    rng.shuffle(out)
    return out


def _dataset(columns: dict[str, list[Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict(columns)


def sft_dataset(n: int = 256, seed: int = 0) -> Any:
    """``n`` SFT examples as a ``datasets.Dataset`` with string columns ``prompt`` and
    ``completion`` (TRL's prompt-completion format: loss on the completion only)."""
    _check("sft_dataset", n, seed)
    rows = _examples(n, seed, held_out=False)
    return _dataset(
        {
            "prompt": [_prompt(task, args) for task, args, _ in rows],
            "completion": [" " + " ".join(answer) for _, _, answer in rows],
        }
    )


def sft_eval_dataset(n: int = 64, seed: int = 1) -> Any:
    """Held-out examples in the format of :func:`sft_dataset`; no prompt occurs in both."""
    _check("sft_eval_dataset", n, seed)
    rows = _examples(n, seed, held_out=True)
    return _dataset(
        {
            "prompt": [_prompt(task, args) for task, args, _ in rows],
            "completion": [" " + " ".join(answer) for _, _, answer in rows],
        }
    )


def sft_conversational_dataset(n: int = 256, seed: int = 0) -> Any:
    """The tasks of :func:`sft_dataset` as chats: a ``messages`` column of user/assistant turns,
    rendered by :data:`TOY_CHAT_TEMPLATE`."""
    _check("sft_conversational_dataset", n, seed)
    rows = _examples(n, seed, held_out=False)
    messages = [
        [
            {"role": "user", "content": f"{task}: {' '.join(args)}"},
            {"role": "assistant", "content": " ".join(answer)},
        ]
        for task, args, answer in rows
    ]
    return _dataset({"messages": messages})


def _wrong(task: str, answer: list[str], rng: random.Random) -> list[str]:
    """A plausible wrong answer: a near-miss sum, or the right tokens in a wrong order."""
    if task == "add":
        total = int(answer[0])
        return [str(rng.choice([v for v in range(total - 3, total + 4) if v >= 0 and v != total]))]
    wrong = list(answer)
    swappable = [i for i in range(len(wrong) - 1) if wrong[i] != wrong[i + 1]]
    if swappable:
        i = rng.choice(swappable)
        wrong[i], wrong[i + 1] = wrong[i + 1], wrong[i]
    else:  # all equal, e.g. sort: 4 4 4
        wrong[-1] = str((int(wrong[-1]) + 1) % 10)
    return wrong


def dpo_dataset(n: int = 128, seed: int = 0) -> Any:
    """Preference pairs: ``prompt``, ``chosen`` (the right answer) and ``rejected`` (a plausible
    wrong one), in the completion format of :func:`sft_dataset`."""
    _check("dpo_dataset", n, seed)
    rows = _examples(n, seed, held_out=False)
    rng = random.Random(f"rf-ray-toy/{seed}/dpo")
    return _dataset(
        {
            "prompt": [_prompt(task, args) for task, args, _ in rows],
            "chosen": [" " + " ".join(answer) for _, _, answer in rows],
            "rejected": [" " + " ".join(_wrong(task, answer, rng)) for task, _, answer in rows],
        }
    )


def grpo_dataset(n: int = 128, seed: int = 0) -> Any:
    """Small sums for GRPO: ``prompt`` (``"add: 3 14 ="``) and ``answer`` (``"17"``), to be
    scored by :func:`arithmetic_reward` and :func:`format_reward`."""
    _check("grpo_dataset", n, seed)
    rng = random.Random(f"rf-ray-toy/{seed}/grpo")
    rows: list[Example] = []
    while len(rows) < n:
        args, answer = _add(rng, high=19)
        if not _is_eval("add", args):
            rows.append((args, answer))
    return _dataset(
        {
            "prompt": [_prompt("add", args) for args, _ in rows],
            "answer": [answer[0] for _, answer in rows],
        }
    )


def grpo_reverse_dataset(n: int = 256, seed: int = 0, length: int = 3) -> Any:
    """Reverse ``length`` letters, for GRPO: ``prompt`` (``"reverse: q x b ="``) and ``answer``
    (``"b x q"``), to be scored by :func:`order_reward`.

    The base model was pretrained on scrambled answers, so it already answers with the right
    letters in some order: GRPO has a dense signal to sharpen, and rewards visibly rise for a good
    learning rate within a few minutes on a CPU (about 0.3 -> 0.8 in 64 steps at lr 3e-3).
    """
    _check("grpo_reverse_dataset", n, seed)
    rng = random.Random(f"rf-ray-toy/{seed}/grpo-reverse/{length}")
    prompts: list[str] = []
    answers: list[str] = []
    while len(prompts) < n:
        args = rng.sample(LETTERS, length)
        if not _is_eval("reverse", args):
            prompts.append(_prompt("reverse", args))
            answers.append(" ".join(args[::-1]))
    return _dataset({"prompt": prompts, "answer": answers})


# --- rewards (TRL reward-function signature) ---------------------------------------------------

_INT = re.compile(r"-?\d+")


def _text(completion: Any) -> str:
    # TRL passes strings for plain prompts and lists of messages for conversational ones.
    if isinstance(completion, list):
        return str(completion[-1]["content"]) if completion else ""
    return str(completion)


def arithmetic_reward(
    prompts: list[Any], completions: list[Any], answer: list[str], **kwargs: Any
) -> list[float]:
    """1.0 when the completion's first word is the answer, 0.1 when it is some other integer
    (partial credit for the format), else 0.0."""
    rewards = []
    for completion, expected in zip(completions, answer):
        words = _text(completion).split()
        first = words[0] if words else ""
        if first == str(expected).strip():
            rewards.append(1.0)
        elif _INT.fullmatch(first):
            rewards.append(0.1)
        else:
            rewards.append(0.0)
    return rewards


def order_reward(
    prompts: list[Any], completions: list[Any], answer: list[str], **kwargs: Any
) -> list[float]:
    """The fraction of answer positions the completion gets right, in order (0.0 to 1.0); extra
    or missing words count against it."""
    rewards = []
    for completion, expected in zip(completions, answer):
        got, want = _text(completion).split(), str(expected).split()
        hits = sum(1 for g, w in zip(got, want) if g == w)
        rewards.append(hits / max(len(got), len(want), 1))
    return rewards


def format_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """1.0 when the completion is exactly one integer (the answer format), else 0.0."""
    return [1.0 if _INT.fullmatch(_text(c).strip()) else 0.0 for c in completions]
