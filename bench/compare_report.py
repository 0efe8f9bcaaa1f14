"""Tables and the plot of ``bench/bench_compare.py``: medians over repetitions, ratios of rf-ray
to each peer, whether the ways agree on the best config, and a PNG of every run's learning curve
(with pruning points) next to the memory comparison.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

WAY_NAMES = {
    "serial": "serial vanilla TRL",
    "serial_one": "serial TRL, one process",
    "tune_asha": "Ray Tune + ASHA",
    "rf_sh": "rf-ray + SH",
    "rf_none": "rf-ray, no pruning",
}
SHORT_NAMES = {"serial": "serial TRL", "serial_one": "TRL loop", "tune_asha": "Tune+ASHA",
               "rf_sh": "rf-ray SH", "rf_none": "rf-ray no-prune"}  # fmt: skip
CASE_NAMES = {"sft8": "SFT K=8", "sft16": "SFT K=16", "grpo": "GRPO K=3", "sft8w": "SFT K=8 wide",
              "sft2": "SFT K=2", "grpo2": "GRPO K=2"}  # fmt: skip
# Figures compared across ways: (key, label, format).
FIGURES = [
    ("time_to_best_seconds", "Wall time to the final best config (s)", ".1f"),
    ("wall_seconds", "Wall time, all configs decided (s)", ".1f"),
    ("time_to_all_first_metric_seconds", "Time until every config has a first metric (s)", ".1f"),
    ("tokens", "Trained tokens", ",.0f"),
    ("tokens_per_second", "Tokens/s (trained tokens / wall)", ".0f"),
    ("peak_rss_mib", "Peak RSS, sum over the process tree (MiB)", ",.0f"),
    ("peak_pss_mib", "Peak PSS, sum over the process tree (MiB)", ",.0f"),
    ("base_loads", "Base-model loads", ".0f"),
    ("busy_fraction", "Busy fraction (training+eval time / wall)", ".0%"),
]
RF_ONLY = [
    ("swap_p50_seconds", "Adapter swap p50 (ms)", 1e3, ".3f"),
    ("swap_p99_seconds", "Adapter swap p99 (ms)", 1e3, ".3f"),
    ("executor_peak_rss_mib", "Executor process peak RSS (MiB)", 1.0, ",.0f"),
]
SLOPE_ROWS = [
    ("peak_rss_mib", "RSS, process tree"),
    ("peak_pss_mib", "PSS, process tree"),
    ("executor_peak_rss_mib", "RSS, executor (the process holding the model)"),
    ("device_peak_mib", "device memory, torch"),
    ("gpu_used_peak_mib", "GPU memory in use, nvidia-smi"),
]
PAIRS = [("rf_sh", "serial"), ("rf_sh", "serial_one"), ("rf_sh", "tune_asha"),
         ("rf_none", "serial"), ("rf_none", "serial_one"), ("rf_none", "tune_asha")]  # fmt: skip
# rf-ray's engine figures (bench/engine_figures.py): (key, label, format).
ENGINE = [
    ("executor_ready_s", "Start-up: base model resident (s after run_fit)", ".1f"),
    ("first_slice_start_s", "Start-up: first slice starts (s)", ".1f"),
    ("all_trials_up_s", "Start-up: every run placed (s)", ".1f"),
    ("busy_fraction_whole", "Executor busy, whole run_fit", ".0%"),
    ("busy_fraction_steady", "Executor busy, steady state", ".0%"),
    ("slice_overhead", "Slice overhead (not fwd/bwd/optimizer)", ".1%"),
    ("checkpoint_queue_peak_mib", "Checkpoint queue peak (MiB)", ".1f"),
]


def _median(values: list[Any]) -> float | None:
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return statistics.median(xs) if xs else None


def _fmt(v: Any, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def aggregate(res: dict[str, Any]) -> dict[str, Any]:
    """Medians per (case, way), ratios rf-ray / peer, best-config agreement, memory slopes."""
    summary: dict[str, Any] = {}
    results = res["results"]
    for case, ways in results.items():
        med = {
            way: {key: _median([r[key] for r in reps]) for key, _, _ in FIGURES}
            | {key: _median([r[key] for r in reps]) for key, _, _, _ in RF_ONLY}
            | {
                "device_peak_mib": _median([r["device_peak_mib"] for r in reps]),
                "gpu_used_peak_mib": _median([r["gpu_used_peak_mib"] for r in reps]),
                "own_cpu_seconds": _median([r["cpu"]["own_cpu_seconds"] for r in reps]),
                "other_cpu_seconds": _median(
                    [r["cpu"]["other_processes_cpu_seconds"] for r in reps]
                ),
                "pruned_runs": _median([len(r["pruned"]) for r in reps]),
            }
            for way, reps in ways.items()
            if reps
        }
        ratios: dict[str, dict[str, float | None]] = {}
        for rf, peer in PAIRS:
            pairs = list(zip(ways.get(rf, []), ways.get(peer, [])))
            ratios[f"{rf}/{peer}"] = {
                key: _median([a[key] / b[key] for a, b in pairs if a[key] and b[key]])
                for key, _, _ in FIGURES
            }
        engine = {
            way: {key: _median([r.get("engine", {}).get(key) for r in reps])
                  for key, _, _ in ENGINE}
            for way, reps in ways.items()
            if reps and way.startswith("rf")
        }  # fmt: skip
        reference = [r["best_config"] for r in ways.get("serial", [])]
        bests = {way: [r["best_config"] for r in reps] for way, reps in ways.items()}
        same = {way: all(b == reference[i] for i, b in enumerate(bs)) if reference else None
                for way, bs in bests.items()}  # fmt: skip
        summary[case] = {
            "median": med,
            "engine": engine,
            "ratios": ratios,
            "best_configs": bests,
            "same_best_as_serial": same,
            "all_ways_same_best": bool(reference) and all(v is True for v in same.values()),
        }
    if "sft8" in results and "sft16" in results:
        summary["memory_per_extra_run"] = memory_slopes(results["sft8"], results["sft16"], 8)
    return summary


def memory_slopes(small: dict[str, Any], large: dict[str, Any], extra: int) -> dict[str, Any]:
    """Memory each extra run adds: (peak at K=16 - peak at K=8) / 8, per repetition, median."""
    out: dict[str, Any] = {}
    for way in small:
        pairs = list(zip(small[way], large[way]))
        out[way] = {
            key: _median(
                [(b[key] - a[key]) / extra for a, b in pairs if a[key] is not None and b[key]]
            )
            for key in (
                "peak_rss_mib",
                "peak_pss_mib",
                "executor_peak_rss_mib",
                "device_peak_mib",
                "gpu_used_peak_mib",
            )
        }
    return out


def _positions(ways: dict[str, list[dict[str, Any]]]) -> str:
    """Where serial TRL's best config sat in each repetition's order (serial runs and one-trial-
    at-a-time ASHA reach it after the configs before it)."""
    reps = ways.get("serial") or []
    spots = [r["order"].index(r["best_config"]) + 1 for r in reps
             if r.get("order") and r["best_config"] in r["order"]]  # fmt: skip
    if not spots:
        return ""
    k = len(reps[0]["order"])
    return f"The best config was number {', '.join(map(str, spots))} of {k} in the order."


def markdown(res: dict[str, Any]) -> str:
    """The ratio table, the absolute table per case, and the agreement lines."""
    from bench.common import machine_line

    summary = res["summary"]
    cases = list(res["results"])
    lines = [f"Machine: {machine_line(res['machine'])}", ""]
    for case in cases:
        setup = res["setup"][case]
        lines.append(
            f"- {CASE_NAMES.get(case, case)}: {len(setup['configs'])} configs, "
            f"{setup['train_size']} {'prompts' if setup['kind'] == 'GRPO' else 'examples'} x 1 "
            f"epoch, {setup['num_chunks']} chunks, SH/ASHA eta={setup['eta']}, "
            f"min_chunks=grace_period={setup['min_chunks']}, max_t={setup['num_chunks']}."
        )
    defaults = res.get("rf_ray_run_fit_defaults") or {}
    if "fusion" in defaults:
        lines.append(
            f"- rf-ray: `run_fit` defaults apart from the pruner (fusion={defaults['fusion']})."
        )
    lines += ["", f"Medians over {res['reps']} repetition(s); configs in a seeded shuffled "
              "order per repetition, the same for every way.", ""]  # fmt: skip

    # 1. Ratios rf-ray / peer.
    head = [f"{SHORT_NAMES[a]} / {SHORT_NAMES[b]}" for a, b in PAIRS]
    lines += ["**rf-ray / peer** (median of per-repetition ratios; below 1 = rf-ray needs less)",
              "", "| case | figure | " + " | ".join(head) + " |",
              "|---|---|" + "---|" * len(head)]  # fmt: skip
    for case in cases:
        ratios = summary[case]["ratios"]
        for key, label, _ in FIGURES:
            cells = [_fmt(ratios[f"{a}/{b}"][key], ".2f") for a, b in PAIRS]
            lines.append(f"| {CASE_NAMES.get(case, case)} | {label} | " + " | ".join(cells) + " |")
    lines.append("")

    # 2. Absolute medians per case.
    for case in cases:
        s = summary[case]
        med = s["median"]
        ways = [w for w in WAY_NAMES if w in med]
        lines += [f"**{CASE_NAMES.get(case, case)}** (medians)", "",
                  "| figure | " + " | ".join(WAY_NAMES[w] for w in ways) + " |",
                  "|---|" + "---|" * len(ways)]  # fmt: skip
        for key, label, spec in FIGURES:
            lines.append(f"| {label} | " + " | ".join(_fmt(med[w][key], spec) for w in ways) + " |")
        lines.append("| Runs pruned | " + " | ".join(_fmt(med[w]["pruned_runs"], ".0f")
                                                    for w in ways) + " |")  # fmt: skip
        for key, label, scale, spec in RF_ONLY:
            cells = [_fmt(None if med[w][key] is None else med[w][key] * scale, spec)
                     if w.startswith("rf") else "-" for w in ways]  # fmt: skip
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        if any(med[w]["device_peak_mib"] is not None for w in ways):
            lines.append("| Peak device memory, torch (MiB) | "
                         + " | ".join(_fmt(med[w]["device_peak_mib"], ",.0f") for w in ways)
                         + " |")  # fmt: skip
        if any(med[w]["gpu_used_peak_mib"] is not None for w in ways):
            lines.append("| Peak GPU memory in use, nvidia-smi (MiB) | "
                         + " | ".join(_fmt(med[w]["gpu_used_peak_mib"], ",.0f") for w in ways)
                         + " |")  # fmt: skip
        lines.append("| CPU s used by this way / by other processes | " + " | ".join(
            f"{_fmt(med[w]['own_cpu_seconds'], '.0f')} / {_fmt(med[w]['other_cpu_seconds'], '.0f')}"
            for w in ways) + " |")  # fmt: skip
        bests = s["best_configs"]
        lines.append("| Best config (each repetition) | "
                     + " | ".join(", ".join(sorted(set(map(str, bests[w])))) for w in ways)
                     + " |")  # fmt: skip
        engine = s.get("engine") or {}
        if engine:
            rf = list(engine)
            lines += ["", "| rf-ray engine | " + " | ".join(WAY_NAMES[w] for w in rf) + " |",
                      "|---|" + "---|" * len(rf)]  # fmt: skip
            for key, label, spec in ENGINE:
                lines.append(f"| {label} | " + " | ".join(_fmt(engine[w][key], spec) for w in rf)
                             + " |")  # fmt: skip
        agree = "yes" if s["all_ways_same_best"] else "NO"
        where = _positions(res["results"][case])
        lines += ["", f"Same best config in every way and repetition: {agree}. {where}", ""]

    slopes = summary.get("memory_per_extra_run")
    if slopes:
        lines += ["**Memory each extra run adds**: (peak at K=16 - peak at K=8) / 8 (MiB)", "",
                  "| | " + " | ".join(WAY_NAMES[w] for w in slopes) + " |",
                  "|---|" + "---|" * len(slopes)]  # fmt: skip
        for key, label in SLOPE_ROWS:
            cells = [_fmt(slopes[w][key], "+,.1f") for w in slopes]
            if any(c != "n/a" for c in cells):
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    ops = res.get("ic_ops")
    if ops:
        lines += ["**IC-op latency** (rf-ray; `exp.stop(run)` until its slice has ended, "
                  "bench/bench_ops.py)", "",
                  "| max_slice_steps | ops | p50 (s) | max (s) |", "|---|---|---|---|"]  # fmt: skip
        for o in ops:
            bound = o["max_slice_steps"] or "whole chunk"
            p50, worst = _fmt(o["latency_p50_s"], ".3f"), _fmt(o["latency_max_s"], ".3f")
            lines.append(f"| {bound} | {o['ops']} | {p50} | {worst} |")
        lines.append("")
    bf16 = res.get("bf16")
    if bf16:
        lines.append("**GPU**: bf16 matmul {:.1f} TFLOP/s; toy model train tokens/s bf16 {:,.0f}, "
                     "fp32 {:,.0f}".format(bf16["bf16_matmul_tflops"],
                                          bf16["toy_train_tokens_per_second_bf16"],
                                          bf16["toy_train_tokens_per_second_fp32"]))  # fmt: skip
    return "\n".join(lines).rstrip() + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    """One row per case: every run's learning curve per way (first repetition) against the
    seconds since that way started, with its pruning point; the configs' legend; the memory
    comparison (median peaks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(res["results"])
    ways = [w for w in WAY_NAMES if any(res["results"][c].get(w) for c in cases)]
    ncols = len(ways) + 2
    fig, axes = plt.subplots(
        len(cases), ncols, figsize=(3.0 * ncols, 2.7 * len(cases)), squeeze=False,
        gridspec_kw={"width_ratios": [1.0] * len(ways) + [0.55, 1.0]},
    )  # fmt: skip
    for row, case in enumerate(cases):
        curves = axes[row][: len(ways)]
        _plot_curves(res, case, ways, curves, last_row=row == len(cases) - 1)
        handles, labels = curves[0].get_legend_handles_labels()
        legend_ax = axes[row][len(ways)]
        legend_ax.set_axis_off()
        legend_ax.legend(handles, labels, loc="center", fontsize=5.5, frameon=False,
                         title="configs", title_fontsize=6.5)  # fmt: skip
        _plot_memory(res["summary"][case]["median"], ways, axes[row][-1], case)
    fig.suptitle(
        "thick: the config the way picks as best; red x: run pruned there; dotted: the best "
        "config finished training",
        fontsize=7,
        y=0.005,
        va="bottom",
    )
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    plt.close(fig)


def _plot_curves(res: dict[str, Any], case: str, ways: list[str], axes: Any, last_row: bool):
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab20")
    keys = res["setup"][case]["configs"]
    colors = {k: cmap(i % 20) for i, k in enumerate(keys)}
    firsts = [reps[0] for reps in res["results"][case].values() if reps]
    xmax = max(r["wall_seconds"] for r in firsts)
    values = [c["metric"] for r in firsts for run in r["runs"].values() for c in run["chunks"]]
    pad = (max(values) - min(values)) * 0.05 or 0.01
    for col, (way, ax) in enumerate(zip(ways, axes)):
        reps = res["results"][case].get(way) or []
        if not reps:
            ax.set_axis_off()
            continue
        r = reps[0]
        for key in keys:  # legend in the case's config order
            run = r["runs"][key]
            xs = [c["t"] for c in run["chunks"]]
            ys = [c["metric"] for c in run["chunks"]]
            best = key == r["best_config"]
            ax.plot(xs, ys, marker=".", ms=3, lw=2.2 if best else 0.9, color=colors[key],
                    label=key)  # fmt: skip
            if key in r["pruned"] and xs:
                ax.plot(xs[-1], ys[-1], "x", color="red", ms=6, mew=1.5)
        if r["time_to_best_seconds"] is not None:
            ax.axvline(r["time_to_best_seconds"], color="black", ls=":", lw=0.8)
        ax.set_xlim(0, xmax * 1.02)
        ax.set_ylim(min(values) - pad, max(values) + pad)  # one scale across the row
        ax.set_title(f"{WAY_NAMES[way]}\n{CASE_NAMES.get(case, case)}, wall "
                     f"{r['wall_seconds']:.0f} s", fontsize=8)  # fmt: skip
        ax.tick_params(labelsize=7)
        if col == 0:
            ax.set_ylabel(r["metric"], fontsize=8)
        if last_row:
            ax.set_xlabel("seconds since the way started", fontsize=7)


def _plot_memory(med: dict[str, Any], ways: list[str], ax: Any, case: str) -> None:
    names = [WAY_NAMES[w].replace(" + ", "\n+ ").replace(", ", ",\n") for w in ways]
    series = [("peak_rss_mib", "RSS sum"), ("peak_pss_mib", "PSS sum")]
    if any(med[w]["device_peak_mib"] is not None for w in ways):
        series.append(("device_peak_mib", "device (torch)"))
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        vals = [med[w][key] or 0.0 for w in ways]
        ax.bar([x + i * width for x in range(len(ways))], vals, width, label=label)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(ways))], names,
                  fontsize=6)  # fmt: skip
    ax.set_title(f"peak memory (MiB), process tree\n{CASE_NAMES.get(case, case)}", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6)
