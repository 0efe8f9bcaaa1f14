"""The adapter registry: the resident base models, one record per run, which adapter is active.

One manager owns the adapters' lifecycle (as ``vllm/lora/model_manager.py`` does): ``add`` loads
the run's base model if it is not resident yet (once per model key, through the user's
``create_model_fn``), adds the run's LoRA adapter to the one ``PeftModel`` wrapping that base
and builds the run's TRL trainer (``actors.engine.algorithms``); ``remove`` drops them;
``activate`` makes a run's adapter the active one, a pointer move (``PeftModel.set_adapter``):
no weights are copied or reloaded. Reading it is a ``Mapping`` from run id to ``AdapterRecord``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from actors.engine import algorithms
from actors.engine.algorithms import accelerate_internals
from actors.engine.data_prep import PreparedDatasets
from actors.engine.runtime import Runtime
from actors.engine.spec import RunSpec
from actors.messages import SliceResult
from actors.storage.durable import private_umask

logger = logging.getLogger(__name__)


@dataclass
class BaseEntry:
    """One resident base model, shared by every run whose spec has its model_key."""

    model: Any
    """The ``PeftModel`` wrapping the frozen base; ``None`` until its first adapter is added."""
    raw_model: Any
    tokenizer: Any
    run_ids: set[int] = field(default_factory=set)
    forward_patched: bool = False
    """Whether a TRL trainer has patched ``raw_model.forward`` (the first one does; see
    ``AdapterRegistry.add``)."""


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
    training again (see ``TimeSliced.placement``)."""


class AdapterRegistry(Mapping[int, AdapterRecord]):
    """The runs resident on one executor (see the module docstring)."""

    def __init__(
        self,
        create_model_fn: Callable[[Any], tuple[Any, Any]],
        train_dataset: Any,
        eval_dataset: Any,
        runtime: Runtime,
    ) -> None:
        self.create_model_fn = create_model_fn
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.runtime = runtime
        self.bases: dict[str, BaseEntry] = {}
        """Resident base models by ``RunSpec.model_key``."""
        self.prepared = PreparedDatasets()
        """Prepared datasets shared by runs with the same preparation setting."""
        self._records: dict[int, AdapterRecord] = {}
        self._active: int | None = None

    # ------------------------------------------------------------------ reading
    def __getitem__(self, run_id: int) -> AdapterRecord:
        return self._records[run_id]

    def __iter__(self) -> Iterator[int]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def base_of(self, record: AdapterRecord) -> BaseEntry:
        """The resident base the run's adapter sits on."""
        return self.bases[record.spec.model_key]

    def model_of(self, record: AdapterRecord) -> Any:
        """The ``PeftModel`` that carries the run's adapter."""
        return self.bases[record.spec.model_key].model

    def resident_parameter_count(self) -> dict[str, int]:
        """Parameters held here: base weights (counted once) and adapters."""
        base = adapters = 0
        for entry in self.bases.values():
            for name, p in entry.raw_model.named_parameters():
                if "lora_" in name:
                    adapters += p.numel()
                else:
                    base += p.numel()
        return {"base": base, "adapters": adapters}

    # ------------------------------------------------------------------ bases and adapters
    def load_base(self, spec: RunSpec) -> BaseEntry:
        """``spec``'s base model, loaded now if it is not resident (once per model key)."""
        entry = self.bases.get(spec.model_key)
        if entry is None:
            self.runtime.phase = "loading base model (create_model_fn)"
            model, tokenizer = self.create_model_fn(spec.model_config)
            model.to(self.runtime.device)
            for p in model.parameters():
                p.requires_grad_(False)
            entry = BaseEntry(model=None, raw_model=model, tokenizer=tokenizer)
            self.bases[spec.model_key] = entry
            loads = self.runtime.stats.base_loads
            loads[spec.model_key] = loads.get(spec.model_key, 0) + 1
            timeline = self.runtime.timeline
            timeline.base_loaded_at = timeline.base_loaded_at or time.time()
            logger.info("loaded base model %s on %s", spec.model_key, self.runtime.device)
        return entry

    def add(self, spec: RunSpec, state: dict[str, Any] | None = None) -> None:
        """Register a run: add its adapter (seeded from the run), build its trainer.

        ``state`` (from ``actors.engine.snapshot.capture``) restores adapter, optimizer,
        scheduler, RNG and progress, e.g. for a warm-started clone or an executor that was
        restarted. A run already here is left as it is.
        """
        if spec.run_id in self._records:
            return
        # Before the run's TrainingArguments touch accelerate's process-wide state:
        saved = accelerate_internals.save_shared_state()
        entry = self.load_base(spec)
        self.runtime.phase = f"building trainer of run {spec.run_id}"
        self._add_adapter(entry, spec)
        previous_forward = entry.raw_model.forward
        try:
            trainer, prep_key = self._build_trainer(entry, spec)
        except BaseException:
            # A trainer that fails half-way must not break the runs already here: its
            # TrainingArguments reset accelerate's process-wide state, which only a finished
            # Trainer rebuilds (seen: a raising formatting_func left the next run's slices with
            # "'AcceleratorState' object has no attribute 'parallelism_config'").
            accelerate_internals.restore_shared_state(saved)
            entry.raw_model.forward = previous_forward
            entry.model.delete_adapter(spec.adapter_name)
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
        device = self.runtime.device
        record = AdapterRecord(
            spec=spec,
            trainer=trainer,
            batches=algorithms.make_batch_source(spec, trainer),
            rng_state=torch.get_rng_state(),
            cuda_rng_state=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        )
        self._records[spec.run_id] = record
        self.runtime.timeline.added_at.setdefault(spec.run_id, time.time())
        if state is not None:
            from actors.engine.snapshot import restore_into

            restore_into(record, entry.model, state)

    def _add_adapter(self, entry: BaseEntry, spec: RunSpec) -> None:
        """Add the run's LoRA adapter to the base's ``PeftModel`` and make it the active one."""
        from peft import get_peft_model

        name = spec.adapter_name
        # LoRA initialisation draws from the global torch RNG: seed it from the run, so a run's
        # adapter does not depend on how many adapters were added before it.
        torch.manual_seed(spec.trl_args.seed)
        if entry.model is None:
            entry.model = get_peft_model(entry.raw_model, spec.lora_config, adapter_name=name)
        else:
            if name in entry.model.peft_config:  # left by a removed or failed run of this id
                entry.model.delete_adapter(name)
            entry.model.add_adapter(name, spec.lora_config)
        entry.model.set_adapter(name)
        self._active = spec.run_id

    def _build_trainer(self, entry: BaseEntry, spec: RunSpec) -> tuple[Any, str | None]:
        """The run's TRL trainer on the shared model, and its data-preparation key.

        Data preparation runs once per distinct setting (``actors.engine.data_prep``): a later
        run with the same setting gets the prepared datasets and TRL skips preparing them."""
        args = self.trainer_args(spec.trl_args)
        prep_key = self.prepared.key(spec, args)
        shared = self.prepared.lookup(prep_key)
        build_spec, train, evals = spec, self.train_dataset, self.eval_dataset
        if shared is not None:
            build_spec, args = self.prepared.reuse(spec, args)
            train, evals = shared.train, shared.eval
        with private_umask():  # datasets' map caches land beside data/train: keep them 0600
            trainer = algorithms.make_trainer(
                build_spec, args, entry.model, entry.tokenizer, train, evals
            )
        return trainer, prep_key

    def trainer_args(self, args: Any) -> Any:
        """The run's TRL config with the device options the executor, not the user, decides: a
        TRL config defaults to bf16 and refuses to run on a CPU unless told ``use_cpu``.

        On CUDA the slice runs under ``torch.autocast(bfloat16)`` set by the executor itself
        (``Runtime.autocast``): letting each trainer's Accelerator patch the shared model's
        forward would stack one autocast wrapper per run.
        """
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
            use_cpu=self.runtime.device.type == "cpu",
            bf16=False,
            fp16=False,
            eval_strategy="no",
            **derived,
        )

    def remove(self, run_id: int) -> None:
        """Drop a run's adapter, optimizer and trainer (deleted, pruned-for-good or finished)."""
        record = self._records.pop(run_id, None)
        if record is None:
            return
        entry = self.bases[record.spec.model_key]
        entry.run_ids.discard(run_id)
        entry.model.delete_adapter(record.spec.adapter_name)  # PEFT allows deleting the last one
        if self._active == run_id:
            self._active = None

    # ------------------------------------------------------------------ the active adapter
    def activate(self, record: AdapterRecord) -> float:
        """Make the run's adapter the active one and its RNG streams the global ones; return the
        swap time in seconds."""
        start = time.perf_counter()
        if self._active != record.spec.run_id:
            self.model_of(record).set_adapter(record.spec.adapter_name)
            self._active = record.spec.run_id
        torch.set_rng_state(record.rng_state)
        if record.cuda_rng_state is not None:
            torch.cuda.set_rng_state(record.cuda_rng_state, self.runtime.device)
        elapsed = time.perf_counter() - start
        self.runtime.stats.swap_seconds.append(elapsed)
        return elapsed

    def forget_active(self) -> None:
        """The active adapter may have changed behind the registry's back (a fused pass, lanes
        served alone): the next ``activate`` sets it whatever it was."""
        self._active = None
