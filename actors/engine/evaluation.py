"""Evaluation on the executor: a run's eval set, in a slice or at its end, fused or alone.

``evaluate`` runs one run's trainer ``evaluate`` (plus its generation metrics,
``actors.engine.gen_eval``); ``evaluate_group`` evaluates runs of one base in one fused no-grad pass
(``actors.engine.fused_eval``); ``evaluates_at`` / ``evaluate_in_slice`` are TRL's
``eval_strategy="steps"`` inside a slice. The functions take the executor (its ``evaluate``,
``evaluate_group`` and ``generation_metrics`` methods delegate here).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from actors.engine import gen_eval

if TYPE_CHECKING:
    from actors.engine.executor import AdapterRecord, Executor

logger = logging.getLogger(__name__)


def evaluates_at(
    ex: Executor, record: AdapterRecord, done: int, end_step: int, evaluate: bool
) -> bool:
    """TRL's ``eval_strategy="steps"``: evaluate every ``eval_steps`` optimizer steps, also
    inside a chunk (the slice's own end-of-chunk evaluation is not doubled)."""
    args = record.spec.trl_args
    # IntervalStrategy is a str enum: it equals "steps".
    if ex.eval_dataset is None or getattr(args, "eval_strategy", "no") != "steps":
        return False
    every = int(args.eval_steps or 0)
    return every > 0 and done % every == 0 and not (evaluate and done == end_step)


def evaluate_in_slice(ex: Executor, record: AdapterRecord) -> dict[str, float]:
    """Evaluate the active run between two of its optimizer steps, leaving the torch RNG
    where training had it (so the run's next steps draw what they would have)."""
    phase = ex.phase
    ex.phase = f"evaluating run {record.spec.run_id} (eval_steps)"
    rng = torch.get_rng_state()
    out = record.trainer.evaluate()
    torch.set_rng_state(rng)
    ex.phase = phase
    return {
        k: float(v) for k, v in out.items() if k.startswith("eval_") and isinstance(v, (int, float))
    }


def evaluate_group(
    ex: Executor, run_ids: list[int]
) -> dict[int, dict[str, float] | BaseException | None]:
    """Evaluate runs that share a base in one fused no-grad pass (``actors.engine.fused_eval``),
    each by its own trainer; a run its fused evaluation failed for, or that cannot be fused,
    is evaluated time-sliced. Returns each run's metrics or the exception that failed it
    (one run's failure never fails the others)."""
    if ex.eval_dataset is None:
        return dict.fromkeys(run_ids)
    outcomes: dict[int, dict[str, float] | BaseException | None] = {}
    group = [r for r in run_ids if ex.fusable(r) is None]
    if len(group) >= 2 and len({ex.registry[r].spec.model_key for r in group}) == 1:
        from actors.engine import fused_eval

        ex.phase = f"evaluating runs {group} fused"
        entry = ex.bases[ex.registry[group[0]].spec.model_key]
        start = time.perf_counter()
        fused_out, _ = fused_eval.evaluate_fused(
            entry.model,
            [ex.registry[r] for r in group],
            entry.tokenizer.pad_token_id or 0,
            ex._autocast,
        )
        ex._active = None  # lanes served alone may have switched the active adapter
        ex.busy_seconds += time.perf_counter() - start
        ex.fusion_stats["eval_groups"] = ex.fusion_stats.get("eval_groups", 0) + 1
        for run_id, out in fused_out.items():
            if isinstance(out, BaseException):
                logger.warning(
                    "fused evaluation of run %s failed (%r); retrying alone", run_id, out
                )
                ex.fusion_stats["eval_fallbacks"] = ex.fusion_stats.get("eval_fallbacks", 0) + 1
            else:
                outcomes[run_id] = out
    for run_id in run_ids:
        if run_id not in outcomes:
            try:
                outcomes[run_id] = evaluate(ex, run_id, generate=False)
            except Exception as exc:
                outcomes[run_id] = exc
    return outcomes


def evaluate(ex: Executor, run_id: int, generate: bool = True) -> dict[str, float] | None:
    """Evaluate the run on the eval set (its trainer's own ``evaluate``), plus its
    generation metrics unless ``generate`` is False."""
    record = ex.registry[run_id]
    if ex.eval_dataset is None:
        return None
    ex.phase = f"evaluating run {run_id}"
    ex._activate(record)
    rng = torch.get_rng_state()
    with ex._autocast():
        out = record.trainer.evaluate()
    torch.set_rng_state(rng)
    metrics = {k: float(v) for k, v in out.items() if isinstance(v, (int, float))}
    # --- gen: generation metrics (actors.engine.gen_eval); fused slices generate for the group
    if generate:
        generated = generation_metrics(ex, [run_id]).get(run_id, {})
        if isinstance(generated, BaseException):
            raise generated
        metrics.update(generated)
    # --- end gen
    return metrics


def generation_metrics(
    ex: Executor, run_ids: list[int]
) -> dict[int, dict[str, float] | BaseException]:
    """Generation metrics of the runs that ask for them, all of a base in one batch
    (``actors.engine.gen_eval``); per run its metrics or the exception that fails it."""
    records = [ex.registry[r] for r in run_ids]
    if ex.eval_dataset is None or not any(r.spec.generation_eval for r in records):
        return {}
    ex.phase = f"generating for runs {run_ids} (eval_metrics_fn)"
    with ex._autocast():
        return gen_eval.evaluate_records(records, ex.bases, ex.eval_dataset)
