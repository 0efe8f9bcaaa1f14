"""The base-model executor: one frozen base model per distinct model, many runs as adapters.

``Executor`` is a plain object (the ``BaseModelActor`` is a thin Ray shell around it), so the
slice loop is testable without Ray. It owns

* the resident base models, loaded once each through the user's ``create_model_fn`` and wrapped
  in one ``PeftModel`` that carries every live run as a named LoRA adapter;
* the adapter registry: one ``AdapterRecord`` per run with its TRL trainer (the source of
  collation, loss and metrics), optimizer, LR scheduler, RNG state and step counter.

Switching runs is ``PeftModel.set_adapter``: a pointer move, no weights are copied or reloaded.

The slice loop mirrors ``transformers.Trainer._run_epoch`` step for step (same
``get_batch_samples`` token counting, ``training_step``, clipping, optimizer and scheduler
order), so a run trained in interleaved slices equals a vanilla ``SFTTrainer.train()`` over the
same example order; ``tests/actors/test_equivalence.py`` holds it to that.

Two roles live in their own modules, as functions taking the executor, behind one-line methods
here: the fused slice path (``run_fused``) in ``actors.engine.fused_slice``, and evaluation
(``evaluate``, ``evaluate_group``, ``generation_metrics``, evaluation inside a slice) in
``actors.engine.evaluation``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from actors.engine import algorithms, evaluation, fused, fused_slice
from actors.engine.data_prep import PreparedDatasets
from actors.engine.spec import RunSpec
from actors.engine.timeline import Timeline
from actors.messages import SliceResult
from actors.storage.durable import private_umask
from policies.errors import RunFailedError, RunNotPlacedError

logger = logging.getLogger(__name__)


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA when present (and not overridden), else CPU."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def memory_figures(device: torch.device) -> dict[str, float]:
    """Device memory in use and peak (MiB) on CUDA; host RSS (MiB) on CPU."""
    if device.type == "cuda":
        return {
            "device_mem_mib": torch.cuda.memory_allocated(device) / 2**20,
            "device_mem_peak_mib": torch.cuda.max_memory_allocated(device) / 2**20,
        }
    import psutil

    return {"host_rss_mib": psutil.Process(os.getpid()).memory_info().rss / 2**20}


def _quiet_libraries() -> None:
    """No per-map and per-load progress bars in actor logs: rf-ray reports progress itself."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


@dataclass
class BaseEntry:
    """One resident base model, shared by every run whose spec has its model_key."""

    model: Any
    """The ``PeftModel`` wrapping the frozen base; ``None`` until its first adapter is added."""
    raw_model: Any
    tokenizer: Any
    run_ids: set[int] = field(default_factory=set)
    forward_patched: bool = False
    """Whether a TRL trainer has patched ``raw_model.forward`` (the first one does; see add_run)."""


@dataclass
class AdapterRecord:
    """Everything the executor keeps for one run: one record, not parallel dicts."""

    spec: RunSpec
    trainer: Any
    """The run's TRL trainer: collator, loss, metrics, optimizer and scheduler live on it."""
    batches: algorithms.BatchSource
    """Where the run's micro-batches come from (plan indices for SFT/DPO, TRL's loader for GRPO)."""
    rng_state: torch.Tensor
    cuda_rng_state: torch.Tensor | None
    steps_done: int = 0
    last_result: SliceResult | None = None
    """The run's last slice outcome: a call retried after a lost reply gets it back instead of
    training again (see ``Executor.placement``)."""


def _accelerate_state() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """accelerate's process-wide (Borg) state dicts, with a copy of each."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    return [
        (c._shared_state, dict(c._shared_state))
        for c in (PartialState, AcceleratorState, GradientState)
    ]


def _restore_accelerate_state(saved: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Put the copies back in place: every live Accelerator reads these very dicts."""
    for shared, copy in saved:
        shared.clear()
        shared.update(copy)


class Executor:
    """Owns base models and the adapter registry; trains one run's slice at a time."""

    def __init__(
        self,
        create_model_fn: Callable[[Any], tuple[Any, Any]],
        train_dataset: Any,
        eval_dataset: Any = None,
        device: str | None = None,
    ) -> None:
        _quiet_libraries()
        self.create_model_fn = create_model_fn
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.device = pick_device(device)
        self.use_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.bases: dict[str, BaseEntry] = {}
        self.registry: dict[int, AdapterRecord] = {}
        self.base_loads: dict[str, int] = {}
        self.swap_seconds: list[float] = []
        self._active: int | None = None
        self.busy_seconds = 0.0
        self.last_oom_tokens = 0
        """Token size of the last fused group that ran out of memory (0: none yet)."""
        self.fusion_stats: dict[str, float] = dict.fromkeys(
            ("slices", "runs", "train_seconds", "fallbacks", "oom"), 0
        )
        self.phase = "idle"
        """What the executor is doing now, in words (``BaseModelActor.activity`` reports it)."""
        self.prepared = PreparedDatasets()
        """Prepared datasets shared by runs with the same preparation setting."""
        self.timeline = Timeline()
        """Start-up milestones and slice timings (``actors.engine.timeline``), for benchmarks."""

    # ------------------------------------------------------------------ bases and adapters
    def load_base(self, spec: RunSpec) -> None:
        """Load ``spec``'s base model now (once per model; ``add_run`` finds it resident)."""
        self._base(spec)

    def _base(self, spec: RunSpec) -> BaseEntry:
        entry = self.bases.get(spec.model_key)
        if entry is None:
            self.phase = "loading base model (create_model_fn)"
            model, tokenizer = self.create_model_fn(spec.model_config)
            model.to(self.device)
            for p in model.parameters():
                p.requires_grad_(False)
            entry = BaseEntry(model=None, raw_model=model, tokenizer=tokenizer)
            self.bases[spec.model_key] = entry
            self.base_loads[spec.model_key] = self.base_loads.get(spec.model_key, 0) + 1
            self.timeline.base_loaded_at = self.timeline.base_loaded_at or time.time()
            logger.info("loaded base model %s on %s", spec.model_key, self.device)
        return entry

    def add_run(self, spec: RunSpec, state: dict[str, Any] | None = None) -> None:
        """Register a run: add its adapter (seeded from the run), build its trainer.

        ``state`` (from ``checkpoint_state``) restores adapter, optimizer, scheduler, RNG and
        progress, e.g. for a warm-started clone or an executor that was restarted.
        """
        if spec.run_id in self.registry:
            return
        from peft import get_peft_model

        saved = _accelerate_state()  # before the run's TrainingArguments touch it

        entry = self._base(spec)
        self.phase = f"building trainer of run {spec.run_id}"
        name = spec.adapter_name
        # LoRA initialisation draws from the global torch RNG: seed it from the run, so a run's
        # adapter does not depend on how many adapters were added before it (DESIGN.md, traps).
        torch.manual_seed(spec.trl_args.seed)
        if entry.model is None:
            entry.model = get_peft_model(entry.raw_model, spec.lora_config, adapter_name=name)
        else:
            if name in entry.model.peft_config:  # left by a removed or failed run of this id
                entry.model.delete_adapter(name)
            entry.model.add_adapter(name, spec.lora_config)
        entry.model.set_adapter(name)
        self._active = spec.run_id
        args = self._device_args(spec.trl_args)
        previous_forward = entry.raw_model.forward
        # Data preparation once per distinct setting (actors.engine.data_prep): a later run with the
        # same setting gets the prepared datasets and TRL skips preparing them again.
        prep_key = self.prepared.key(spec, args)
        shared = self.prepared.lookup(prep_key)
        build_spec, train, evals = spec, self.train_dataset, self.eval_dataset
        if shared is not None:
            build_spec, args = self.prepared.reuse(spec, args)
            train, evals = shared.train, shared.eval
        try:
            with private_umask():  # datasets' map caches land beside data/train: keep them 0600
                trainer = algorithms.make_trainer(
                    build_spec, args, entry.model, entry.tokenizer, train, evals
                )
        except BaseException:
            # A trainer that fails half-way must not break the runs already here: its
            # TrainingArguments reset accelerate's process-wide state, which only a finished
            # Trainer rebuilds (seen: a raising formatting_func left the next run's slices with
            # "'AcceleratorState' object has no attribute 'parallelism_config'").
            _restore_accelerate_state(saved)
            entry.raw_model.forward = previous_forward
            entry.model.delete_adapter(name)
            self._active = None
            raise
        if entry.forward_patched:
            # TRL patches the base's forward with its fused LM head at each trainer's creation;
            # the first patch serves every run, so undo the re-wrapping.
            entry.raw_model.forward = previous_forward
        entry.forward_patched = True
        entry.run_ids.add(spec.run_id)
        self.prepared.keep(prep_key, trainer)
        trainer.create_optimizer()
        trainer.create_scheduler(spec.plan.total_steps, optimizer=trainer.optimizer)
        # Trainer.__init__ has just called set_seed(args.seed), as a vanilla run does before its
        # first step: that RNG state is this run's from here on.
        record = AdapterRecord(
            spec=spec,
            trainer=trainer,
            batches=algorithms.make_batch_source(spec, trainer),
            rng_state=torch.get_rng_state(),
            cuda_rng_state=torch.cuda.get_rng_state(self.device)
            if self.device.type == "cuda"
            else None,
        )
        self.registry[spec.run_id] = record
        self.timeline.added_at.setdefault(spec.run_id, time.time())
        if state is not None:
            from actors.storage.checkpoint import restore_into

            restore_into(record, entry.model, state)

    def _device_args(self, args: Any) -> Any:
        """The executor, not the user, decides device options (DESIGN.md, traps).

        On CUDA the slice runs under ``torch.autocast(bfloat16)`` set by the executor itself:
        letting each trainer's Accelerator patch the shared model's forward would stack one
        autocast wrapper per run.
        """
        import dataclasses

        derived: dict[str, Any] = {}
        if getattr(args, "generation_batch_size", None) is not None:
            # GRPOConfig.__post_init__ derives steps_per_generation from generation_batch_size
            # and refuses both set; re-deriving it gives the same value.
            derived["steps_per_generation"] = None
        # report_to keeps what rf_ray.specs.build_trl_config forwarded (wandb, tensorboard);
        # evaluation is the executor's (inside a slice for eval_strategy="steps"), and TRL
        # refuses an eval_strategy without an eval_dataset, so the trainer gets "no".
        return dataclasses.replace(
            args,
            use_cpu=self.device.type == "cpu",
            bf16=False,
            fp16=False,
            eval_strategy="no",
            **derived,
        )

    def remove_run(self, run_id: int) -> None:
        """Drop a run's adapter, optimizer and trainer (deleted, pruned-for-good or finished)."""
        record = self.registry.pop(run_id, None)
        if record is None:
            return
        entry = self.bases[record.spec.model_key]
        entry.run_ids.discard(run_id)
        entry.model.delete_adapter(record.spec.adapter_name)  # PEFT allows deleting the last one
        if self._active == run_id:
            self._active = None

    def _activate(self, record: AdapterRecord) -> float:
        """Make the run's adapter the active one; return the swap time in seconds."""
        start = time.perf_counter()
        entry = self.bases[record.spec.model_key]
        if self._active != record.spec.run_id:
            entry.model.set_adapter(record.spec.adapter_name)
            self._active = record.spec.run_id
        torch.set_rng_state(record.rng_state)
        if record.cuda_rng_state is not None:
            torch.cuda.set_rng_state(record.cuda_rng_state, self.device)
        elapsed = time.perf_counter() - start
        self.swap_seconds.append(elapsed)
        return elapsed

    # ------------------------------------------------------------------ the slice loop
    def placement(self, run_id: int, start_step: int, end_step: int) -> SliceResult | None:
        """Check that a grant ``start_step..end_step`` fits where the run stands here.

        Returns the cached outcome when the slice already ran (a call retried after its reply
        was lost: it must neither train again nor lose the slice's metrics); ``None`` when the
        run is resident at ``start_step`` and the slice should train. Raises
        ``RunNotPlacedError`` otherwise: the caller re-places the run from its last durable
        checkpoint (``add_run``) and calls again.
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

    def _check_end(self, record: AdapterRecord, end_step: int) -> None:
        """Refuse a slice past the run's plan: its data loader would run dry (StopIteration)."""
        total = record.spec.plan.total_steps
        if not record.steps_done <= end_step <= total:
            raise RunFailedError(
                f"run {record.spec.run_id}: a slice to end_step={end_step} is outside its plan "
                f"(at step {record.steps_done} of {total} optimizer steps); a grant must end "
                f"at or after the run's current step and at most at step {total}"
            )

    def run_slice(
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
        self._check_end(record, end_step)
        record.last_result = None
        self.phase = f"training run {run_id} steps {record.steps_done}..{end_step}"
        started_at = time.time()
        start = time.perf_counter()
        swap = self._activate(record)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        first = record.steps_done
        metrics: list[dict[str, float]] = []
        tokens = 0
        train_start = time.perf_counter()
        try:
            with self._autocast():
                for step in range(first, end_step):
                    step_metrics, step_tokens = self._optimizer_step(record, step)
                    if evaluation.evaluates_at(self, record, step + 1, end_step, evaluate):
                        step_metrics.update(evaluation.evaluate_in_slice(self, record))
                    metrics.append(step_metrics)
                    tokens += step_tokens
        except BaseException:
            # A failed step may leave gradients (NaN ones, for a diverged run) on the shared
            # model; the next run's gradient clipping would read them. Clear them, then fail.
            self.bases[record.spec.model_key].model.zero_grad(set_to_none=True)
            raise
        train_seconds = time.perf_counter() - train_start
        forward_logs(record.trainer, record.spec.params, metrics)
        record.rng_state = torch.get_rng_state()
        if record.cuda_rng_state is not None:
            record.cuda_rng_state = torch.cuda.get_rng_state(self.device)
        eval_metrics = self.evaluate(run_id) if evaluate else None
        self.busy_seconds += time.perf_counter() - start
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
            memory=memory_figures(self.device),
            started_at=started_at,
            ended_at=time.time(),
        )
        return record.last_result

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast around a whole slice (several optimizer steps), with autocast's weight
        cache OFF: the cache keeps one bf16 copy of each trainable leaf tensor (the LoRA
        weights) for the life of the autocast region, and the optimizer updates the float32
        weights in place without invalidating it, so every forward after the slice's first
        step would see the slice's starting weights (measured: a 2-slice run diverged from a
        1-slice one from the first step of the second slice; tests/actors/test_autocast.py).
        ``use_bf16`` is chosen by the executor (CUDA with bf16 support); setting it on a CPU
        executor runs the same path on the CPU (the test does)."""
        if self.use_bf16:
            return torch.autocast(
                device_type=self.device.type, dtype=torch.bfloat16, cache_enabled=False
            )
        return contextlib.nullcontext()

    def _optimizer_step(self, record: AdapterRecord, step: int) -> tuple[dict[str, float], int]:
        """One optimizer step, in the order of ``transformers.Trainer._run_epoch``."""
        trainer = record.trainer
        model = self.bases[record.spec.model_key].model
        batches = record.batches.take(step)
        trainer.current_gradient_accumulation_steps = len(batches)
        num_items = trainer._get_num_items_in_batch(batches, trainer.args.device)
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
        trainer.accelerator.gradient_state._set_sync_gradients(True)
        if trainer.args.max_grad_norm and trainer.args.max_grad_norm > 0:
            grad_norm = trainer._clip_grad_norm(model)
        else:
            grad_norm = trainer._get_grad_norm(model)
        trainer.optimizer.step()
        learning_rate = trainer._get_learning_rate()
        trainer.lr_scheduler.step()
        model.zero_grad(set_to_none=True)
        self.timeline.compute_seconds += time.perf_counter() - compute_start
        trainer.state.global_step += 1
        record.steps_done = step + 1
        tokens = tokens or int(trainer.state.num_input_tokens_seen - tokens_seen)
        return algorithms.step_metrics(trainer, step, loss_value, learning_rate, grad_norm), tokens

    # ------------------------------------------------------------------ fused slices
    def fusable(self, run_id: int) -> str | None:
        """``None`` if the run can share a fused pass, else why not (see ``fused.fusable``)."""
        record = self.registry[run_id]
        return fused.fusable(record, self.bases[record.spec.model_key].model)

    def run_fused(
        self, grants: list[tuple[int, int, bool]]
    ) -> dict[int, SliceResult | BaseException]:
        """Train several runs' slices in one fused pass (``fused_slice.run_fused``)."""
        return fused_slice.run_fused(self, grants)

    # ------------------------------------------------------------------ evaluation
    def evaluate_group(
        self, run_ids: list[int]
    ) -> dict[int, dict[str, float] | BaseException | None]:
        """Evaluate runs of one base fused where possible (``evaluation.evaluate_group``)."""
        return evaluation.evaluate_group(self, run_ids)

    def evaluate(self, run_id: int, generate: bool = True) -> dict[str, float] | None:
        """Evaluate one run on the eval set (``actors.engine.evaluation.evaluate``)."""
        return evaluation.evaluate(self, run_id, generate)

    def generation_metrics(self, run_ids: list[int]) -> dict[int, dict[str, float] | BaseException]:
        """Generation metrics of the runs (``actors.engine.evaluation.generation_metrics``)."""
        return evaluation.generation_metrics(self, run_ids)

    # ------------------------------------------------------------------ introspection
    def resident_parameter_count(self) -> dict[str, int]:
        """Parameters held by the executor: base weights (counted once) and adapters."""
        base = adapters = 0
        for entry in self.bases.values():
            for name, p in entry.raw_model.named_parameters():
                if "lora_" in name:
                    adapters += p.numel()
                else:
                    base += p.numel()
        return {"base": base, "adapters": adapters}

    def stats(self) -> dict[str, Any]:
        return {
            "base_loads": dict(self.base_loads),
            "runs": sorted(self.registry),
            "swap_seconds": list(self.swap_seconds),
            "busy_seconds": self.busy_seconds,
            "fusion": dict(self.fusion_stats),
            "device": str(self.device),
            "memory": memory_figures(self.device),
            "parameters": self.resident_parameter_count(),
        }


def forward_logs(trainer: Any, params: dict[str, Any], metrics: list[dict[str, float]]) -> None:
    """Hand a slice's step metrics to the TRL integrations the run's ``report_to`` kept (wandb,
    tensorboard; ``rf_ray.specs.build_trl_config``), as ``Trainer.log`` would: rf-ray drives
    the steps itself, so nothing else calls their ``on_log``. Same cadence as MLflow: every
    ``logging_steps`` steps, and every step that evaluated."""
    if not trainer.args.report_to or trainer.args.report_to == ["none"]:
        return
    every = params.get("logging_steps", 1)
    every = every if isinstance(every, int) and every >= 1 else 1
    current = trainer.state.global_step
    try:
        for m in metrics:
            step = int(m["step"])
            if step % every and not any(k.startswith("eval_") for k in m):
                continue
            trainer.state.global_step = step  # the integrations read the step from the state
            logs = {k: v for k, v in m.items() if k != "step"}
            trainer.control = trainer.callback_handler.on_log(
                trainer.args, trainer.state, trainer.control, logs
            )
    finally:
        trainer.state.global_step = current
