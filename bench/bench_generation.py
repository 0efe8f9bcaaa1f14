"""Benchmark: multi-adapter generation (one batched ``generate`` for K runs) against generating
for one run after another.

K LoRA adapters (ranks 4/8 alternating, on q/k/v/o projections, with random non-zero weights so
that every adapter generates something of its own) sit on one resident base model. Each run
completes the same ``--prompts`` eval prompts of the toy task greedily, ``--new-tokens`` tokens
at most, two ways:

1. **batched**: ``actors.engine.generation.generate_multi`` with all K requests: one ``generate``
call,
   the base layers run once per decoding step for all K x prompts rows, each LoRA layer adds
   each run's adapter to its own rows;
2. **one after another**: ``generate_multi`` with one request at a time (what a per-run
   evaluation loop does: ``set_adapter``, then ``generate``).

It reports, as medians of ``--reps`` repetitions, generated tokens per second (tokens up to and
including each row's end of sequence, over the wall time of the generation calls) and the
speed-up, and checks that both ways produced identical tokens (greedy). Models: ``toy`` (the
shipped 0.1M-parameter Llama) and ``wide`` (bench_fused's 13M-parameter Llama built from the
toy's config, so a step is not all per-operation overhead).

Run it with ``python bench/bench_generation.py`` (a minute or two on 2 CPU cores; it uses CUDA
when there is one) or ``--quick`` (the test suite's run: K=2, the toy model, one repetition).
Timings on a loaded machine are not publishable: the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_fused import load_model  # noqa: E402

SEED = 42


def build(model_name: str, k: int) -> tuple[Any, Any, list[str]]:
    """The base model with K adapters ``run_1..run_K`` on the device, and its tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model

    base, tokenizer = load_model(model_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base.to(device)
    model = None
    names = []
    for i in range(k):
        rank = 4 if i % 2 == 0 else 8
        lora = LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=2 * rank,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])  # fmt: skip
        name = f"run_{i + 1}"
        torch.manual_seed(SEED + i)
        if model is None:
            model = get_peft_model(base, lora, adapter_name=name)
        else:
            model.add_adapter(name, lora)
        names.append(name)
    assert model is not None
    with torch.no_grad():
        g = torch.Generator().manual_seed(SEED)
        for pname, p in model.named_parameters():
            if "lora_B" in pname:
                p.copy_((torch.randn(p.shape, generator=g) * 0.2).to(p.device))
    model.eval()
    return model, tokenizer, names


def requests(tokenizer: Any, names: list[str], prompts: int, new_tokens: int) -> list[Any]:
    import transformers

    from actors.engine.gen_eval import encode_prompts
    from actors.engine.generation import GenRequest
    from rf_ray.toy import sft_eval_dataset

    texts = sft_eval_dataset(prompts, seed=1)["prompt"]
    ids, mask = encode_prompts(tokenizer, list(texts))
    config = transformers.GenerationConfig(
        max_new_tokens=new_tokens, do_sample=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return [GenRequest(name, ids, mask, config, None) for name in names]


def generated_tokens(outputs: list[Any], reqs: list[Any], eos: int) -> int:
    """New tokens up to and including each row's first end-of-sequence."""
    total = 0
    for out, req in zip(outputs, reqs):
        new = out[:, req.input_ids.shape[1] :]
        for row in new.tolist():
            total += row.index(eos) + 1 if eos in row else len(row)
    return total


def measure(model: Any, reqs: list[Any], batched: bool, eos: int) -> dict[str, Any]:
    import torch

    from actors.engine.generation import generate_multi

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    if batched:
        outputs = generate_multi(model, reqs)
    else:
        outputs = [generate_multi(model, [r])[0] for r in reqs]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = generated_tokens(outputs, reqs, eos)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds,
            "outputs": outputs}  # fmt: skip


def run_cell(model_name: str, k: int, prompts: int, new_tokens: int, reps: int) -> dict[str, Any]:
    import torch

    model, tokenizer, names = build(model_name, k)
    reqs = requests(tokenizer, names, prompts, new_tokens)
    eos = tokenizer.eos_token_id
    measure(model, reqs[:1], True, eos)  # warm-up (kernels, allocator)
    ways: dict[str, list[dict[str, Any]]] = {"batched": [], "one after another": []}
    for _ in range(reps):
        ways["batched"].append(measure(model, reqs, True, eos))
        ways["one after another"].append(measure(model, reqs, False, eos))
    same = all(
        torch.equal(a, b)
        for a, b in zip(ways["batched"][0]["outputs"], ways["one after another"][0]["outputs"])
    )
    distinct = len({tuple(o.flatten().tolist()) for o in ways["batched"][0]["outputs"]})
    cell: dict[str, Any] = {"model": model_name, "k": k, "prompts": prompts,
                            "new_tokens": new_tokens, "identical_tokens": same,
                            "distinct_adapter_outputs": distinct}  # fmt: skip
    for way, runs in ways.items():
        cell[way] = {
            "tokens": runs[0]["tokens"],
            "seconds": statistics.median(r["seconds"] for r in runs),
            "tokens_per_second": statistics.median(r["tokens_per_second"] for r in runs),
        }
    cell["speedup"] = (
        cell["batched"]["tokens_per_second"] / cell["one after another"]["tokens_per_second"]
    )
    return cell


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=8, help="runs (adapters)")
    parser.add_argument("--models", default="toy,wide", help="comma-separated: toy, wide")
    parser.add_argument("--prompts", type=int, default=16, help="eval prompts per run")
    parser.add_argument("--new-tokens", type=int, default=32, help="max_new_tokens")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="K=2, toy, 1 repetition")
    parser.add_argument("--out", default=None, help="results JSON path")
    args = parser.parse_args(argv)
    if args.quick:
        args.k, args.models, args.prompts, args.new_tokens, args.reps = 2, "toy", 4, 8, 1

    import torch
    import transformers

    from bench.common import machine_info, machine_line

    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(SEED)
    machine = machine_info()
    cells = [
        run_cell(m, args.k, args.prompts, args.new_tokens, args.reps)
        for m in args.models.split(",")
    ]
    result = {"machine": machine_line(machine), "load_average": os.getloadavg(), "cells": cells}
    print(f"machine: {result['machine']}; load average {result['load_average']}")
    for c in cells:
        print(
            f"{c['model']:>5} K={c['k']} x {c['prompts']} prompts, <= {c['new_tokens']} new: "
            f"batched {c['batched']['tokens_per_second']:.0f} tok/s, one after another "
            f"{c['one after another']['tokens_per_second']:.0f} tok/s, x{c['speedup']:.2f}; "
            f"identical tokens: {c['identical_tokens']}, "
            f"{c['distinct_adapter_outputs']}/{c['k']} adapters generate differently"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
