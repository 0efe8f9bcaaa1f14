"""One vanilla TRL run of one config: the peers' unit of work in the benchmarks.

The run loads the base model itself (the toy, from ``rf_ray.toy``; nothing is downloaded),
adds the LoRA adapter seeded as rf-ray seeds it, and calls ``trl.SFTTrainer(...).train()`` or
``trl.GRPOTrainer(...).train()`` with the identical TRL config rf-ray builds
(``rf_ray.specs.build_trl_config``), over the example order rf-ray trains on:

- SFT: rf-ray presents epoch 0 in ``policies.chunking.epoch_order`` with sequential sampling;
  the run does the same (one epoch only);
- GRPO: TRL's own ``RepeatSampler`` order, which rf-ray's executor uses too.

After each chunk's worth of optimizer steps (rf-ray's own ``ChunkPlan``, built by
``rf_ray.specs.build_specs``) it records the comparable metric rf-ray prunes on: ``eval_loss``
on the eval set for SFT (an evaluation triggered at the chunk boundary), the chunk's mean
``reward`` for GRPO. ``on_chunk`` (a Tune trial's ``tune.report``) receives each of them.

Run as a fresh process (one config, as a user runs one script per config)::

    python bench/vanilla.py SPEC.json      # writes the result JSON named in the spec

The spec is a dict: ``run`` (``RunConfig.to_json()``), ``reward_funcs`` (names in
``rf_ray.toy``), ``train_size``, ``num_chunks``, ``seed``, ``train_seed``, ``eval_seed``,
``eval_size``, ``out_dir``, ``result`` (path), and optionally ``loads_dir`` (a file per model
load goes there) and ``model`` (``bench/models.py``: "toy", the default, or "wide").

``train_many`` is the cheapest thing a user can do: one process, a for-loop over the configs
calling ``train()`` (imports paid once; the base model built again per config, as a script's
loop over ``SFTTrainer`` does).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench`, `rf_ray`, ... importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def comparable_metric(trainer_type: str) -> tuple[str, str]:
    """The metric runs are compared on and its mode: rf-ray's defaults."""
    return ("reward", "max") if trainer_type == "GRPO" else ("eval_loss", "min")


def _datasets(spec: dict[str, Any], trainer_type: str) -> tuple[Any, Any]:
    from rf_ray.toy import grpo_reverse_dataset, sft_dataset, sft_eval_dataset

    n = spec["train_size"]
    if trainer_type == "GRPO":
        return grpo_reverse_dataset(n, seed=spec["train_seed"]), None
    from policies.chunking import epoch_order

    train = sft_dataset(n, seed=spec["train_seed"]).select(epoch_order(n, spec["seed"], 0))
    return train, sft_eval_dataset(spec["eval_size"], seed=spec["eval_seed"])


def train_vanilla(
    spec: dict[str, Any], on_chunk: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Train one config with vanilla TRL; return its figures (see module docstring)."""
    started = time.time()
    t = time.perf_counter()
    import torch
    from peft import get_peft_model
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOTrainer, SFTTrainer

    import rf_ray.toy
    from rf_ray.specs import RunConfig, build_lora_config, build_specs, build_trl_config

    import_seconds = time.perf_counter() - t

    funcs = [getattr(rf_ray.toy, name) for name in spec.get("reward_funcs") or []]
    run = RunConfig.from_json(spec["run"], reward_funcs=funcs or None)
    kind = run.trainer_type
    metric, _ = comparable_metric(kind)
    cuda = torch.cuda.is_available()
    args = build_trl_config(run, spec["out_dir"], use_cpu=not cuda)
    # rf-ray's own chunk plan for this run (the same code run_fit uses).
    (rf_spec,) = build_specs([run], Path(spec["out_dir"]), spec["train_size"],
                             spec["num_chunks"], spec["seed"])  # fmt: skip
    plan = rf_spec.plan
    ends = {plan.chunk_bounds(c)[1]: c + 1 for c in range(plan.total_chunks)}
    if kind == "SFT":
        if plan.total_chunks != plan.num_chunks:
            raise ValueError("the vanilla SFT run reproduces rf-ray's order for one epoch only")
        args = dataclasses.replace(args, train_sampling_strategy="sequential")
    elif kind != "GRPO":
        raise ValueError(f"trainer_type={kind!r}: the benchmark runs SFT and GRPO only")
    train, evals = _datasets(spec, kind)

    t = time.perf_counter()
    from bench.models import load_bench_model

    model, tokenizer = load_bench_model(spec.get("model", "toy"))
    load_seconds = time.perf_counter() - t
    if spec.get("loads_dir"):  # one file per base-model load, counted by the benchmark
        Path(spec["loads_dir"], f"load-{uuid.uuid4().hex}").touch()

    chunks: list[dict[str, Any]] = []
    rewards: dict[int, float] = {}
    seen = {"tokens": 0}
    train_start = [0.0]

    def record(chunk: int, value: float, step: int) -> None:
        entry = {
            "chunk": chunk,
            "metric": float(value),
            "time": time.time(),
            "step": step,
            "tokens": seen["tokens"],
            "train_seconds": time.perf_counter() - train_start[0],
        }
        if cuda:
            entry["device_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        chunks.append(entry)
        if on_chunk is not None:
            on_chunk(entry)

    class ChunkMetrics(TrainerCallback):
        """Evaluate (SFT) or average the rewards (GRPO) at rf-ray's chunk boundaries."""

        def on_step_end(self, args, state, control, **kwargs):
            if kind == "SFT" and state.global_step in ends:
                control.should_evaluate = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "num_tokens" in logs:
                seen["tokens"] = int(logs["num_tokens"])
            if kind == "GRPO" and "reward" in logs:
                step = state.global_step
                rewards[step] = float(logs["reward"])
                if step in ends:
                    start = plan.chunk_bounds(ends[step] - 1)[0]
                    values = [rewards[s] for s in range(start + 1, step + 1) if s in rewards]
                    record(ends[step], sum(values) / len(values), step)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if state.global_step in ends and metrics and metric in metrics:
                record(ends[state.global_step], metrics[metric], state.global_step)

    torch.manual_seed(args.seed)  # as rf-ray seeds each adapter's initialisation
    if kind == "SFT":

        class CountingSFTTrainer(SFTTrainer):
            """SFTTrainer that also counts trained tokens the way rf-ray's executor does."""

            bench_tokens = 0

            def training_step(self, model, inputs, num_items_in_batch=None):
                if "attention_mask" in inputs:
                    self.bench_tokens += int(inputs["attention_mask"].sum())
                return super().training_step(model, inputs, num_items_in_batch)

        trainer: Any = CountingSFTTrainer(
            model=get_peft_model(model, build_lora_config(run)), args=args, train_dataset=train,
            eval_dataset=evals, processing_class=tokenizer, callbacks=[ChunkMetrics()],
        )  # fmt: skip
    else:
        trainer = GRPOTrainer(
            model=model, peft_config=build_lora_config(run), reward_funcs=run.reward_funcs,
            args=args, train_dataset=train, processing_class=tokenizer,
            callbacks=[ChunkMetrics()],
        )  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # logging_steps=1 would print every step
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    train_start[0] = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_start[0]
    trl_tokens = max(
        (int(h["num_tokens"]) for h in trainer.state.log_history if "num_tokens" in h), default=0
    )
    values = [c["metric"] for c in chunks]
    return {
        "process_start": started,
        "end_time": time.time(),
        "trainer_type": kind,
        "metric": metric,
        "import_seconds": import_seconds,
        "model_load_seconds": load_seconds,
        "model_loads": 1,
        "train_seconds": train_seconds,
        "optimizer_steps": int(trainer.state.global_step),
        "tokens": trl_tokens,
        "tokens_attention_mask": getattr(trainer, "bench_tokens", None),
        "chunks": chunks,
        "first_eval_time": chunks[0]["time"] if chunks else None,
        "eval_count": len(chunks),
        "eval_losses": values if kind == "SFT" else [],
        "final_eval_loss": values[-1] if values and kind == "SFT" else None,
        "final_metric": values[-1] if values else None,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "steps_per_chunk": plan.chunk_bounds(0)[1],
    }


def train_many(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Serial vanilla TRL in ONE process: ``train_vanilla`` for each spec, one after another."""
    return [train_vanilla(spec) for spec in specs]


def run_in_process(spec: dict[str, Any], spec_path: Path, timeout: float = 900) -> dict[str, Any]:
    """Run ``spec`` in a fresh Python process (``python bench/vanilla.py SPEC``) and return its
    result with what the parent measured: ``wall_seconds`` (launch to exit), ``launched``,
    ``peak_rss_mib`` / ``peak_pss_mib`` of the process, ``own_cpu_seconds`` (exact, from the
    reaped child's rusage) and ``machine_busy_seconds`` meanwhile."""
    from bench.common import TreeSampler

    spec_path.write_text(json.dumps(spec))
    launched = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), str(spec_path)],
        cwd=str(Path(__file__).resolve().parents[1]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a timeout kills it and nothing else
    )
    with TreeSampler(proc.pid, pss=True) as tree:
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.communicate()
            raise
    wall = time.time() - launched
    if proc.returncode != 0:
        raise RuntimeError(f"vanilla run failed (exit {proc.returncode}):\n{err[-4000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict[str, Any] = json.loads(Path(spec["result"]).read_text())
    result.update(
        launched=launched,
        wall_seconds=wall,
        # The sampler can miss a short peak; the child's own high-water mark cannot.
        peak_rss_mib=max(tree.peak_mib, result["max_rss_mib"]),
        peak_pss_mib=tree.peak_pss_mib,
        own_cpu_seconds=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        machine_busy_seconds=tree.machine_busy_seconds,
    )
    return result


def main(spec_path: str) -> None:
    """Fresh-process entry point: run the spec, write its result JSON."""
    spec = json.loads(Path(spec_path).read_text())
    result = train_vanilla(spec)
    tmp = Path(spec["result"] + ".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, spec["result"])


if __name__ == "__main__":
    from bench.common import offline_env

    offline_env()
    main(sys.argv[1])
