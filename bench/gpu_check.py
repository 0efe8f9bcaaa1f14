"""GPU check: the executor's CUDA path, end to end, without Ray.

What it exercises on a CUDA device (and prints, for the notes of a GPU session):

1. the executor picks CUDA and bf16 autocast by itself (``Executor.use_bf16``), from a TRL config
   written for the CPU (``use_cpu=True``, ``bf16=False``), as a user's config would be;
2. device memory figures per slice (``device_mem_mib``, ``device_mem_peak_mib``);
3. a durable checkpoint written on CUDA (adapter, optimizer, LR schedule, CPU and CUDA RNG state)
   and restored into a NEW executor (as after an executor restart) continues the run with the
   same losses as a run that never stopped (printed as the largest difference);
4. K runs time-sliced on one resident base vs fused in one pass: tokens/s and peak memory.

    python bench/gpu_check.py            # on a machine with a CUDA GPU (falls back to the CPU)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

STEPS = 8
BATCH = 8


def _spec(workdir: Path, run_id: int, lr: float, rank: int, dropout: float = 0.1):
    from peft import LoraConfig
    from trl import SFTConfig

    from actors.engine.spec import RunSpec
    from policies.chunking import ChunkPlan

    args = SFTConfig(
        output_dir=str(workdir / f"run{run_id}"), per_device_train_batch_size=BATCH,
        learning_rate=lr, num_train_epochs=1, logging_steps=1, max_length=64,
        report_to="none", use_cpu=True, bf16=False, seed=100 + run_id, save_strategy="no",
        disable_tqdm=True,
    )  # fmt: skip
    lora = LoraConfig(
        task_type="CAUSAL_LM", r=rank, lora_alpha=2 * rank, lora_dropout=dropout,
        target_modules=["q_proj", "v_proj"],
    )  # fmt: skip
    return RunSpec(
        run_id=run_id, model_key="toy", model_config=None, trainer_type="SFT", trl_args=args,
        lora_config=lora, plan=ChunkPlan(BATCH * STEPS, BATCH, 1, num_chunks=2), seed=7,
    )  # fmt: skip


def _rng_digest(torch) -> str:
    import hashlib

    state = torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.get_rng_state()
    return hashlib.sha256(state.numpy().tobytes()).hexdigest()[:10]


def _resume_check(executor, work: Path, dropout: float, cuda: bool) -> None:
    """Half a run, a checkpoint, a NEW executor restores it and trains the other half: the
    losses must equal a run that never stopped (exactly on the CPU)."""
    import torch

    from actors.engine import snapshot
    from actors.storage import checkpoint

    seen: list[str] = []

    def traced(ex):
        activate = ex.registry.activate

        def wrapper(record):
            out = activate(record)
            seen.append(_rng_digest(torch))  # the device RNG the slice starts from
            return out

        ex.registry.activate = wrapper
        return ex

    ex = traced(executor())
    print(f"executor device={ex.device} bf16_autocast={ex.use_bf16}", flush=True)
    ex.add_run(_spec(work, 1, 3e-3, 8, dropout))
    half = ex.run_slice(1, STEPS // 2)
    mid = _rng_digest(torch)
    straight = ex.run_slice(1, STEPS)  # a second slice in the same executor
    print(f"slice memory: {straight.memory}", flush=True)
    want = [m["loss"] for m in half.step_metrics + straight.step_metrics]
    ex = executor()  # the same run in ONE slice: cutting it must not change it
    ex.add_run(_spec(work, 1, 3e-3, 8, dropout))
    whole = [m["loss"] for m in ex.run_slice(1, STEPS).step_metrics]
    cut_gap = max(abs(a - b) for a, b in zip(want, whole))
    print(f"lora_dropout={dropout}: one slice vs two slices, max |loss diff| = {cut_gap:.3g}")

    ex = traced(executor())
    ex.add_run(_spec(work, 1, 3e-3, 8, dropout))
    first = ex.run_slice(1, STEPS // 2)
    state = snapshot.capture(ex.registry[1], ex.bases["toy"].model)
    path = checkpoint.save(state, work / f"ckpt-{dropout}")
    del ex
    if cuda:
        torch.cuda.empty_cache()
    ex = traced(executor())
    ex.add_run(_spec(work, 1, 3e-3, 8, dropout), checkpoint.load(path))
    second = ex.run_slice(1, STEPS)
    got = [m["loss"] for m in first.step_metrics + second.step_metrics]
    gap = max(abs(a - b) for a, b in zip(want, got))
    print(
        f"lora_dropout={dropout}: resume from a checkpoint in a new executor, max |loss diff| "
        f"over {STEPS} steps = {gap:.3g}; device RNG at slice starts {seen} (mid {mid})"
    )
    print(f"  same executor: {[round(x, 5) for x in want]}")
    print(f"  resumed:       {[round(x, 5) for x in got]}", flush=True)


def main() -> int:
    import torch

    from actors.engine.executor import Executor
    from rf_ray.toy import load_toy_model, sft_dataset

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "no GPU (CPU)"
    print(f"device: {device}; torch {torch.__version__}", flush=True)
    data = sft_dataset(BATCH * STEPS, seed=3)

    def executor() -> Executor:
        return Executor(lambda _: load_toy_model(), data)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # 1-2: one run straight through, on a fresh executor.
        for dropout in (0.0, 0.1):
            _resume_check(executor, work, dropout, cuda)
        # 4: K runs on one base, time-sliced vs fused.
        for k in (4, 8):
            for fused in (False, True):
                ex = executor()
                specs = [_spec(work, i + 1, 1e-3 * (i + 1), 4 + 4 * (i % 2)) for i in range(k)]
                for spec in specs:
                    ex.add_run(spec)
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                grants = [(s.run_id, STEPS, False) for s in specs]
                if fused:
                    out = ex.run_fused(grants)
                else:
                    out = {r: ex.run_slice(r, end) for r, end, _ in grants}
                if cuda:
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                tokens = sum(r.tokens for r in out.values() if not isinstance(r, BaseException))
                peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
                way = "fused" if fused else "time-sliced"
                loads = sum(ex.stats.base_loads.values())
                print(
                    f"K={k} {way:11s}: {tokens / seconds:9.0f} tokens/s, {seconds:6.2f} s, "
                    f"peak device memory {peak:7.1f} MiB, base loads {loads}",
                    flush=True,
                )
                del ex
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
