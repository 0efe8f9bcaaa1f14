"""How one run's training data is cut into chunks of whole optimizer steps.

The step accounting mirrors Hugging Face ``Trainer`` (transformers 5,
``Trainer.set_initial_training_values`` and ``Trainer._run_epoch``) so that training a run chunk
by chunk visits exactly the micro-batches a vanilla ``trainer.train()`` would:

    batches_per_epoch = N // b if drop_last else ceil(N / b)
    steps_per_epoch   = max(ceil(batches_per_epoch / g), 1)
    total_steps       = max_steps if max_steps > 0 else ceil(num_train_epochs * steps_per_epoch)

Optimizer step ``s`` of an epoch uses micro-batches ``[s*g, min((s+1)*g, batches_per_epoch))``;
micro-batch ``j`` holds positions ``[j*b, min((j+1)*b, N))`` of that epoch's example order.

Each epoch is cut into ``num_chunks`` chunks of (nearly) equal numbers of optimizer steps, so a
chunk always ends on an effective-batch boundary and no optimizer step straddles two chunks.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import asdict, dataclass, fields
from typing import Any

from policies._checks import check_int
from policies.errors import ConfigError


def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    """A permutation of ``range(num_examples)``, fixed by ``(seed, epoch)``.

    ``random.Random`` seeded with a ``str`` hashes it with SHA-512, so the order is the same in
    every process (unlike ``hash()``, which is salted per process) and differs per epoch.
    """
    check_int("num_examples", num_examples, minimum=0)
    check_int("seed", seed)
    check_int("epoch", epoch, minimum=0)
    return list(_cached_order(num_examples, seed, epoch))


@functools.lru_cache(maxsize=8)
def _cached_order(num_examples: int, seed: int, epoch: int) -> tuple[int, ...]:
    # The slice loop asks for one step's micro-batches at a time; shuffling the whole epoch at
    # every step would cost O(N) per step, so the few epochs in use are kept.
    order = list(range(num_examples))
    random.Random(f"rf-ray/epoch_order/{seed}/{epoch}").shuffle(order)
    return tuple(order)


@dataclass(frozen=True)
class ChunkPlan:
    """One run's data plan: how many optimizer steps it takes and where its chunks start and end.

    Chunk ``k`` of an epoch covers that epoch's optimizer steps ``[floor(k*S/K), floor((k+1)*S/K))``
    (``S`` steps per epoch, ``K`` chunks per epoch). Global chunk ``c = epoch*K + k``. A run's
    chunks are those that start before ``total_steps``; the last one is cut at ``total_steps``.
    """

    num_examples: int
    """Examples in the training set (``N``)."""
    batch_size: int
    """Per-device train batch size (``b``)."""
    grad_accum: int
    """Gradient accumulation steps (``g``): micro-batches per optimizer step."""
    num_chunks: int
    """Chunks per epoch (``K``); at most the number of optimizer steps in one epoch."""
    num_train_epochs: float = 1.0
    """Epochs to train (may be fractional); ignored when ``max_steps > 0``."""
    max_steps: int = -1
    """If positive, the total number of optimizer steps, overriding ``num_train_epochs``."""
    drop_last: bool = False
    """Drop the last incomplete micro-batch of each epoch (``dataloader_drop_last``)."""

    def __post_init__(self) -> None:
        if isinstance(self.num_examples, int) and self.num_examples == 0:
            raise ConfigError("num_examples=0: the training dataset is empty")
        check_int("num_examples", self.num_examples, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("grad_accum", self.grad_accum, minimum=1)
        check_int("num_chunks", self.num_chunks, minimum=1)
        check_int("max_steps", self.max_steps)
        if not isinstance(self.drop_last, bool):
            raise ConfigError(f"drop_last must be a bool, got {self.drop_last!r}")
        if self.max_steps <= 0:
            epochs = self.num_train_epochs
            if (
                isinstance(epochs, bool)
                or not isinstance(epochs, (int, float))
                or not math.isfinite(epochs)
                or epochs <= 0
            ):
                raise ConfigError(
                    f"num_train_epochs must be a finite number > 0 when max_steps <= 0, "
                    f"got num_train_epochs={epochs!r}"
                )
        if self.drop_last and self.num_examples < self.batch_size:
            raise ConfigError(
                f"drop_last=True with num_examples={self.num_examples} < "
                f"batch_size={self.batch_size} leaves no full batch to train on; "
                "use drop_last=False or a smaller batch_size"
            )
        if self.num_chunks > self.steps_per_epoch:
            raise ConfigError(
                f"num_chunks={self.num_chunks} is more than the {self.steps_per_epoch} effective "
                f"batches (optimizer steps) in one epoch of {self.num_examples} examples at batch "
                f"size {self.batch_size} x {self.grad_accum} accumulation; use num_chunks <= "
                f"{self.steps_per_epoch} or a larger dataset"
            )

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches the dataloader yields per epoch."""
        if self.drop_last:
            return self.num_examples // self.batch_size
        return math.ceil(self.num_examples / self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (the last may accumulate fewer micro-batches)."""
        return max(math.ceil(self.batches_per_epoch / self.grad_accum), 1)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run."""
        if self.max_steps > 0:
            return self.max_steps
        return math.ceil(self.num_train_epochs * self.steps_per_epoch)

    @property
    def total_chunks(self) -> int:
        """Chunks of the whole run (the last may be cut short at ``total_steps``)."""
        steps, per_epoch, k = self.total_steps, self.steps_per_epoch, self.num_chunks
        full_epochs, rest = divmod(steps, per_epoch)
        # Chunk k of the partial epoch starts at floor(k*S/K); it is part of the run iff that is
        # < rest, i.e. k*S/K < rest, i.e. k < rest*K/S.
        return full_epochs * k + -(-rest * k // per_epoch)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        """Global optimizer steps ``[start, end)`` of global chunk ``chunk`` (0-based)."""
        check_int("chunk", chunk, minimum=0)
        if chunk >= self.total_chunks:
            raise ConfigError(
                f"chunk={chunk} is out of range: this plan has {self.total_chunks} chunks "
                f"(0..{self.total_chunks - 1})"
            )
        epoch, k = divmod(chunk, self.num_chunks)
        base = epoch * self.steps_per_epoch
        start = base + k * self.steps_per_epoch // self.num_chunks
        end = base + (k + 1) * self.steps_per_epoch // self.num_chunks
        return start, min(end, self.total_steps)

    def chunks_done(self, steps_done: int) -> int:
        """Chunks fully completed after ``steps_done`` global optimizer steps."""
        check_int("steps_done", steps_done, minimum=0)
        if steps_done >= self.total_steps:
            return self.total_chunks
        epoch, rest = divmod(steps_done, self.steps_per_epoch)
        # Chunk k of this epoch is done iff floor((k+1)*S/K) <= rest, i.e. (k+1)*S/K < rest+1.
        done_in_epoch = -(-(rest + 1) * self.num_chunks // self.steps_per_epoch) - 1
        return epoch * self.num_chunks + done_in_epoch

    def microbatches_in_step(self, global_step: int) -> int:
        """How many micro-batches optimizer step ``global_step`` accumulates (``g``, or fewer for
        the last step of an epoch), for trainers that draw them from their own dataloader."""
        self._check_step(global_step)
        step = global_step % self.steps_per_epoch
        return min((step + 1) * self.grad_accum, self.batches_per_epoch) - step * self.grad_accum

    def step_microbatches(self, global_step: int, seed: int) -> list[list[int]]:
        """The micro-batches of one optimizer step, each a list of original dataset indices."""
        self._check_step(global_step)
        epoch, step = divmod(global_step, self.steps_per_epoch)
        check_int("seed", seed)
        order = _cached_order(self.num_examples, seed, epoch)
        first = step * self.grad_accum
        last = min((step + 1) * self.grad_accum, self.batches_per_epoch)
        b = self.batch_size
        return [
            list(order[j * b : min((j + 1) * b, self.num_examples)]) for j in range(first, last)
        ]

    def to_dict(self) -> dict[str, Any]:
        """The plan as a JSON-able dict (``from_dict`` inverts it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChunkPlan:
        """Rebuild a plan from :meth:`to_dict` output."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown ChunkPlan field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def _check_step(self, global_step: int) -> None:
        check_int("global_step", global_step, minimum=0)
        if global_step >= self.total_steps:
            raise ConfigError(
                f"global_step={global_step} is out of range: this plan has "
                f"{self.total_steps} optimizer steps (0..{self.total_steps - 1})"
            )


def repeat_sampler_length(
    num_prompts: int,
    num_generations: int,
    generation_batch_size: int,
    repeat_count: int,
) -> int:
    """Samples per epoch of TRL's GRPO ``RepeatSampler`` (``trl/trainer/utils.py``, TRL 1.16).

    GRPO's train dataloader yields *generation* batches: the sampler cuts the shuffled prompts
    into groups of ``generation_batch_size // num_generations`` prompts, drops an incomplete last
    group, and yields each prompt ``num_generations`` times and each group ``repeat_count``
    (``num_iterations * steps_per_generation``) times::

        len = (N // P) * P * num_generations * repeat_count,   P = generation_batch_size // G

    With the dataloader's batch size ``generation_batch_size`` this is exactly
    ``(N // P) * repeat_count`` batches, so a ``ChunkPlan(num_examples=len, batch_size=
    generation_batch_size, ...)`` counts GRPO's micro-batches and optimizer steps as
    ``Trainer.set_initial_training_values`` does.
    """
    check_int("num_prompts", num_prompts, minimum=0)
    check_int("num_generations", num_generations, minimum=1)
    check_int("generation_batch_size", generation_batch_size, minimum=1)
    check_int("repeat_count", repeat_count, minimum=1)
    prompts_per_batch = generation_batch_size // num_generations
    if prompts_per_batch < 1 or generation_batch_size % num_generations:
        raise ConfigError(
            f"generation_batch_size={generation_batch_size} must be a multiple of "
            f"num_generations={num_generations}"
        )
    groups = num_prompts // prompts_per_batch
    return groups * prompts_per_batch * num_generations * repeat_count


__all__ = ["ChunkPlan", "epoch_order", "repeat_sampler_length"]
