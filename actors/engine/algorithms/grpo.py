"""GRPO through TRL's own ``GRPOTrainer``: its sampler, generation, reward scoring and loss.

GRPO's data flow is not SFT's: ``GRPOTrainer.get_train_dataloader`` yields *generation*
batches (``per_device_train_batch_size * steps_per_generation`` rows, each prompt repeated
``num_generations`` times by TRL's ``RepeatSampler``), and ``_prepare_inputs`` generates
completions with the active adapter every ``steps_per_generation * num_iterations`` micro-steps
and buffers them for the steps in between. So a GRPO run does not collate rf-ray's index lists;
``LoaderBatches`` keeps the run's own iterator over its trainer's own dataloader and advances
it across slices, and the trainer keeps its ``_step`` counter and buffer (one trainer per run).
The executor saves and restores each run's global RNG around its slices, so sampling during
generation draws the same numbers as in a vanilla ``GRPOTrainer.train()``.

The reference policy (``beta > 0``) is the shared base with adapters disabled; no second copy.

Reward functions run inside the executor process, so each is wrapped: one that raises, returns
the wrong number of values or returns non-numbers fails only its own run, with an error that
names the function and the reason.
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable, Iterator
from typing import Any

import torch

from actors.engine.algorithms import trl_internals
from actors.engine.algorithms.columns import with_formatted_columns
from actors.engine.algorithms.reference import base_as_reference
from actors.engine.spec import RunSpec
from policies.errors import RunFailedError


def make_trainer(
    spec: RunSpec, args: Any, model: Any, tokenizer: Any, train_dataset: Any, eval_dataset: Any
) -> Any:
    from trl import GRPOTrainer

    if not spec.reward_funcs:
        raise RunFailedError(f"run {spec.run_id}: GRPO needs reward_funcs; none were given")
    train_dataset, eval_dataset = with_formatted_columns(spec, train_dataset, eval_dataset)
    with base_as_reference(model, spec.adapter_name):
        return GRPOTrainer(
            model=model,
            reward_funcs=[checked_reward(f) for f in spec.reward_funcs],
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
        )


class LoaderBatches:
    """GRPO's micro-batches: its trainer's own train dataloader, one iterator per epoch.

    Mirrors ``Trainer._inner_training_loop``: the dataloader is built once per run (its
    ``RepeatSampler`` generator then reshuffles each epoch as in a vanilla run), and each epoch
    starts with ``set_epoch`` and a fresh iterator, whose creation draws the DataLoader's base
    seed from the global RNG exactly when a vanilla run's does (at the first ``next``).
    """

    def __init__(self, spec: RunSpec, trainer: Any) -> None:
        self.plan = spec.plan
        self.trainer = trainer
        self.run_id = spec.run_id
        self.loader = trainer.get_train_dataloader()
        self.iterator: Iterator[Any] | None = None
        self.next_step = 0

    def take(self, step: int) -> list[Any]:
        per_epoch = self.plan.steps_per_epoch
        if step != self.next_step:
            self._fast_forward(step)
        elif step % per_epoch == 0:
            self._start_epoch(step // per_epoch)
        iterator = self.iterator
        if iterator is None:  # unreachable: set by _start_epoch or _fast_forward
            raise RuntimeError(f"GRPO batch source has no iterator at step {step}")
        batches = []
        for _ in range(self.plan.microbatches_in_step(step)):
            try:
                batches.append(next(iterator))
            except StopIteration:
                # A StopIteration must not escape: the plan and the data disagree (issue 12).
                raise RunFailedError(
                    f"run {self.run_id}: TRL's dataloader ran dry at optimizer step "
                    f"{step + 1}, but the run's plan has {self.plan.batches_per_epoch} "
                    f"micro-batches per epoch over {self.plan.num_examples} examples; the plan "
                    "does not match the sampler (GRPO counts prompts x num_generations)"
                ) from None
        self.next_step = step + 1
        return batches

    def _start_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)
        self.iterator = iter(self.loader)

    def _fast_forward(self, step: int) -> None:
        """Reach ``step`` after a restore (a warm-started clone, a restarted executor).

        Replays the sampler's earlier epochs and skips the consumed micro-batches so the data
        order is the vanilla one. TRL's generation buffer is not checkpointed: ``_step`` is set
        from the plan and the buffer cleared, so TRL regenerates at the next step (what TRL
        itself does on ``resume_from_checkpoint``). Such a run matches vanilla TRL in data
        order, not bit for bit.
        """
        epoch, in_epoch = divmod(step, self.plan.steps_per_epoch)
        consumed = in_epoch * self.plan.grad_accum
        rng = torch.get_rng_state()  # the replay must not disturb the run's RNG stream
        for e in range(epoch + 1):
            self.loader.set_epoch(e)
            iterator = iter(self.loader)
            for _ in range(self.plan.batches_per_epoch if e < epoch else consumed):
                next(iterator)
        self.iterator = iterator
        torch.set_rng_state(rng)
        micro_step = epoch * self.plan.batches_per_epoch + consumed
        trl_internals.grpo_regenerate_at(self.trainer, micro_step)


def checked_reward(func: Callable[..., Any]) -> Callable[..., Any]:  # noqa: C901  one check per way a reward function can be wrong, each with its own message
    """``func`` with its output checked: one value per completion, each a number or None.

    TRL itself would raise a bare ValueError (or, for a non-number, a torch error that names no
    function); this names the function and the reason, as a ``RunFailedError`` that fails only
    the run. None stays allowed: TRL reads it as "not applicable" (NaN). Reward models
    (``nn.Module``) are scored by TRL itself and are passed through unchanged.
    """
    if isinstance(func, torch.nn.Module):
        return func
    name = getattr(func, "__name__", type(func).__name__)

    def check(out: Any, completions: list[Any]) -> Any:
        if isinstance(out, (str, bytes)) or not hasattr(out, "__len__"):
            raise RunFailedError(
                f"reward function {name!r} returned {type(out).__name__}, not a list of "
                f"{len(completions)} rewards (one per completion)"
            )
        if len(out) != len(completions):
            raise RunFailedError(
                f"reward function {name!r} returned {len(out)} values for "
                f"{len(completions)} completions; return one reward per completion"
            )
        for i, value in enumerate(out):
            if not _is_reward(value):
                raise RunFailedError(
                    f"reward function {name!r} returned {value!r} ({type(value).__name__}) for "
                    f"completion {i}; rewards must be numbers (or None for 'not applicable')"
                )
        return out

    def failed(exc: Exception) -> RunFailedError:
        return RunFailedError(f"reward function {name!r} raised {type(exc).__name__}: {exc}")

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def checked_async(*args: Any, **kwargs: Any) -> Any:
            try:
                out = await func(*args, **kwargs)
            except Exception as exc:
                raise failed(exc) from exc
            return check(out, kwargs.get("completions", []))

        return checked_async

    @functools.wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            out = func(*args, **kwargs)
        except Exception as exc:
            raise failed(exc) from exc
        return check(out, kwargs.get("completions", []))

    return checked


def _is_reward(value: Any) -> bool:
    if value is None or isinstance(value, numbers.Real):
        return True
    return torch.is_tensor(value) and value.numel() == 1 and not value.dtype.is_complex
