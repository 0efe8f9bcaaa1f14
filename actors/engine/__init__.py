"""The training engine: torch, TRL and PEFT, no Ray.

``Executor`` (``executor.py``) holds the resident base models and one adapter per run, and runs
slices, evaluations and generation, time-sliced or fused. ``actors.base_model_actor`` is its Ray
shell; tests and benchmarks drive it directly.
"""
