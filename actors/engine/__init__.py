"""The training engine: torch, TRL and PEFT, no Ray. ``actors.base_model_actor`` is its Ray shell;
tests and benchmarks drive ``Executor`` directly.

The executor and its parts (each owns its state; none holds the executor):

* ``executor.py``: ``Executor``, built from the parts below; the actor shell calls it.
* ``registry.py``: ``AdapterRegistry``: the resident base models (loaded once each), one
  ``AdapterRecord`` per run (adapter, TRL trainer, optimizer, RNG, steps), the active adapter.
* ``time_sliced.py``: ``TimeSliced``: one run's slice, step by step as ``Trainer._run_epoch``.
* ``fused_slice.py``: ``FusedSlices``: several runs' slices in one pass, time-sliced fallback.
* ``evaluation.py``: ``Evaluator``: evaluation in or after a slice, alone or fused, and
  generation metrics.
* ``runtime.py``: ``Runtime``: device, bf16 autocast, the current phase, shared by the parts.
* ``stats.py``: ``EngineStats`` and ``FusionStats``: the executor's counters, typed.
* ``timeline.py``: start-up milestones and slice timings, for benchmarks.

The fused path, from the leaf up:

* ``lora_kernel.py``: the segmented-LoRA kernel (``Segment``, ``segmented_lora``,
  ``concat_rows``, ``slice_outputs``): several adapters on their own rows of one batch; a leaf.
* ``eligibility.py``: which runs may fuse (``fusable``, ``fused_group``).
* ``fused.py``: the fused training step: per-run ``Cursor``, capture/replay of each run's own
  TRL loss, ``fused_micro_step``.
* ``lockstep.py``: lanes that run each run's own TRL code in lock step, and ``FusedServer``,
  which serves their model calls together.
* ``fused_eval.py``, ``fused_grpo.py``: fused evaluation; fused GRPO input preparation.
* ``generation.py``: ``generate_multi``: several adapters' prompts in one batched decode.
* ``gen_eval.py``: generation metrics at chunk ends (``GenerationEval``), ``samples.json``.

Runs and data:

* ``spec.py``: ``RunSpec``, the plain description of one run the driver hands over.
* ``algorithms/``: TRL glue, one module per algorithm (``sft``, ``dpo``, ``grpo``), and every
  library private rf-ray touches, one module per library (``*_internals.py``).
* ``data_prep.py``: datasets prepared once per distinct setting, shared by runs.
* ``snapshot.py``: ``capture`` a run's live state (adapter, optimizer, schedule, RNG) into host
  memory, ``restore_into`` a registered run; ``actors.storage.checkpoint`` writes the files.
* ``ckpt_writer.py``: ``CheckpointWriter``, the background thread that makes checkpoints
  durable while the next slice trains.
"""
