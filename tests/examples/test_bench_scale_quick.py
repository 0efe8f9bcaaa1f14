"""bench/bench_scale.py: its FLOPs accounting matches the models it builds, and its quick mode
runs end to end with figures that agree with each other (never a timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import bench_scale  # noqa: E402


@pytest.mark.parametrize("shape", ["tiny", "tiny-qwen"])
def test_flops_accounting_counts_the_parameters_the_model_has(shape):
    """``4 N`` of the accounting is the model's matmul weights: every parameter but the
    norms, the biases and the input embedding (a lookup, no FLOPs), the LM head counted once
    whether or not it is tied to the embedding."""
    model, _ = bench_scale.build_model(shape)
    config = model.config
    matmul = sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.dim() == 2 and "embed_tokens" not in name
    )
    if config.tie_word_embeddings:  # the tied head is the embedding's tensor: count it once
        matmul += model.get_output_embeddings().weight.numel()
    attention = 12 * config.num_hidden_layers * 100 * config.hidden_size
    assert bench_scale.flops_per_token(shape, 100) == 4 * matmul + attention


def test_real_shapes_have_their_published_sizes():
    """The 1B and 8B shapes are what their names say (the matmul weights, in billions)."""
    n_1b = (bench_scale.flops_per_token("llama1b", 0)) / 4
    n_8b = (bench_scale.flops_per_token("llama8b", 0)) / 4
    assert 1.2e9 < n_1b < 1.3e9  # Llama-3.2-1B: 1.24B parameters, embedding tied to the head
    assert 7.4e9 < n_8b < 7.6e9  # Llama-3-8B: 8.03B, less its 0.53B input embedding


@pytest.mark.slow
def test_bench_scale_quick(tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_scale.py"), "--quick", "--out", str(out)],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    res = json.loads(out.read_text())
    assert "CPU" in res["machine"]
    assert res["skipped"] == []
    assert [c["label"] for c in res["cells"]] == [c.label() for c in bench_scale.QUICK_PLAN]
    for cell in res["cells"]:
        ways = cell["ways"]
        assert len(ways) >= 2
        tokens = {w["tokens"] for w in ways.values()}
        assert len(tokens) == 1, "every way trains the same tokens"
        assert tokens.pop() > 0
        for name, way in ways.items():
            assert way["tokens_per_second"] > 0
            assert 0 < way["first_comparison_seconds"] <= way["wall_seconds"]
            assert way["mfu"] is None  # no device peak on the CPU
            if name != "serial":
                assert 0 < way["compute_share"] <= 1
                assert way["accounted_mib_per_run"] > 0
        sliced = ways["time-sliced"]
        assert sliced["switch_p50_ms"] <= sliced["switch_p99_ms"]
        assert ways["fused"]["fused_passes"] > 0
        assert sliced["fused_passes"] == 0
        derived = cell["derived"]
        assert derived["fused_over_time_sliced"] > 0
        # The same training, three ways: float32 losses agree (fused within rounding).
        assert derived["max_loss_diff_fused"] < 1e-4
    headline = res["cells"][0]  # the one cell with vanilla TRL beside the engine
    assert headline["derived"]["max_loss_diff_serial"] < 1e-5
    assert headline["derived"]["first_comparison_fused_over_serial"] > 0
    # Mixed ranks 16 and 64 on q, k, v, o of the tiny Llama (hidden 64, kv 32, 2 layers).
    first = res["cells"][0]["ways"]["time-sliced"]
    per_layer = {r: r * (64 + 64) * 2 + r * (64 + 32) * 2 for r in (16, 64)}
    assert first["adapter_params_per_run"] == 2 * (per_layer[16] + per_layer[64]) / 2
    (grpo,) = res["grpo"]
    assert grpo["fused"]["tokens"] == grpo["time-sliced"]["tokens"] > 0
    for way in ("fused", "time-sliced"):
        assert 0 < grpo[way]["generation_share"] < 1
    assert "| tiny L=32 b=2 K=2 | fused |" in proc.stdout  # the markdown table
