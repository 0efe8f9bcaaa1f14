"""The offline toy: tiny Llama + tokenizer load with no network, datasets are deterministic and
tokenizable, rewards score right, and TRL's SFTTrainer + LoRA trains on them."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math
from types import SimpleNamespace

import pytest
import torch

from rf_ray import toy


@pytest.fixture(scope="module")
def toy_model():
    return toy.load_toy_model()


def _all_strings():
    """Every text field of every dataset, plus chat renderings."""
    texts = []
    for ds in (toy.sft_dataset(256), toy.sft_eval_dataset(64), toy.dpo_dataset(64)):
        for column in ds.column_names:
            texts += list(ds[column])
    grpo = toy.grpo_dataset(64)
    texts += list(grpo["prompt"]) + list(grpo["answer"])
    return texts


def _completion_loss(model, tokenizer, data) -> float:
    """Mean completion-only loss over a prompt-completion dataset (no noise, unlike the
    per-batch training loss)."""
    model.eval()
    losses = []
    with torch.no_grad():
        for prompt, completion in zip(data["prompt"], data["completion"]):
            n_prompt = len(tokenizer(prompt)["input_ids"])
            ids = torch.tensor([tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]])
            labels = ids.clone()
            labels[0, :n_prompt] = -100
            losses.append(model(input_ids=ids, labels=labels).loss.item())
    return sum(losses) / len(losses)


def _solve(prompt: str) -> str:
    """An independent oracle for the task prompts."""
    task, *args = prompt.removesuffix(" =").split()
    task = task.removesuffix(":")
    if task == "copy":
        return " ".join(args)
    if task == "reverse":
        return " ".join(reversed(args))
    if task == "sort":
        return " ".join(sorted(args, key=int))
    if task == "add":
        return str(sum(int(a) for a in args))
    raise AssertionError(f"unknown task in {prompt!r}")


# --- model and tokenizer -----------------------------------------------------------------------


def test_all_names_exist():
    for name in toy.__all__:
        assert hasattr(toy, name), name


def test_toy_loads_offline(toy_model):
    model, tokenizer = toy_model
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.float32
    assert model.config.vocab_size == len(tokenizer) == len(toy.TOY_VOCAB_WORDS)
    assert len(tokenizer) < 300
    assert tokenizer.pad_token_id is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.chat_template
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 256


def test_parameter_count(toy_model):
    model, _ = toy_model
    n = sum(p.numel() for p in model.parameters())
    assert 50_000 < n < 200_000


def test_assets_are_small():
    total = sum(f.stat().st_size for f in toy.TOY_MODEL_PATH.rglob("*") if f.is_file())
    assert (toy.TOY_MODEL_PATH / "model.safetensors").is_file()
    assert total < 3_000_000


@pytest.mark.parametrize("name", [toy.TOY_MODEL_NAME, str(toy.TOY_MODEL_PATH)])
def test_default_create_model_fn_loads_toy(name):
    config = SimpleNamespace(
        model_name=name, model_kwargs={"dtype": torch.bfloat16}, tokenizer_kwargs=None
    )
    model, tokenizer = toy.default_create_model_fn(config)
    assert model.dtype == torch.bfloat16
    assert tokenizer.pad_token is not None


def test_load_toy_model_dtype():
    model, _ = toy.load_toy_model(dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16


def test_tokenizer_round_trips_dataset_text(toy_model):
    _, tokenizer = toy_model
    for text in _all_strings():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids, text
        assert tokenizer.decode(ids) == " ".join(text.split())


def test_chat_template_renders_without_unk_and_prompt_is_prefix(toy_model):
    _, tokenizer = toy_model
    for messages in toy.sft_conversational_dataset(32)["messages"]:
        full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
        prompt = tokenizer.apply_chat_template(
            messages[:1], tokenize=True, return_dict=True, add_generation_prompt=True
        )
        full_ids, prompt_ids = full["input_ids"], prompt["input_ids"]
        assert tokenizer.unk_token_id not in full_ids
        assert full_ids[: len(prompt_ids)] == prompt_ids
        assert full_ids[0] == tokenizer.bos_token_id
        assert full_ids[-1] == tokenizer.eos_token_id
        answer = tokenizer.decode(full_ids[len(prompt_ids) :], skip_special_tokens=True)
        assert answer.strip() == messages[1]["content"]


# --- datasets ----------------------------------------------------------------------------------

DATASET_FNS = [
    toy.sft_dataset,
    toy.sft_eval_dataset,
    toy.sft_conversational_dataset,
    toy.dpo_dataset,
    toy.grpo_dataset,
]


@pytest.mark.parametrize("fn", DATASET_FNS, ids=lambda f: f.__name__)
def test_datasets_deterministic_per_seed(fn):
    assert fn(32, seed=3).to_list() == fn(32, seed=3).to_list()
    assert fn(32, seed=3).to_list() != fn(32, seed=4).to_list()
    assert len(fn(17)) == 17


@pytest.mark.parametrize("fn", DATASET_FNS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("n", [0, -1, 2.5])
def test_datasets_reject_bad_n(fn, n):
    with pytest.raises(ValueError, match="n must be"):
        fn(n)


def test_sft_columns_and_answers_are_right():
    data = toy.sft_dataset(128)
    assert data.column_names == ["prompt", "completion"]
    tasks = {prompt.split(":")[0] for prompt in data["prompt"]}
    assert tasks == set(toy.TOY_TASKS)
    for prompt, completion in zip(data["prompt"], data["completion"]):
        assert completion.startswith(" ")
        assert completion.strip() == _solve(prompt)


def test_eval_is_disjoint_from_train():
    train = {p for seed in range(3) for p in toy.sft_dataset(1024, seed=seed)["prompt"]}
    held_out = set(toy.sft_eval_dataset(256)["prompt"])
    assert train.isdisjoint(held_out)
    assert len(held_out) > 200


def test_conversational_matches_sft():
    chats = toy.sft_conversational_dataset(16, seed=5)["messages"]
    plain = toy.sft_dataset(16, seed=5)
    for messages, prompt, completion in zip(chats, plain["prompt"], plain["completion"]):
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[0]["content"] + " =" == prompt
        assert messages[1]["content"] == completion.strip()


def test_dpo_chosen_is_right_rejected_is_wrong():
    data = toy.dpo_dataset(128)
    for prompt, chosen, rejected in zip(data["prompt"], data["chosen"], data["rejected"]):
        assert chosen.strip() == _solve(prompt)
        assert rejected.strip() != chosen.strip()
        assert len(rejected.split()) == len(chosen.split())


def test_grpo_answers_and_rewards():
    data = toy.grpo_dataset(64)
    assert data.column_names == ["prompt", "answer"]
    prompts, answers = data["prompt"], data["answer"]
    assert all(p.startswith("add: ") and _solve(p) == a for p, a in zip(prompts, answers))
    right = [f" {a}" for a in answers]
    wrong = [f" {int(a) + 1}" for a in answers]
    assert toy.arithmetic_reward(prompts, right, answer=answers) == [1.0] * len(answers)
    assert toy.arithmetic_reward(prompts, wrong, answer=answers) == [0.1] * len(answers)
    assert toy.arithmetic_reward(prompts[:2], ["a b", ""], answer=answers[:2]) == [0.0, 0.0]
    assert toy.format_reward(prompts[:3], [" 7", "7 8", "x"]) == [1.0, 0.0, 0.0]


def test_rewards_accept_conversational_completions():
    completions = [[{"role": "assistant", "content": "7"}], [{"role": "assistant", "content": "8"}]]
    assert toy.arithmetic_reward(["p", "p"], completions, answer=["7", "7"]) == [1.0, 0.1]
    assert toy.format_reward(["p", "p"], completions) == [1.0, 1.0]


# --- TRL ---------------------------------------------------------------------------------------


def _sft_trainer(tmp_path, train_dataset, max_steps, **config):
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = toy.load_toy_model()
    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        use_cpu=True,
        bf16=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        **config,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )


def test_sft_trainer_lora_loss_is_finite_and_decreases(tmp_path):
    data = toy.sft_dataset(32)
    trainer = _sft_trainer(tmp_path, data, max_steps=20, learning_rate=1e-3)
    # Prompt-completion data: TRL masks the prompt out of the loss by default.
    tokenizer = trainer.processing_class
    assert trainer.completion_only_loss
    row = trainer.train_dataset[0]
    n_prompt = len(tokenizer(row["prompt"])["input_ids"])
    assert all(label == -100 for label in row["labels"][:n_prompt])
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]
    assert row["labels"][-1] == tokenizer.eos_token_id
    before = _completion_loss(trainer.model, tokenizer, data)
    trainer.train()
    after = _completion_loss(trainer.model, tokenizer, data)
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 20
    assert all(math.isfinite(loss) for loss in logged)
    assert after < before


def test_sft_trainer_conversational_assistant_only(tmp_path):
    trainer = _sft_trainer(
        tmp_path, toy.sft_conversational_dataset(16), max_steps=2, assistant_only_loss=True
    )
    trainer.train()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2
    assert all(math.isfinite(loss) for loss in logged)
