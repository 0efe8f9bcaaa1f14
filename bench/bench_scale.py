"""Benchmark: the engine at real model shapes (1B and 8B), against vanilla TRL one config at a time.

Every figure rf-ray published before this script came from a 0.1M or 13M-parameter model on two
CPU cores. This one builds models of real shapes from their configs, with random weights (nothing
is downloaded): Qwen2.5-0.5B, Llama-3.2-1B and Llama-3-8B, bf16 weights on CUDA (the executor's
bf16 autocast on top), float32 on the CPU. The workload is LoRA SFT on random token sequences of
``--lengths`` tokens, ``--batches`` sequences per run and optimizer step, K configurations with
mixed LoRA ranks (16 and 64) and learning rates, ``--chunks`` chunks of ``--steps-per-chunk``
optimizer steps per run. Three ways, in this one process, on the same data and example order:

1. **serial**: vanilla ``trl.SFTTrainer.train()``, one configuration after another, each on a
   freshly built base (what a user does one script at a time, minus process start and imports);
2. **time-sliced**: one ``Executor`` (the engine the ``BaseModelActor`` wraps, here without
   Ray) holds the base once; per chunk, one run's slice after another;
3. **fused**: the same executor; per chunk, the runs train in fused groups (``run_fused``),
   formed as the scheduler forms them (``policies.fusion.form_group``).

Per way it reports tokens/s; model FLOPs utilisation against the device's bf16 dense peak
(FLOPs per trained token: ``4 N + 12 n_layer L d``: a LoRA step runs the base forward (2N) and
the backward through the activations (2N) but no weight gradients of the frozen base (the 2N
that full fine-tuning adds), plus attention scores and values, forward and backward, as in the
PaLM paper's accounting, appendix B; LoRA's own FLOPs, under 1%, are left out); peak device
memory; the memory each extra run adds (measured after the first chunk, when every run holds its
adapter and optimizer state) against its adapter + AdamW bytes (12 per float32 parameter);
adapter switch p50/p99 (time-sliced); the share of slice time spent in forward, backward and
optimizer step; and the time until every configuration has finished its first chunk (a
comparable metric), model build included, against the serial time to reach the same point.

``--grpo`` adds GRPO, K=4 on the 1B shape: fused (multi-adapter batched generation) against
time-sliced, tokens/s and the share of time spent generating.

    python bench/bench_scale.py --quick            # CPU, tiny shapes: the test suite's run
    python bench/bench_scale.py --gpu --out scale.json   # the prepared GPU run (< 10 min, H100)

``--gpu`` runs the cells of ``GPU_PLAN`` in order until ``--budget-s`` is spent, writing the JSON
after each cell, so a run cut short still leaves every finished cell. Results:
``bench/results/scale_<device>.json``; docs/performance.md has a section per GPU run.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_fused import fused_groups  # noqa: E402
from bench.common import machine_info, machine_line, percentile  # noqa: E402

SEED = 42
RANKS = (16, 64)
RATES = (2e-4, 1e-4, 5e-5, 3e-4)

# Published configs (the models' config.json on their hub pages); only the shape matters here.
SHAPES: dict[str, dict[str, Any]] = {
    "llama8b": {  # meta-llama/Meta-Llama-3-8B
        "arch": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "rope_theta": 500000.0, "tie_word_embeddings": False,
    },
    "llama1b": {  # meta-llama/Llama-3.2-1B
        "arch": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
        "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
        "rope_theta": 500000.0, "tie_word_embeddings": True,
    },
    "qwen0.5b": {  # Qwen/Qwen2.5-0.5B
        "arch": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
        "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "rope_theta": 1000000.0, "tie_word_embeddings": True,
    },
    # CPU shapes for --quick: a Llama and a Qwen2 small enough for a test.
    "tiny": {
        "arch": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rope_theta": 10000.0, "tie_word_embeddings": True,
    },
    "tiny-qwen": {
        "arch": "qwen2", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rope_theta": 10000.0, "tie_word_embeddings": True,
    },
}  # fmt: skip

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
"""Dense bf16 peak (TFLOP/s, no sparsity) by the device name's model, from NVIDIA's data sheets
(H100/H200 SXM; an H100 PCIe is 756: pass ``--peak-tflops``)."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One measured point: a model shape, a sequence length, a per-run batch, K configs."""

    shape: str
    length: int
    batch: int
    k: int
    ways: tuple[str, ...] = ("serial", "time-sliced", "fused")

    def label(self) -> str:
        return f"{self.shape} L={self.length} b={self.batch} K={self.k}"


GPU_PLAN: list[Cell] = [
    Cell("llama1b", 512, 4, 8),  # the headline cell: fused K=8 >= 2x time-sliced, 1/8 serial
    Cell("llama8b", 512, 4, 4),  # MFU >= 35% fused
    Cell("llama1b", 512, 4, 1, ("time-sliced", "fused")),
    Cell("llama1b", 512, 4, 4, ("time-sliced", "fused")),
    Cell("llama1b", 512, 4, 16, ("time-sliced", "fused")),
    Cell("llama1b", 1024, 8, 8, ("time-sliced", "fused")),
    Cell("qwen0.5b", 512, 4, 8, ("time-sliced", "fused")),
    Cell("llama8b", 1024, 8, 4, ("time-sliced", "fused")),
]
"""The prepared GPU run, most important first (``--budget-s`` cuts the tail)."""

QUICK_PLAN: list[Cell] = [
    Cell("tiny", 32, 2, 2),
    Cell("tiny-qwen", 32, 2, 2, ("time-sliced", "fused")),
]


# ---------------------------------------------------------------------------- models and data
def _device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def shape_config(name: str) -> Any:
    """The transformers config of a shape (``SHAPES``)."""
    from transformers import LlamaConfig, Qwen2Config

    fields = dict(SHAPES[name])
    arch = fields.pop("arch")
    cls = LlamaConfig if arch == "llama" else Qwen2Config
    return cls(**fields, pad_token_id=0, bos_token_id=1, eos_token_id=2, use_cache=False)


def shape_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer over ``vocab_size`` ids (``w3`` ... ``w<vocab-1>``; 0 pad, 1 bos,
    2 eos), built in memory: GRPO decodes completions and scores text, and no real tokenizer
    of that vocabulary may be downloaded."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


_TOKENIZERS: dict[int, Any] = {}


def build_model(name: str) -> tuple[Any, Any]:
    """(model, tokenizer) of shape ``name``: random weights, seeded, built on the device
    (bf16 on CUDA, float32 on the CPU). This is the executor's ``create_model_fn``."""
    import torch
    from transformers import AutoModelForCausalLM

    config = shape_config(name)
    device = _device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    vocab = config.vocab_size
    if vocab not in _TOKENIZERS:
        _TOKENIZERS[vocab] = shape_tokenizer(vocab)
    return model, _TOKENIZERS[vocab]


def sft_data(n: int, length: int, vocab: int) -> Any:
    """``n`` pre-tokenized sequences of exactly ``length`` random ids (no padding anywhere)."""
    import datasets
    import torch

    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(3, vocab, (n, length), generator=g)
    return datasets.Dataset.from_dict({"input_ids": ids.tolist()})


def grpo_data(n: int, prompt_words: int, vocab: int) -> Any:
    import datasets
    import torch

    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(3, vocab, (n, prompt_words), generator=g).tolist()
    return datasets.Dataset.from_dict({"prompt": [" ".join(f"w{i}" for i in row) for row in ids]})


def even_word_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """Share of a completion's words with an even id: any deterministic score will do, the
    benchmark measures time, not learning."""
    out = []
    for c in completions:
        words = str(c).split()
        out.append(sum(w[1:].isdigit() and int(w[1:]) % 2 == 0 for w in words) / max(len(words), 1))
    return out


# ---------------------------------------------------------------------------- accounting
def flops_per_token(name: str, length: int) -> float:
    """Training FLOPs per token of a LoRA step on shape ``name`` (see the module docstring)."""
    s = SHAPES[name]
    d, layers, inter = s["hidden_size"], s["num_hidden_layers"], s["intermediate_size"]
    kv = d * s["num_key_value_heads"] // s["num_attention_heads"]
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * inter  # q, o; k, v; gate, up, down
    lm_head = d * s["vocab_size"]  # the embedding lookup costs no FLOPs; the head does
    n = layers * per_layer + lm_head
    return 4 * n + 12 * layers * length * d


def peak_flops(override_tflops: float | None) -> float | None:
    import torch

    if override_tflops:
        return override_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    for model, tflops in PEAK_BF16_TFLOPS.items():
        if model in name:
            return tflops * 1e12
    return None


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _allocated_mib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    _sync()
    return torch.cuda.memory_allocated() / 2**20


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_mib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- run specs
def sft_specs(cell: Cell, chunks: int, steps: int, workdir: Path) -> list[Any]:
    """K SFT run specs: ranks 16/64 alternating, learning rates cycling, one seed each."""
    from peft import LoraConfig
    from trl import SFTConfig

    from actors.engine.spec import RunSpec
    from policies.chunking import ChunkPlan

    cpu = _device().type == "cpu"
    specs = []
    for i in range(cell.k):
        rank = RANKS[i % 2]
        args = SFTConfig(
            output_dir=str(workdir / f"run{i + 1}"), per_device_train_batch_size=cell.batch,
            gradient_accumulation_steps=1, learning_rate=RATES[(i // 2) % len(RATES)],
            num_train_epochs=1, logging_steps=1, max_length=cell.length, report_to="none",
            use_cpu=cpu, bf16=not cpu, seed=SEED + i, save_strategy="no", disable_tqdm=True,
            train_sampling_strategy="sequential", gradient_checkpointing=not cpu,
        )  # fmt: skip
        lora = LoraConfig(
            task_type="CAUSAL_LM", r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        )  # fmt: skip
        plan = ChunkPlan(cell.batch * chunks * steps, cell.batch, 1, num_chunks=chunks)
        specs.append(
            RunSpec(
                run_id=i + 1,
                model_key=cell.shape,
                model_config=cell.shape,
                trainer_type="SFT",
                trl_args=args,
                lora_config=lora,
                plan=plan,
                seed=SEED,
            )
        )
    return specs


# ---------------------------------------------------------------------------- the three ways
def run_engine(cell: Cell, fused: bool, chunks: int, steps: int, workdir: Path) -> dict[str, Any]:
    """Time-sliced or fused: one executor, K runs, ``chunks`` chunks."""
    from actors.engine.executor import Executor

    _free()
    start = time.perf_counter()
    specs = sft_specs(cell, chunks, steps, workdir)
    vocab = SHAPES[cell.shape]["vocab_size"]
    executor = Executor(build_model, sft_data(specs[0].plan.num_examples, cell.length, vocab))
    executor.load_base(specs[0])
    base_mib = _allocated_mib()
    for spec in specs:
        executor.add_run(spec)
    _reset_peak()
    tokens, first_comparison, after_first_mib = 0, None, None
    losses: dict[int, list[float]] = {s.run_id: [] for s in specs}
    slice_seconds = compute_seconds = executor_seconds = 0.0
    swaps: list[float] = []
    train_start = time.perf_counter()
    for chunk in range(chunks):
        ends = {s.run_id: s.plan.chunk_bounds(chunk)[1] for s in specs}
        if fused:
            results: dict[int, Any] = {}
            for group in fused_groups(specs):
                t0 = time.perf_counter()
                results.update(executor.run_fused([(r, ends[r], False) for r in group]))
                executor_seconds += time.perf_counter() - t0
        else:
            results = {}
            for run_id, end in ends.items():
                t0 = time.perf_counter()
                results[run_id] = executor.run_slice(run_id, end)
                executor_seconds += time.perf_counter() - t0
        _sync()
        for result in results.values():
            if isinstance(result, BaseException):
                raise result
            tokens += result.tokens
            losses[result.run_id] += [m["loss"] for m in result.step_metrics]
            swaps.append(result.swap_seconds)
            # A fused group's members each report the group's pass: count its time once.
            slice_seconds += result.seconds / result.fused_with
            compute_seconds += result.train_seconds / result.fused_with
        if chunk == 0:
            first_comparison = time.perf_counter() - start
            after_first_mib = _allocated_mib()
    train_seconds = time.perf_counter() - train_start
    adapters = executor.resident_parameter_count()["adapters"]
    out = {
        "tokens": tokens,
        "train_seconds": train_seconds,
        "tokens_per_second": tokens / train_seconds,
        "first_comparison_seconds": first_comparison,
        "wall_seconds": time.perf_counter() - start,
        "peak_mib": _peak_mib(),
        "adapter_params_per_run": adapters / cell.k,
        "accounted_mib_per_run": adapters * 12 / cell.k / 2**20,
        "measured_mib_per_run": (after_first_mib - base_mib) / cell.k
        if after_first_mib is not None and base_mib is not None
        else None,
        "compute_share": compute_seconds / slice_seconds if slice_seconds else None,
        "executor_busy": executor_seconds / train_seconds,
        "fused_passes": executor.stats.fusion.slices,
        "losses": losses,
    }
    if not fused:
        out["switch_p50_ms"] = percentile(swaps, 50) * 1e3
        out["switch_p99_ms"] = percentile(swaps, 99) * 1e3
    del executor
    _free()
    return out


def run_serial(cell: Cell, chunks: int, steps: int, workdir: Path) -> dict[str, Any]:
    """Vanilla TRL, one configuration after another, each on a freshly built base."""
    import torch
    from peft import get_peft_model
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    specs = sft_specs(cell, chunks, steps, workdir)
    vocab = SHAPES[cell.shape]["vocab_size"]
    from policies.chunking import epoch_order

    data = sft_data(specs[0].plan.num_examples, cell.length, vocab)
    # The engine's example order (the chunk plan's seed-shuffled epoch); TRL then reads it
    # sequentially (train_sampling_strategy="sequential"), so both ways see the same batches.
    data = data.select(epoch_order(len(data), SEED, 0))
    chunk_end: list[float] = []

    class FirstChunk(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == steps:
                _sync()
                chunk_end.append(time.perf_counter())

    _free()
    _reset_peak()
    start = time.perf_counter()
    train_seconds, tokens, builds = 0.0, 0, []
    losses: dict[int, list[float]] = {}
    for spec in specs:
        t0 = time.perf_counter()
        model, tokenizer = build_model(cell.shape)
        builds.append(time.perf_counter() - t0)
        torch.manual_seed(spec.trl_args.seed)
        trainer = SFTTrainer(
            model=get_peft_model(model, spec.lora_config), args=spec.trl_args,
            train_dataset=data, processing_class=tokenizer, callbacks=[FirstChunk()],
        )  # fmt: skip
        trainer.remove_callback(PrinterCallback)
        t0 = time.perf_counter()
        trainer.train()
        _sync()
        train_seconds += time.perf_counter() - t0
        tokens += int(trainer.state.num_input_tokens_seen) or cell.batch * cell.length * (
            chunks * steps
        )
        losses[spec.run_id] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        del trainer, model
        _free()
    return {
        "tokens": tokens,
        "train_seconds": train_seconds,
        "tokens_per_second": tokens / train_seconds,
        # Every config has a comparable metric once the LAST one finished its first chunk.
        "first_comparison_seconds": chunk_end[-1] - start,
        "wall_seconds": time.perf_counter() - start,
        "peak_mib": _peak_mib(),
        "build_seconds_mean": statistics.mean(builds),
        "losses": losses,
    }


# ---------------------------------------------------------------------------- GRPO
def grpo_specs(shape: str, k: int, completion: int, workdir: Path) -> list[Any]:
    from peft import LoraConfig
    from trl import GRPOConfig

    from actors.engine.spec import RunSpec
    from policies.chunking import ChunkPlan, repeat_sampler_length

    cpu = _device().type == "cpu"
    specs = []
    for i in range(k):
        rank = RANKS[i % 2]
        args = GRPOConfig(
            output_dir=str(workdir / f"grpo{i + 1}"), per_device_train_batch_size=8,
            gradient_accumulation_steps=1, num_generations=8, max_completion_length=completion,
            learning_rate=RATES[i % len(RATES)], num_train_epochs=1, beta=0.04, logging_steps=1,
            report_to="none", use_cpu=cpu, bf16=not cpu, seed=SEED + i, save_strategy="no",
            disable_tqdm=True, temperature=1.0,
        )  # fmt: skip
        lora = LoraConfig(
            task_type="CAUSAL_LM", r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        )  # fmt: skip
        samples = repeat_sampler_length(
            GRPO_PROMPTS, args.num_generations, args.generation_batch_size,
            args.num_iterations * args.steps_per_generation,
        )  # fmt: skip
        plan = ChunkPlan(samples, args.generation_batch_size, 1, num_chunks=2)
        specs.append(
            RunSpec(
                run_id=i + 1,
                model_key=shape,
                model_config=shape,
                trainer_type="GRPO",
                trl_args=args,
                lora_config=lora,
                plan=plan,
                seed=SEED,
                reward_funcs=[even_word_reward],
            )
        )
    return specs


GRPO_PROMPTS = 4  # prompts per run (x8 generations): two steps per chunk, two chunks


class GenerationTimer:
    """Seconds spent inside the base model's ``generate`` (both ways reach it: TRL's
    time-sliced call through PEFT, the fused path's batched call), wrapped on the instance."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, model: Any) -> Any:
        inner = model.generate

        def timed(*args: Any, **kwargs: Any) -> Any:
            _sync()
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                _sync()
                self.seconds += time.perf_counter() - t0

        model.generate = timed
        return model


def run_grpo(shape: str, k: int, fused: bool, completion: int, workdir: Path) -> dict[str, Any]:
    from actors.engine.executor import Executor

    _free()
    timer = GenerationTimer()

    def create(name: Any) -> tuple[Any, Any]:
        model, tokenizer = build_model(name)
        return timer.wrap(model), tokenizer

    specs = grpo_specs(shape, k, completion, workdir)
    vocab = SHAPES[shape]["vocab_size"]
    executor = Executor(create, grpo_data(GRPO_PROMPTS, 16, vocab))
    for spec in specs:
        executor.add_run(spec)
    tokens = 0
    start = time.perf_counter()
    for chunk in range(2):
        ends = {s.run_id: s.plan.chunk_bounds(chunk)[1] for s in specs}
        if fused:
            results: dict[int, Any] = {}
            for group in fused_groups(specs):
                results.update(executor.run_fused([(r, ends[r], False) for r in group]))
        else:
            results = {r: executor.run_slice(r, end) for r, end in ends.items()}
        for result in results.values():
            if isinstance(result, BaseException):
                raise result
            tokens += result.tokens
    _sync()
    seconds = time.perf_counter() - start
    del executor
    _free()
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "generation_share": timer.seconds / seconds,
    }


# ---------------------------------------------------------------------------- reporting
def derive(cell: Cell, ways: dict[str, dict[str, Any]], peak: float | None) -> dict[str, Any]:
    """Ratios and MFU from the measured ways of one cell."""
    fpt = flops_per_token(cell.shape, cell.length)
    out: dict[str, Any] = {"flops_per_token": fpt}
    for way in ways.values():
        way["mfu"] = way["tokens_per_second"] * fpt / peak if peak else None
    f, t, s = ways.get("fused"), ways.get("time-sliced"), ways.get("serial")
    if f and t:
        out["fused_over_time_sliced"] = f["tokens_per_second"] / t["tokens_per_second"]
    if f and s:
        out["first_comparison_fused_over_serial"] = (
            f["first_comparison_seconds"] / s["first_comparison_seconds"]
        )
    # The same training three ways: each way's per-step losses against the time-sliced ones
    # (vanilla TRL and the engine agree bit for bit in float32; bf16 and fused passes round
    # differently, so on a GPU this is a sanity check, not an equality).
    for name, way in ways.items():
        if t and name != "time-sliced":
            out[f"max_loss_diff_{name}"] = max(
                abs(a - b)
                for run_id, ref in t["losses"].items()
                for a, b in zip(ref, way["losses"][run_id], strict=True)
            )
    if t and t.get("measured_mib_per_run") and t["accounted_mib_per_run"]:
        out["memory_per_run_over_accounted"] = (
            t["measured_mib_per_run"] / t["accounted_mib_per_run"]
        )
    return out


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(cells: list[dict[str, Any]], grpo: list[dict[str, Any]], machine: str) -> str:
    lines = [
        "| cell | way | tokens/s | MFU | peak MiB | MiB/extra run (accounted) | switch p50/p99 ms "
        "| compute share | all compared (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        for name, w in c["ways"].items():
            switch = (
                f"{_fmt(w['switch_p50_ms'], '.2f')}/{_fmt(w['switch_p99_ms'], '.2f')}"
                if "switch_p50_ms" in w
                else ""
            )
            per_run = (
                f"{_fmt(w.get('measured_mib_per_run'))} ({_fmt(w['accounted_mib_per_run'])})"
                if "accounted_mib_per_run" in w
                else ""
            )
            mfu = _fmt(w["mfu"] * 100 if w.get("mfu") is not None else None) + (
                "%" if w.get("mfu") is not None else ""
            )
            lines.append(
                f"| {c['label']} | {name} | {w['tokens_per_second']:.0f} | {mfu} | "
                f"{_fmt(w.get('peak_mib'), '.0f')} | {per_run} | {switch} | "
                f"{_fmt(w.get('compute_share'), '.2f')} | {w['first_comparison_seconds']:.1f} |"
            )
        d = c["derived"]
        lines.append(
            f"| {c['label']} | ratios | fused/time-sliced "
            f"{_fmt(d.get('fused_over_time_sliced'), '.2f')}x | | | memory/accounted "
            f"{_fmt(d.get('memory_per_run_over_accounted'), '.2f')} | | | fused/serial "
            f"{_fmt(d.get('first_comparison_fused_over_serial'), '.3f')} |"
        )
    for g in grpo:
        lines.append(
            f"| GRPO {g['shape']} K={g['k']} | fused / time-sliced | "
            f"{g['fused']['tokens_per_second']:.0f} / {g['time-sliced']['tokens_per_second']:.0f}"
            f" | | | | | generation share {g['fused']['generation_share']:.2f} / "
            f"{g['time-sliced']['generation_share']:.2f} | |"
        )
    lines += ["", f"Machine: {machine}."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main
def _plan(args: argparse.Namespace) -> list[Cell]:
    if args.quick:
        return QUICK_PLAN
    if args.gpu:
        return GPU_PLAN
    return [
        Cell(shape, length, batch, k)
        for shape in args.shapes.split(",")
        for length in (int(x) for x in args.lengths.split(","))
        for batch in (int(x) for x in args.batches.split(","))
        for k in (int(x) for x in args.ks.split(","))
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU, tiny shapes (the test's run)")
    parser.add_argument("--gpu", action="store_true", help="the prepared GPU plan (GPU_PLAN)")
    parser.add_argument("--shapes", default="llama1b", help=f"of {', '.join(SHAPES)}")
    parser.add_argument("--lengths", default="512,1024")
    parser.add_argument("--batches", default="4,8")
    parser.add_argument("--ks", default="1,4,8,16")
    parser.add_argument("--chunks", type=int, default=4, help="chunks per run")
    parser.add_argument("--steps-per-chunk", type=int, default=2)
    parser.add_argument("--grpo", action="store_true", help="GRPO K=4 fused vs time-sliced")
    parser.add_argument("--budget-s", type=float, default=None, help="stop starting new cells")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device bf16 peak")
    parser.add_argument("--out", default=None, help="results JSON path")
    args = parser.parse_args(argv)

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    device = _device()
    if args.gpu and device.type != "cuda":
        parser.error("--gpu needs a CUDA device; use --quick on the CPU")
    machine = machine_line(machine_info())
    if device.type == "cuda":
        import torch

        machine += f"; {torch.cuda.get_device_name(0)}, bf16 base weights + bf16 autocast"
    print(f"Machine: {machine}", flush=True)
    peak = peak_flops(args.peak_tflops)
    budget = args.budget_s if args.budget_s is not None else (480.0 if args.gpu else None)
    chunks, steps = (2, 1) if args.quick else (args.chunks, args.steps_per_chunk)
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"scale_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": machine, "peak_flops": peak, "chunks": chunks, "steps_per_chunk": steps,
        "cells": [], "grpo": [], "skipped": [],
    }  # fmt: skip
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rf-ray-bench-scale-") as tmp:
        workdir = Path(tmp)
        # Warm-up: CUDA context, kernels, allocator; the first measured way must not pay it.
        run_engine(Cell(_plan(args)[0].shape, 32, 1, 1), False, 1, 1, workdir)
        for cell in _plan(args):
            if budget is not None and time.perf_counter() - begin > budget:
                report["skipped"].append(cell.label())
                continue
            ways: dict[str, dict[str, Any]] = {}
            for way in cell.ways:
                if way == "serial":
                    ways[way] = run_serial(cell, chunks, steps, workdir)
                else:
                    ways[way] = run_engine(cell, way == "fused", chunks, steps, workdir)
            derived = derive(cell, ways, peak)
            report["cells"].append(
                {**dataclasses.asdict(cell), "label": cell.label(), "ways": ways,
                 "derived": derived}
            )  # fmt: skip
            print(f"{cell.label()}: " + json.dumps(derived), flush=True)
            out.write_text(json.dumps(report, indent=1))
        if args.grpo or args.gpu or args.quick:
            shape, k, completion = ("tiny", 2, 4) if args.quick else ("llama1b", 4, 64)
            if budget is None or time.perf_counter() - begin <= budget:
                g = {"shape": shape, "k": k, "completion_tokens": completion}
                for way in ("fused", "time-sliced"):
                    g[way] = run_grpo(shape, k, way == "fused", completion, workdir)
                report["grpo"].append(g)
            else:
                report["skipped"].append(f"GRPO {shape} K={k}")
    report["seconds"] = time.perf_counter() - begin
    out.write_text(json.dumps(report, indent=1))
    print("\n" + markdown(report["cells"], report["grpo"], machine))
    if report["skipped"]:
        print(f"\nskipped (budget): {', '.join(report['skipped'])}")
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
