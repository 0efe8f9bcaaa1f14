"""The fused step: several runs' slices trained in one pass over their shared base model.

``FusedSlices.run`` trains a group of runs that share a base in one pass (``actors.engine.fused``
holds the per-run cursors and the fused micro-step; ``actors.engine.lora_kernel`` the segmented
LoRA layers). Runs that cannot be fused (``actors.engine.eligibility``), and the rest of a group
whose fused pass fails, are time-sliced (``TimeSliced.run``); one run's failure never fails the
others. A fused group is evaluated and generates together too (``Evaluator.evaluate_group``,
``Evaluator.generation_metrics``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from actors.engine import algorithms, eligibility, fused
from actors.engine.evaluation import Evaluator
from actors.engine.registry import AdapterRegistry
from actors.engine.runtime import Runtime
from actors.engine.time_sliced import TimeSliced
from actors.messages import SliceResult

logger = logging.getLogger(__name__)

Grant = tuple[int, int, bool]
"""``(run_id, end_step, evaluate)``."""
Outcome = SliceResult | BaseException


class _FusedPassError(Exception):
    """A fused pass stopped part-way; ``cursors`` say how far each run got."""

    def __init__(self, cursors: list[fused.Cursor]) -> None:
        super().__init__("fused pass failed")
        self.cursors = cursors


class FusedSlices:
    """Trains groups of runs in fused passes, falling back to ``TimeSliced``."""

    def __init__(
        self,
        registry: AdapterRegistry,
        runtime: Runtime,
        time_sliced: TimeSliced,
        evaluator: Evaluator,
    ) -> None:
        self.registry = registry
        self.runtime = runtime
        self.time_sliced = time_sliced
        self.evaluator = evaluator

    def run(self, grants: list[Grant]) -> dict[int, Outcome]:
        """Train several runs' slices ``(run_id, end_step, evaluate)`` in one pass over their
        shared base model. Returns each run's ``SliceResult``, or the exception that failed it.

        Runs that cannot be fused are time-sliced after the fused group; so is the rest of the
        group when its fused pass cannot be built (``NotFusableError``) or fails (e.g. out of
        memory): the steps it finished stand, and nothing is lost but the interrupted step.
        """
        outcomes: dict[int, Outcome] = {}
        ends: dict[int, tuple[int, bool]] = {}
        for run_id, end, evaluate in grants:
            try:
                self.time_sliced.check_end(self.registry[run_id], end)
                self.registry[run_id].last_result = None
            except Exception as exc:
                outcomes[run_id] = exc
                continue
            ends[run_id] = (end, evaluate)
        group = eligibility.fused_group(self.registry, list(ends))
        done_early: dict[int, fused.Cursor] = {}
        oom_tokens = 0
        if group:
            try:
                outcomes.update(self._fused_pass(group, ends))
            except _FusedPassError as failed:
                oom_tokens = self._fell_back(group, failed)
                done_early = {c.record.spec.run_id: c for c in failed.cursors}
        for run_id, (end, evaluate) in ends.items():
            if run_id not in outcomes:
                outcomes[run_id] = self._time_sliced(run_id, end, evaluate, done_early.get(run_id))
        for run_id, outcome in outcomes.items():
            if isinstance(outcome, SliceResult):
                if oom_tokens:  # the scheduler's fusion budget shrinks below it
                    outcome.fusion_oom_tokens = oom_tokens
                self.registry[run_id].last_result = outcome
        return outcomes

    def _fell_back(self, group: list[int], failed: _FusedPassError) -> int:
        """Count a fused pass that failed; after an out-of-memory, return the group's token size
        (``RunSpec.fusion_tokens`` summed), else 0."""
        cause = failed.__cause__
        logger.warning("fused slice of runs %s fell back to time-slicing: %r", group, cause)
        stats = self.runtime.stats.fusion
        stats.fallbacks += 1
        if isinstance(cause, torch.OutOfMemoryError):
            stats.oom += 1
            stats.last_oom_tokens = sum(self.registry[r].spec.fusion_tokens for r in group)
            if self.runtime.device.type == "cuda":
                torch.cuda.empty_cache()
            return stats.last_oom_tokens
        return 0

    def _time_sliced(
        self, run_id: int, end: int, evaluate: bool, early: fused.Cursor | None
    ) -> Outcome:
        """The run's slice time-sliced, after the steps its failed fused pass finished."""
        try:
            result = self.time_sliced.run(run_id, end, evaluate=evaluate)
        except Exception as exc:
            return exc
        if early is not None and early.metrics:  # the steps its fused pass finished
            result.start_step = early.first_step
            result.step_metrics = early.metrics + result.step_metrics
            result.tokens += early.total_tokens
        return result

    def _fused_pass(
        self, run_ids: list[int], ends: dict[int, tuple[int, bool]]
    ) -> dict[int, Outcome]:
        """Train ``run_ids`` fused to their ends, then evaluate those that asked, together."""
        records = [self.registry[r] for r in run_ids]
        entry = self.registry.base_of(records[0])
        self.runtime.phase = (
            f"training runs {run_ids} fused, up to steps {[ends[r][0] for r in run_ids]}"
        )
        started_at = time.time()
        start = time.perf_counter()
        self.runtime.reset_peak_memory()
        cursors = [
            fused.Cursor.open(record, ends[record.spec.run_id][0], entry.model, self.runtime.device)
            for record in records
        ]
        self.registry.forget_active()  # the next time-sliced slice re-selects its adapter
        entry.model.train()
        self._train(entry.model, cursors, entry.tokenizer.pad_token_id or 0)
        train_seconds = time.perf_counter() - start
        stats = self.runtime.stats.fusion
        stats.slices += 1
        stats.runs += len(cursors)
        stats.train_seconds += train_seconds
        outcomes = self._results(cursors, ends, started_at, start, train_seconds)
        self.runtime.stats.busy_seconds += time.perf_counter() - start
        return outcomes

    def _train(self, model: Any, cursors: list[fused.Cursor], pad_id: int) -> None:
        """Micro-step every live cursor together until each reaches its end or fails alone.
        Raises ``_FusedPassError`` when the pass itself fails (out of memory, say)."""
        try:
            with self.runtime.autocast():
                while live := [c for c in cursors if not c.done]:
                    for c in live:
                        if not c.batches:
                            fused.start_step(c)
                    self.runtime.stats.fusion.shared_calls += fused.fused_micro_step(
                        model, live, pad_id
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

    def _results(
        self,
        cursors: list[fused.Cursor],
        ends: dict[int, tuple[int, bool]],
        started_at: float,
        start: float,
        train_seconds: float,
    ) -> dict[int, Outcome]:
        """Each run's outcome of a fused pass, after the group's evaluation and generation."""
        memory = self.runtime.memory()
        evaluating = [
            c.record.spec.run_id
            for c in cursors
            if c.error is None and ends[c.record.spec.run_id][1]
        ]
        evals = self.evaluator.evaluate_group(evaluating)  # one fused no-grad pass where it can
        generated = self.evaluator.generation_metrics(evaluating)  # the group's in one batch
        outcomes: dict[int, Outcome] = {}
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
            algorithms.forward_logs(c.record.trainer, c.record.spec.params, c.metrics)
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
        return outcomes
