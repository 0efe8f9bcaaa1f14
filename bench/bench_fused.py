"""Benchmark: fused multi-adapter slices against time-slicing and serial vanilla TRL.

K LoRA SFT configs (learning rates x LoRA ranks 4/8) on the embedded toy Llama, trained over two
chunks three ways, in this one process, on the same data and example order:

1. **fused**: one ``Executor`` holds the base once; each chunk, the K runs train in fused groups
   (``Executor.run_fused``; groups of at most ``FusionPolicy().max_runs`` runs within its token
   budget, as the scheduler forms them);
2. **time-sliced**: the same executor, one run's slice after another (``Executor.run_slice``);
3. **serial**: per config, load the model, wrap it in PEFT and run ``trl.SFTTrainer.train()``
   (what a user does one script at a time; here without each script's process start and imports,
   so serial is flattered).

For K in ``--ks`` and per-run micro-batch sizes in ``--batches`` (small, where one run's pass
under-uses the device, and large) it reports, as medians of ``--reps`` repetitions:

* training tokens/s (tokens of all runs over the seconds spent training, set-up excluded);
* time to first comparison: from the start (model load included) until every config has finished
  its first chunk, i.e. has a comparable metric;
* speed-up of fused over time-sliced and over serial;
* the memory training adds on top of set-up (``TrainingMemory``): device memory on CUDA (bf16
  autocast, as the executor runs there), process RSS on the CPU.

Run it with ``python bench/bench_fused.py`` (a few minutes on 2 CPU cores) or ``--quick`` (the
test suite's run: K=2, one batch size, one repetition).

``--grpo`` benchmarks GRPO instead (issue 16): K GRPO configs (learning rates x LoRA ranks, each
with its own reward functions) fused (generation, old/reference log-probs and loss passes
shared; ``actors.engine.fused_grpo``) against time-sliced, under successive halving (eta 2, mean
reward of the chunk, max) over ``GRPO_CHUNKS`` chunks. It reports training tokens/s (prompt +
completion tokens, as TRL counts them) and the time until every config is decided (pruned, or
the one left as winner), model load included: ``python bench/bench_fused.py --grpo --ks 4``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SEED = 42
STEPS_PER_RUN = 8  # optimizer steps per run (two chunks of four)
MAX_LENGTH = 64


def _machine() -> str:
    import torch

    if torch.cuda.is_available():
        device = f"{torch.cuda.get_device_name(0)} (bf16 autocast)"
    else:
        device = "no GPU (CPU only)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{platform.processor() or platform.machine()}, {cores} cores, {device}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def _specs(k: int, batch: int, workdir: Path) -> list[Any]:
    """K run specs: learning rates x LoRA ranks, as rf-ray builds them from a grid."""
    from peft import LoraConfig
    from trl import SFTConfig

    from actors.engine.spec import RunSpec
    from policies.chunking import ChunkPlan

    rates = [3e-3, 1e-3, 3e-4, 1e-4, 2e-3, 5e-4, 2e-4, 5e-5]
    specs = []
    for i in range(k):
        rank = 4 if i % 2 == 0 else 8
        args = SFTConfig(
            output_dir=str(workdir / f"run{i + 1}"), per_device_train_batch_size=batch,
            gradient_accumulation_steps=1, learning_rate=rates[(i // 2) % len(rates)],
            num_train_epochs=1, logging_steps=1, max_length=MAX_LENGTH, report_to="none",
            use_cpu=_device() == "cpu", bf16=False, seed=SEED + i, save_strategy="no",
            disable_tqdm=True, train_sampling_strategy="sequential",
        )  # fmt: skip
        lora = LoraConfig(
            task_type="CAUSAL_LM", r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
            target_modules=["q_proj", "v_proj"],
        )  # fmt: skip
        plan = ChunkPlan(batch * STEPS_PER_RUN, batch, 1, num_chunks=2)
        spec = RunSpec(
            run_id=i + 1, model_key="toy", model_config=None, trainer_type="SFT",
            trl_args=args, lora_config=lora, plan=plan, seed=SEED,
        )  # fmt: skip
        specs.append(spec)
    return specs


def load_model(name: str) -> tuple[Any, Any]:
    """``toy``: the shipped 0.1M-parameter Llama. ``wide``: a 13M-parameter Llama (hidden 512,
    4 layers) built here from the toy's config and tokenizer with a fixed seed, so that a pass is
    not all per-operation overhead, as it is on the toy (nothing is downloaded)."""
    from rf_ray.toy import load_toy_model

    model, tokenizer = load_toy_model()
    if name == "toy":
        return model, tokenizer
    import torch
    from transformers import AutoModelForCausalLM

    config = model.config
    config.update(
        {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4,
         "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64}
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config), tokenizer


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TrainingMemory:
    """Memory that training adds on top of what set-up left resident (MiB): the peak of
    ``torch.cuda.max_memory_allocated`` on CUDA, of the process's RSS (sampled every 5 ms) on
    the CPU. Fused passes hold several runs' activations at once; this is where that shows."""

    def __enter__(self) -> TrainingMemory:
        import torch

        self.peak = 0.0
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            return self
        import threading

        import psutil

        process = psutil.Process()
        self.base = process.memory_info().rss
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, (process.memory_info().rss - self.base) / 2**20)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.peak = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self._stop.set()
            self._thread.join()


def fused_groups(specs: list[Any]) -> list[list[int]]:
    """Split the runs into fused groups as the scheduler would (``policies.fusion``)."""
    from policies.fusion import Candidate, FusionPolicy, form_group

    policy = FusionPolicy()
    left = [Candidate(s.run_id, s.fusion_key, s.fusion_tokens, 0, 0) for s in specs]
    groups = []
    while left:
        group = form_group(left[0], left[1:], policy)
        groups.append(group)
        left = [c for c in left if c.run_id not in group]
    return groups


def run_engine(k: int, batch: int, fused: bool, workdir: Path, model: str) -> dict[str, Any]:
    """Fused or time-sliced: one executor, K runs, two chunks."""
    from actors.engine.executor import Executor
    from rf_ray.toy import sft_dataset

    start = time.perf_counter()
    specs = _specs(k, batch, workdir)
    executor = Executor(lambda _: load_model(model), sft_dataset(batch * STEPS_PER_RUN, seed=1))
    for spec in specs:
        executor.add_run(spec)
    train_seconds, tokens, first_comparison, peak = 0.0, 0, None, 0.0
    memory = TrainingMemory()
    for chunk in range(2):
        bounds = {s.run_id: s.plan.chunk_bounds(chunk)[1] for s in specs}
        t0 = time.perf_counter()
        with memory:
            if fused:
                for group in fused_groups(specs):
                    out = executor.run_fused([(r, bounds[r], False) for r in group])
                    for result in out.values():
                        if isinstance(result, BaseException):
                            raise result
                        tokens += result.tokens
            else:
                for run_id, end in bounds.items():
                    tokens += executor.run_slice(run_id, end).tokens
        train_seconds += time.perf_counter() - t0
        peak = max(peak, memory.peak)
        if chunk == 0:
            first_comparison = time.perf_counter() - start
    return {
        "tokens": tokens,
        "train_seconds": train_seconds,
        "tokens_per_second": tokens / train_seconds,
        "first_comparison_seconds": first_comparison,
        "wall_seconds": time.perf_counter() - start,
        "memory_mib": peak,
        "fused_slices": executor.stats.fusion.slices,
    }


def run_serial(k: int, batch: int, workdir: Path, model_name: str) -> dict[str, Any]:
    """Serial vanilla TRL: per config, load the model and ``SFTTrainer.train()``."""
    import torch
    from peft import get_peft_model
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    from policies.chunking import epoch_order
    from rf_ray.toy import sft_dataset

    data = sft_dataset(batch * STEPS_PER_RUN, seed=1)
    ordered = data.select(epoch_order(len(data), SEED, 0))
    start = time.perf_counter()
    train_seconds, tokens, first_comparison, peak = 0.0, 0, None, 0.0
    memory = TrainingMemory()
    for i, spec in enumerate(_specs(k, batch, workdir)):
        model, tokenizer = load_model(model_name)
        model.to(_device())
        torch.manual_seed(spec.trl_args.seed)
        trainer = SFTTrainer(
            model=get_peft_model(model, spec.lora_config),
            args=spec.trl_args,
            train_dataset=ordered,
            processing_class=tokenizer,
        )
        trainer.remove_callback(PrinterCallback)
        run_start = time.perf_counter()
        with memory:
            trainer.train()
        elapsed = time.perf_counter() - run_start
        peak = max(peak, memory.peak)
        train_seconds += elapsed
        tokens += int(trainer.state.num_input_tokens_seen) or sum(
            int(sum(row["attention_mask"])) if "attention_mask" in row else len(row["input_ids"])
            for row in trainer.train_dataset
        )
        if i == k - 1:
            # The last config has its first comparable metric after half of its run.
            first_comparison = time.perf_counter() - start - elapsed / 2
    return {
        "tokens": tokens,
        "train_seconds": train_seconds,
        "tokens_per_second": tokens / train_seconds,
        "first_comparison_seconds": first_comparison,
        "wall_seconds": time.perf_counter() - start,
        "memory_mib": peak,
    }


# ---------------------------------------------------------------------------- GRPO
GRPO_PROMPTS = 16
GRPO_CHUNKS = 2


def _grpo_specs(k: int, workdir: Path) -> list[Any]:
    """K GRPO run specs: learning rates x LoRA ranks, alternating reward function sets, one
    generation setting (so they may fuse)."""
    from peft import LoraConfig
    from trl import GRPOConfig

    from actors.engine.spec import RunSpec
    from policies.chunking import ChunkPlan, repeat_sampler_length
    from rf_ray.toy import arithmetic_reward, format_reward

    rates = [5e-3, 2e-2, 1e-3, 1e-2, 3e-3, 3e-2, 2e-3, 5e-4]
    specs = []
    for i in range(k):
        rank = 4 if i % 2 == 0 else 8
        args = GRPOConfig(
            output_dir=str(workdir / f"grpo{i + 1}"), per_device_train_batch_size=4,
            gradient_accumulation_steps=2, num_generations=4, max_completion_length=8,
            learning_rate=rates[i % len(rates)], num_train_epochs=1, beta=0.04,
            logging_steps=1, report_to="none", use_cpu=_device() == "cpu", bf16=False,
            seed=SEED + i, save_strategy="no", disable_tqdm=True,
        )  # fmt: skip
        lora = LoraConfig(
            task_type="CAUSAL_LM", r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
            target_modules=["q_proj", "v_proj"],
        )  # fmt: skip
        samples = repeat_sampler_length(
            GRPO_PROMPTS, args.num_generations, args.generation_batch_size,
            args.num_iterations * args.steps_per_generation,
        )  # fmt: skip
        plan = ChunkPlan(
            num_examples=samples, batch_size=args.generation_batch_size,
            grad_accum=args.gradient_accumulation_steps, num_chunks=GRPO_CHUNKS,
        )  # fmt: skip
        rewards = [arithmetic_reward, format_reward] if i % 2 == 0 else [arithmetic_reward]
        specs.append(
            RunSpec(
                run_id=i + 1,
                model_key="toy",
                model_config=None,
                trainer_type="GRPO",
                trl_args=args,
                lora_config=lora,
                plan=plan,
                seed=SEED,
                reward_funcs=rewards,
            )
        )
    return specs


def run_grpo(k: int, fused: bool, workdir: Path, model: str) -> dict[str, Any]:
    """K GRPO runs under successive halving, fused or time-sliced, on one executor."""
    from actors.engine.executor import Executor
    from policies.pruning import SuccessiveHalving
    from rf_ray.toy import grpo_dataset

    start = time.perf_counter()
    specs = {s.run_id: s for s in _grpo_specs(k, workdir)}
    executor = Executor(lambda _: load_model(model), grpo_dataset(GRPO_PROMPTS, seed=1))
    for spec in specs.values():
        executor.add_run(spec)
    pruner = SuccessiveHalving(eta=2, metric="reward", mode="max")
    live = set(specs)
    train_seconds, tokens, decided = 0.0, 0, None
    for chunk in range(GRPO_CHUNKS):
        bounds = {r: specs[r].plan.chunk_bounds(chunk)[1] for r in sorted(live)}
        t0 = time.perf_counter()
        if fused:
            results = {}
            for group in fused_groups([specs[r] for r in sorted(live)]):
                results.update(executor.run_fused([(r, bounds[r], False) for r in group]))
        else:
            results = {r: executor.run_slice(r, end) for r, end in bounds.items()}
        train_seconds += time.perf_counter() - t0
        for run_id, result in results.items():
            if isinstance(result, BaseException):
                raise result
            tokens += result.tokens
            rewards = [m["reward"] for m in result.step_metrics if "reward" in m]
            pruner.record(run_id, chunk + 1, statistics.mean(rewards) if rewards else None)
        live -= pruner.decide({r: chunk + 1 for r in live})
        if len(live) <= 1:
            decided = time.perf_counter() - start
            break
    return {
        "tokens": tokens,
        "train_seconds": train_seconds,
        "tokens_per_second": tokens / train_seconds,
        "decided_seconds": decided if decided is not None else time.perf_counter() - start,
        "shared_calls": executor.stats.fusion.shared_calls,
        "fused_slices": executor.stats.fusion.slices,
    }


def grpo_main(ks: list[int], reps: int, model: str, out: Path | None) -> int:
    import tempfile

    machine = f"{_machine()}; model: {model}"
    print(f"Machine: {machine}", flush=True)
    lines = [
        "| K (GRPO) | tokens/s fused | time-sliced | fused / time-sliced | "
        "all decided (s) fused | time-sliced |",
        "|---|---|---|---|---|---|",
    ]
    cells = []
    with tempfile.TemporaryDirectory(prefix="rf-ray-bench-grpo-") as tmp:
        workdir = Path(tmp)
        run_grpo(2, True, workdir, model)  # warm-up: imports, first load
        for k in ks:
            runs: dict[str, list[dict[str, Any]]] = {"fused": [], "time-sliced": []}
            for _ in range(reps):
                runs["fused"].append(run_grpo(k, True, workdir, model))
                runs["time-sliced"].append(run_grpo(k, False, workdir, model))
            f = {
                key: _median(runs["fused"], key) for key in ("tokens_per_second", "decided_seconds")
            }
            t = {key: _median(runs["time-sliced"], key) for key in f}
            cells.append({"k": k, "fused": f, "time-sliced": t, "reps": runs})
            lines.append(
                f"| {k} | {f['tokens_per_second']:.0f} | {t['tokens_per_second']:.0f} | "
                f"{_ratio(f['tokens_per_second'], t['tokens_per_second'])} | "
                f"{f['decided_seconds']:.1f} | {t['decided_seconds']:.1f} |"
            )
            print(lines[-1], flush=True)
    lines += ["", f"Machine: {machine}. Medians of {reps} repetition(s)."]
    print("\n" + "\n".join(lines))
    path = out or REPO / "bench" / "results" / f"fused_grpo_{model}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine, "cells": cells}, indent=1))
    print(f"\nresults: {path}")
    return 0


def _median(reps: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in reps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="K=2, batch 2, one repetition")
    parser.add_argument("--ks", default="2,4,8,16", help="numbers of runs, comma-separated")
    parser.add_argument("--batches", default="2,16", help="per-run micro-batch sizes")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (the median is shown)")
    parser.add_argument("--no-serial", action="store_true", help="skip serial vanilla TRL")
    parser.add_argument("--model", choices=("toy", "wide"), default="toy", help="see load_model")
    parser.add_argument("--out", default=None, help="results JSON path")
    parser.add_argument("--grpo", action="store_true", help="GRPO fused vs time-sliced (K=4)")
    args = parser.parse_args(argv)
    if args.grpo:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.utils.logging.set_verbosity_error()
        ks = [int(x) for x in args.ks.split(",")] if args.ks != "2,4,8,16" else [4]
        reps = 1 if args.quick else args.reps
        return grpo_main(ks, reps, args.model, Path(args.out) if args.out else None)
    if args.quick:
        args.ks, args.batches, args.reps = "2", "2", 1
    ks = [int(x) for x in args.ks.split(",")]
    batches = [int(x) for x in args.batches.split(",")]

    import tempfile

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    machine = f"{_machine()}; model: {args.model}"
    print(f"Machine: {machine}", flush=True)
    cells = []
    with tempfile.TemporaryDirectory(prefix="rf-ray-bench-fused-") as tmp:
        workdir = Path(tmp)
        # Warm-up (imports, first model load, allocator), so that the first measured way does
        # not pay for it.
        run_engine(2, batches[0], True, workdir, args.model)
        run_engine(2, batches[0], False, workdir, args.model)
        for batch in batches:
            for k in ks:
                reps: dict[str, list[dict[str, Any]]] = {"fused": [], "time-sliced": []}
                if not args.no_serial:
                    reps["serial"] = []
                for _ in range(args.reps):
                    reps["fused"].append(run_engine(k, batch, True, workdir, args.model))
                    reps["time-sliced"].append(run_engine(k, batch, False, workdir, args.model))
                    if "serial" in reps:
                        reps["serial"].append(run_serial(k, batch, workdir, args.model))
                cell = {"k": k, "batch": batch, "reps": reps}
                for way, results in reps.items():
                    cell[way] = {
                        key: _median(results, key)
                        for key in (
                            "tokens_per_second",
                            "first_comparison_seconds",
                            "wall_seconds",
                            "memory_mib",
                        )
                    }
                cells.append(cell)
                print(_row(cell), flush=True)
    table = markdown_table(cells, machine, args.reps)
    print("\n" + table)
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"fused_{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "cells": cells}, indent=1))
    print(f"\nresults: {out}")
    return 0


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def _row(cell: dict[str, Any]) -> str:
    f, t = cell["fused"], cell["time-sliced"]
    line = (
        f"K={cell['k']:>2} batch={cell['batch']:>2}: tokens/s fused {f['tokens_per_second']:.0f}"
        f" time-sliced {t['tokens_per_second']:.0f}"
    )
    if "serial" in cell:
        line += f" serial {cell['serial']['tokens_per_second']:.0f}"
    return line


def markdown_table(cells: list[dict[str, Any]], machine: str, reps: int) -> str:
    has_serial = all("serial" in c for c in cells)
    head = (
        "| K | batch/run | tokens/s fused | time-sliced | "
        + ("serial | " if has_serial else "")
        + "fused / time-sliced | "
        + ("fused / serial | " if has_serial else "")
        + "first comparison (s) fused | time-sliced | "
        + ("serial | " if has_serial else "")
        + "training memory MiB fused | time-sliced |"
    )
    lines = [head, "|" + "---|" * head.count(" | ")]
    for c in cells:
        f, t, s = c["fused"], c["time-sliced"], c.get("serial")
        row = [str(c["k"]), str(c["batch"]), f"{f['tokens_per_second']:.0f}"]
        row.append(f"{t['tokens_per_second']:.0f}")
        if has_serial:
            row.append(f"{s['tokens_per_second']:.0f}")
        row.append(_ratio(f["tokens_per_second"], t["tokens_per_second"]))
        if has_serial:
            row.append(_ratio(f["tokens_per_second"], s["tokens_per_second"]))
        row += [f"{f['first_comparison_seconds']:.1f}", f"{t['first_comparison_seconds']:.1f}"]
        if has_serial:
            row.append(f"{s['first_comparison_seconds']:.1f}")
        row += [f"{f['memory_mib']:.0f}", f"{t['memory_mib']:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(f"Machine: {machine}. Medians of {reps} repetition(s).")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
