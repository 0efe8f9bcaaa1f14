"""The base models the benchmarks train, importable by Ray workers (``create_model_fn``).

``toy`` is the shipped tiny Llama; ``wide`` is ``bench/bench_fused.py``'s 13M-parameter Llama,
large enough that one optimizer step takes over 100 ms on a 2-core CPU, so per-slice costs show
against real compute.
"""

from __future__ import annotations

from typing import Any


def load_bench_model(name: str) -> tuple[Any, Any]:
    """(model, tokenizer) of ``name`` ("toy" or "wide")."""
    from bench.bench_fused import load_model

    return load_model(name)


def wide_model(model_config: Any = None) -> tuple[Any, Any]:
    """``create_model_fn`` for rf-ray: the wide model, whatever the config names."""
    return load_bench_model("wide")
