"""Evaluation on the executor: a run's eval set, in a slice or at its end, fused or alone.

``Evaluator.evaluate`` runs one run's trainer ``evaluate`` (plus its generation metrics,
``actors.engine.gen_eval``); ``evaluate_group`` evaluates runs of one base in one fused no-grad
pass (``actors.engine.fused_eval``); ``evaluates_at`` / ``in_slice`` are TRL's
``eval_strategy="steps"`` inside a slice; ``generation_metrics`` generates for several runs in
one batch.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from actors.engine import eligibility, fused_eval, gen_eval
from actors.engine.registry import AdapterRecord, AdapterRegistry
from actors.engine.runtime import Runtime

logger = logging.getLogger(__name__)


class Evaluator:
    """Evaluates the registry's runs on the executor's eval set."""

    def __init__(self, registry: AdapterRegistry, runtime: Runtime, eval_dataset: Any) -> None:
        self.registry = registry
        self.runtime = runtime
        self.eval_dataset = eval_dataset

    def evaluates_at(self, record: AdapterRecord, done: int, end_step: int, evaluate: bool) -> bool:
        """TRL's ``eval_strategy="steps"``: evaluate every ``eval_steps`` optimizer steps, also
        inside a chunk (the slice's own end-of-chunk evaluation is not doubled)."""
        args = record.spec.trl_args
        # IntervalStrategy is a str enum: it equals "steps".
        if self.eval_dataset is None or getattr(args, "eval_strategy", "no") != "steps":
            return False
        every = int(args.eval_steps or 0)
        return every > 0 and done % every == 0 and not (evaluate and done == end_step)

    def in_slice(self, record: AdapterRecord) -> dict[str, float]:
        """Evaluate the active run between two of its optimizer steps, leaving the torch RNG
        where training had it (so the run's next steps draw what they would have)."""
        phase = self.runtime.phase
        self.runtime.phase = f"evaluating run {record.spec.run_id} (eval_steps)"
        rng = torch.get_rng_state()
        out = record.trainer.evaluate()
        torch.set_rng_state(rng)
        self.runtime.phase = phase
        return {
            k: float(v)
            for k, v in out.items()
            if k.startswith("eval_") and isinstance(v, (int, float))
        }

    def evaluate_group(
        self, run_ids: list[int]
    ) -> dict[int, dict[str, float] | BaseException | None]:
        """Evaluate runs that share a base in one fused no-grad pass (``actors.engine.fused_eval``),
        each by its own trainer; a run its fused evaluation failed for, or that cannot be fused,
        is evaluated time-sliced. Returns each run's metrics or the exception that failed it
        (one run's failure never fails the others)."""
        if self.eval_dataset is None:
            return dict.fromkeys(run_ids)
        outcomes: dict[int, dict[str, float] | BaseException | None] = {}
        group = eligibility.fused_group(self.registry, run_ids)
        if group:
            outcomes.update(self._fused(group))
        for run_id in run_ids:
            if run_id not in outcomes:
                try:
                    outcomes[run_id] = self.evaluate(run_id, generate=False)
                except Exception as exc:
                    outcomes[run_id] = exc
        return outcomes

    def _fused(self, group: list[int]) -> dict[int, dict[str, float]]:
        """The group's fused evaluation: the runs it succeeded for (the others are retried
        alone by ``evaluate_group``)."""
        stats = self.runtime.stats.fusion
        self.runtime.phase = f"evaluating runs {group} fused"
        records = [self.registry[r] for r in group]
        entry = self.registry.base_of(records[0])
        start = time.perf_counter()
        fused_out, _ = fused_eval.evaluate_fused(
            entry.model, records, entry.tokenizer.pad_token_id or 0, self.runtime.autocast
        )
        self.registry.forget_active()  # lanes served alone may have switched the active adapter
        self.runtime.stats.busy_seconds += time.perf_counter() - start
        stats.eval_groups += 1
        done: dict[int, dict[str, float]] = {}
        for run_id, out in fused_out.items():
            if isinstance(out, BaseException):
                logger.warning(
                    "fused evaluation of run %s failed (%r); retrying alone", run_id, out
                )
                stats.eval_fallbacks += 1
            else:
                done[run_id] = out
        return done

    def evaluate(self, run_id: int, generate: bool = True) -> dict[str, float] | None:
        """Evaluate the run on the eval set (its trainer's own ``evaluate``), plus its
        generation metrics unless ``generate`` is False."""
        record = self.registry[run_id]
        if self.eval_dataset is None:
            return None
        self.runtime.phase = f"evaluating run {run_id}"
        self.registry.activate(record)
        rng = torch.get_rng_state()
        with self.runtime.autocast():
            out = record.trainer.evaluate()
        torch.set_rng_state(rng)
        metrics = fused_eval.numeric_metrics(out)
        if generate:  # a fused slice generates for its whole group instead
            generated = self.generation_metrics([run_id]).get(run_id, {})
            if isinstance(generated, BaseException):
                raise generated
            metrics.update(generated)
        return metrics

    def generation_metrics(self, run_ids: list[int]) -> dict[int, dict[str, float] | BaseException]:
        """Generation metrics of the runs that ask for them, all of a base in one batch
        (``actors.engine.gen_eval``); per run its metrics or the exception that fails it."""
        records = [self.registry[r] for r in run_ids]
        if self.eval_dataset is None or not any(r.spec.generation_eval for r in records):
            return {}
        self.runtime.phase = f"generating for runs {run_ids} (eval_metrics_fn)"
        with self.runtime.autocast():
            return gen_eval.evaluate_records(records, self.registry.bases, self.eval_dataset)
