"""The fused slice path of the executor: several runs' slices trained in one pass.

``run_fused`` trains a group of runs that share a base model in one pass (``actors.engine.fused``
holds the fused LoRA layers and the per-run cursors); runs that cannot be fused, and the rest
of a group whose fused pass fails, are time-sliced through ``Executor.run_slice``. The
functions take the executor (``Executor.run_fused`` delegates here).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from actors.engine import algorithms, fused
from actors.messages import SliceResult

if TYPE_CHECKING:
    from actors.engine.executor import Executor

logger = logging.getLogger(__name__)


class _FusedPassError(Exception):
    """A fused pass stopped part-way; ``cursors`` say how far each run got."""

    def __init__(self, cursors: list[fused.Cursor]) -> None:
        super().__init__("fused pass failed")
        self.cursors = cursors


def run_fused(  # noqa: C901  the fused slice loop: per-run deadlines, failures and results in one place
    ex: Executor, grants: list[tuple[int, int, bool]]
) -> dict[int, SliceResult | BaseException]:
    """Train several runs' slices ``(run_id, end_step, evaluate)`` in one pass over their
    shared base model (``actors.engine.fused``). Returns each run's ``SliceResult``, or the
    exception that failed it: one run's failure never fails the others.

    Runs that cannot be fused are time-sliced after the fused group; so is the rest of the
    group when its fused pass cannot be built (``NotFusableError``) or fails (e.g. out of
    memory): the steps it finished stand, and nothing is lost but the interrupted step.
    """
    outcomes: dict[int, SliceResult | BaseException] = {}
    ends: dict[int, tuple[int, bool]] = {}
    for run_id, end, evaluate in grants:
        try:
            ex._check_end(ex.registry[run_id], end)
            ex.registry[run_id].last_result = None
        except Exception as exc:
            outcomes[run_id] = exc
            continue
        ends[run_id] = (end, evaluate)
    group = [r for r in ends if ex.fusable(r) is None]
    if len(group) < 2 or len({ex.registry[r].spec.model_key for r in group}) > 1:
        group = []
    done_early: dict[int, fused.Cursor] = {}
    if group:
        try:
            outcomes.update(_fused_slice(ex, group, ends))
        except _FusedPassError as failed:
            cause = failed.__cause__
            logger.warning("fused slice of runs %s fell back to time-slicing: %r", group, cause)
            ex.fusion_stats["fallbacks"] += 1
            if isinstance(cause, torch.OutOfMemoryError):
                ex.fusion_stats["oom"] += 1
                ex.last_oom_tokens = sum(ex.registry[r].spec.fusion_tokens for r in group)
                if ex.device.type == "cuda":
                    torch.cuda.empty_cache()
            done_early = {c.record.spec.run_id: c for c in failed.cursors}
    for run_id, (end, evaluate) in ends.items():
        if run_id in outcomes:
            continue
        try:
            result = ex.run_slice(run_id, end, evaluate=evaluate)
        except Exception as exc:
            outcomes[run_id] = exc
            continue
        early = done_early.get(run_id)
        if early is not None and early.metrics:  # the steps its fused pass finished
            result.start_step = early.first_step
            result.step_metrics = early.metrics + result.step_metrics
            result.tokens += early.total_tokens
        outcomes[run_id] = result
    for run_id, outcome in outcomes.items():
        if isinstance(outcome, SliceResult):
            ex.registry[run_id].last_result = outcome
    return outcomes


def _fused_slice(  # noqa: C901, PLR0912, PLR0915  one fused step over several runs; splitting it hides the step order
    ex: Executor, run_ids: list[int], ends: dict[int, tuple[int, bool]]
) -> dict[int, SliceResult | BaseException]:
    from actors.engine.executor import forward_logs, memory_figures  # executor imports this module

    records = [ex.registry[r] for r in run_ids]
    entry = ex.bases[records[0].spec.model_key]
    model = entry.model
    ex.phase = f"training runs {run_ids} fused, up to steps {[ends[r][0] for r in run_ids]}"
    started_at = time.time()
    start = time.perf_counter()
    if ex.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ex.device)
    cursors = [
        fused.Cursor.open(record, ends[record.spec.run_id][0], model, ex.device)
        for record in records
    ]
    ex._active = None  # the next time-sliced slice re-selects its adapter
    model.train()
    pad_id = entry.tokenizer.pad_token_id or 0
    try:
        with ex._autocast():
            while live := [c for c in cursors if not c.done]:
                for c in live:
                    if not c.batches:
                        fused.start_step(c)
                shared = fused.fused_micro_step(model, live, pad_id)
                ex.fusion_stats["shared_calls"] = ex.fusion_stats.get("shared_calls", 0) + (
                    shared or 0
                )
                for c in live:
                    if c.error is not None:
                        for p in c.params:
                            p.grad = None
                        continue
                    c.micro += 1
                    if c.micro == len(c.batches):
                        c.optimizer_step()
    except Exception as exc:
        # Finished steps stand (their state is consistent); a half-accumulated window is
        # dropped and its step re-run time-sliced from the run's own step count.
        model.zero_grad(set_to_none=True)
        for c in cursors:
            algorithms.drain_train_metrics(c.record.trainer)
        raise _FusedPassError(cursors) from exc
    finally:
        for c in cursors:
            c.keep_rng()
    train_seconds = time.perf_counter() - start
    ex.fusion_stats["slices"] += 1
    ex.fusion_stats["runs"] += len(cursors)
    ex.fusion_stats["train_seconds"] += train_seconds
    memory = memory_figures(ex.device)
    outcomes: dict[int, SliceResult | BaseException] = {}
    evaluating = [
        c.record.spec.run_id for c in cursors if c.error is None and ends[c.record.spec.run_id][1]
    ]
    evals = ex.evaluate_group(evaluating)  # one fused no-grad pass where it can
    generated = ex.generation_metrics(evaluating)  # the group's generations in one batch
    for c in cursors:
        run_id = c.record.spec.run_id
        eval_metrics = evals.get(run_id)
        if c.error is not None or isinstance(eval_metrics, BaseException):
            outcomes[run_id] = c.error or eval_metrics  # type: ignore[assignment]
            continue
        gen = generated.get(run_id)
        if isinstance(gen, BaseException):
            outcomes[run_id] = gen
            continue
        if eval_metrics is not None and gen:
            eval_metrics.update(gen)
        forward_logs(c.record.trainer, c.record.spec.params, c.metrics)
        outcomes[run_id] = SliceResult(
            run_id=run_id,
            start_step=c.first_step,
            end_step=c.end_step,
            step_metrics=c.metrics,
            eval_metrics=eval_metrics,
            seconds=time.perf_counter() - start,
            train_seconds=train_seconds,
            swap_seconds=0.0,
            tokens=c.total_tokens,
            memory=memory,
            started_at=started_at,
            ended_at=time.time(),
            fused_with=len(cursors),
        )
    ex.busy_seconds += time.perf_counter() - start
    return outcomes
