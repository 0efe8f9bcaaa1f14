"""The time-sliced step: one run's slice, its optimizer steps one after another.

``TimeSliced.run`` activates the run's adapter (``AdapterRegistry.activate``: a pointer move and
the run's RNG streams), then takes the run's optimizer steps in the order of
``transformers.Trainer._run_epoch`` (same ``get_batch_samples`` token counting,
``training_step``, clipping, optimizer and scheduler order), so a run trained in interleaved
slices equals a vanilla ``SFTTrainer.train()`` over the same example order;
``tests/actors/test_equivalence.py`` holds it to that. ``placement`` makes a slice idempotent: a
call retried after its reply was lost gets the slice's outcome back instead of training again.
"""

from __future__ import annotations

import math
import time

import torch

from actors.engine import algorithms
from actors.engine.algorithms import accelerate_internals, transformers_internals
from actors.engine.evaluation import Evaluator
from actors.engine.registry import AdapterRecord, AdapterRegistry
from actors.engine.runtime import Runtime
from actors.messages import SliceResult
from policies.errors import RunFailedError, RunNotPlacedError


class TimeSliced:
    """Trains one run's slice at a time on the shared model."""

    def __init__(self, registry: AdapterRegistry, runtime: Runtime, evaluator: Evaluator) -> None:
        self.registry = registry
        self.runtime = runtime
        self.evaluator = evaluator

    def placement(self, run_id: int, start_step: int, end_step: int) -> SliceResult | None:
        """Check that a grant ``start_step..end_step`` fits where the run stands here.

        Returns the cached outcome when the slice already ran (a call retried after its reply
        was lost: it must neither train again nor lose the slice's metrics); ``None`` when the
        run is resident at ``start_step`` and the slice should train. Raises
        ``RunNotPlacedError`` otherwise: the caller re-places the run from its last durable
        checkpoint (``Executor.add_run``) and calls again.
        """
        record = self.registry.get(run_id)
        if record is None:
            raise RunNotPlacedError(
                f"run {run_id} is not resident on this executor (granted steps "
                f"{start_step}..{end_step}); add it from its last checkpoint, then retry"
            )
        last = record.last_result
        if (
            record.steps_done == end_step
            and last is not None
            and (last.start_step, last.end_step) == (start_step, end_step)
        ):
            return last
        if record.steps_done != start_step:
            raise RunNotPlacedError(
                f"run {run_id} is at step {record.steps_done} on this executor, but its grant "
                f"starts at step {start_step} (ends at {end_step}); re-place it from its "
                "checkpoint at that step, then retry"
            )
        return None

    def check_end(self, record: AdapterRecord, end_step: int) -> None:
        """Refuse a slice past the run's plan: its data loader would run dry (StopIteration)."""
        total = record.spec.plan.total_steps
        if not record.steps_done <= end_step <= total:
            raise RunFailedError(
                f"run {record.spec.run_id}: a slice to end_step={end_step} is outside its plan "
                f"(at step {record.steps_done} of {total} optimizer steps); a grant must end "
                f"at or after the run's current step and at most at step {total}"
            )

    def run(
        self, run_id: int, end_step: int, evaluate: bool = False, start_step: int | None = None
    ) -> SliceResult:
        """Train ``run_id`` from its current step up to ``end_step`` (exclusive), then optionally
        evaluate. Raises ``RunFailedError`` for a NaN/inf loss; other exceptions propagate.

        With ``start_step``, the slice is checked against where the run stands first
        (``placement``): a slice that already ran returns its cached outcome."""
        if start_step is not None:
            cached = self.placement(run_id, start_step, end_step)
            if cached is not None:
                return cached
        record = self.registry[run_id]
        self.check_end(record, end_step)
        record.last_result = None
        self.runtime.phase = f"training run {run_id} steps {record.steps_done}..{end_step}"
        started_at = time.time()
        start = time.perf_counter()
        swap = self.registry.activate(record)
        self.runtime.reset_peak_memory()
        first = record.steps_done
        train_start = time.perf_counter()
        metrics, tokens = self._steps(record, end_step, evaluate)
        train_seconds = time.perf_counter() - train_start
        algorithms.forward_logs(record.trainer, record.spec.params, metrics)
        record.rng_state = torch.get_rng_state()
        if record.cuda_rng_state is not None:
            record.cuda_rng_state = torch.cuda.get_rng_state(self.runtime.device)
        eval_metrics = self.evaluator.evaluate(run_id) if evaluate else None
        self.runtime.stats.busy_seconds += time.perf_counter() - start
        record.last_result = SliceResult(
            run_id=run_id,
            start_step=first,
            end_step=end_step,
            step_metrics=metrics,
            eval_metrics=eval_metrics,
            seconds=time.perf_counter() - start,
            train_seconds=train_seconds,
            swap_seconds=swap,
            tokens=tokens,
            memory=self.runtime.memory(),
            started_at=started_at,
            ended_at=time.time(),
        )
        return record.last_result

    def _steps(
        self, record: AdapterRecord, end_step: int, evaluate: bool
    ) -> tuple[list[dict[str, float]], int]:
        """The run's optimizer steps up to ``end_step`` (evaluating inside the slice where its
        ``eval_strategy`` says so): each step's metrics and the tokens trained."""
        metrics: list[dict[str, float]] = []
        tokens = 0
        try:
            with self.runtime.autocast():
                for step in range(record.steps_done, end_step):
                    step_metrics, step_tokens = self._optimizer_step(record, step)
                    if self.evaluator.evaluates_at(record, step + 1, end_step, evaluate):
                        step_metrics.update(self.evaluator.in_slice(record))
                    metrics.append(step_metrics)
                    tokens += step_tokens
        except BaseException:
            # A failed step may leave gradients (NaN ones, for a diverged run) on the shared
            # model; the next run's gradient clipping would read them. Clear them, then fail.
            self.registry.model_of(record).zero_grad(set_to_none=True)
            raise
        return metrics, tokens

    def _optimizer_step(self, record: AdapterRecord, step: int) -> tuple[dict[str, float], int]:
        """One optimizer step, in the order of ``transformers.Trainer._run_epoch``."""
        trainer = record.trainer
        model = self.registry.model_of(record)
        batches = record.batches.take(step)
        trainer.current_gradient_accumulation_steps = len(batches)
        num_items = transformers_internals.num_items_in_batch(trainer, batches)
        tokens = sum(
            int(b["attention_mask"].sum())
            for b in batches
            if isinstance(b, dict) and "attention_mask" in b
        )
        # GRPO's batches are raw prompts; its trainer counts prompt + completion tokens itself.
        tokens_seen = trainer.state.num_input_tokens_seen
        compute_start = time.perf_counter()
        loss = torch.zeros((), device=trainer.args.device)
        for inputs in batches:
            loss += trainer.training_step(model, inputs, num_items)
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            raise RunFailedError(
                f"run {record.spec.run_id}: loss became {loss_value} at optimizer step {step + 1}; "
                "lower the learning rate or enable gradient clipping (max_grad_norm)"
            )
        accelerate_internals.sync_gradients(trainer)
        if trainer.args.max_grad_norm and trainer.args.max_grad_norm > 0:
            grad_norm = transformers_internals.clip_grad_norm(trainer, model)
        else:
            grad_norm = transformers_internals.grad_norm(trainer, model)
        trainer.optimizer.step()
        learning_rate = transformers_internals.learning_rate(trainer)
        trainer.lr_scheduler.step()
        model.zero_grad(set_to_none=True)
        self.runtime.timeline.compute_seconds += time.perf_counter() - compute_start
        trainer.state.global_step += 1
        record.steps_done = step + 1
        tokens = tokens or int(trainer.state.num_input_tokens_seen - tokens_seen)
        return algorithms.step_metrics(trainer, step, loss_value, learning_rate, grad_norm), tokens
