"""What ``run_fit`` tells the person running it: how the runs will be pruned, when it starts,
and a summary when it ends (each run's status, chunks, best metric, and for a failed run the
last line of its error). Both are part of the driver's output, like the live view, and go to
the experiment's log file too.

A ``run_fit`` whose runs all failed before training anything raises ``NoRunTrainedError``
naming each failure, so a script that trained nothing does not exit 0.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from policies.errors import NoRunTrainedError
from policies.pruning import NoPruning, Pruner

logger = logging.getLogger(__name__)

ERROR_CHARS = 300
"""A failed run's error line is cut to this many characters in the summary."""
EVERY_RUN_TO_THE_END = "run_fit(..., pruner=NoPruning())"
"""The one argument that trains every run to the end."""


def pruning_note(pruner: Pruner, group_note: str | None = None) -> str:
    """How the runs will be pruned, and how to train every run to the end."""
    if group_note is not None:
        return f"pruning: {group_note}"
    if isinstance(pruner, NoPruning):
        return "pruning: none, every run trains to the end"
    return (
        f"pruning: {pruner.describe()}. rf-ray prunes by default (RapidFire AI's grid search "
        f"trains every run); to train every run to the end: {EVERY_RUN_TO_THE_END}"
    )


def evals_pruning_note(pruner: Pruner) -> str:
    """How ``run_evals``' pipelines will be pruned (none by default, as in RapidFire AI)."""
    if isinstance(pruner, NoPruning):
        return "pruning: none, every pipeline runs every shard"
    return f"pruning: {pruner.describe()}"


class GenerationFlagWarning(UserWarning):
    """A ``generation_config`` whose sampling fields may be ignored (see ``generation_notes``);
    once per experiment."""


SAMPLING_ONLY = ("temperature", "top_p", "top_k", "min_p", "typical_p")
"""Generation fields that only act when sampling (``do_sample=True``)."""


def generation_notes(runs: Sequence[Any]) -> dict[str, str]:
    """A note for a ``generation_config`` that sets sampling fields but not ``do_sample``
    (RapidFire's notebooks do): whether they act depends on the model's own generation config,
    and transformers' warning about "flags not valid" does not say so."""
    for run in runs:
        config = run.generation_config or {}
        flags = [k for k in SAMPLING_ONLY if config.get(k) is not None]
        if flags and "do_sample" not in config:
            return {
                "generation_config:do_sample": (
                    f"generation_config sets {', '.join(flags)} but not do_sample: they apply only "
                    "if the model's own generation config samples; otherwise generation is "
                    "greedy, they are ignored and transformers warns that these flags are not "
                    'valid. Add "do_sample": True (or False) to say which'
                )
            }
    return {}


def last_line(error: str | None) -> str:
    """The last non-empty line of a stored error (a traceback ends with the exception)."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    line = lines[-1] if lines else "(no error message)"
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 3] + "..."


def render(
    name: str, runs: Sequence[dict[str, Any]], metric: str, note: str, log: Path,
    tails: Mapping[int, str] | None = None, unit: str = "chunks",
) -> str:  # fmt: skip
    """The end-of-run_fit summary, one line per run: its best ``metric``, or ``tails[run_id]``
    where given (an evals pipeline's metrics with their intervals, as of its last shard)."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run["status"]] = counts.get(run["status"], 0) + 1
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    lines = [f"[rf-ray {name}] {len(runs)} runs: {tally}"]
    for run in runs:
        best = run.get("best_metric")
        shown = "-" if best is None or best != best else f"{best:.4f}"  # None or NaN: none yet
        tail = f"best {metric} {shown}" if tails is None else tails.get(run["run_id"], "-")
        line = (
            f"  run {run['run_id']}: {run['status']}, {unit} "
            f"{run['chunks_done']}/{run['total_chunks']}, {tail}"
        )
        if run["status"] == "failed":
            line += f", error: {last_line(run.get('error'))}"
        lines.append(line)
    lines.append(f"  {note}")
    lines.append(f"  log: {log}")
    return "\n".join(lines)


def check_trained(name: str, runs: Sequence[dict[str, Any]], log: Path) -> None:
    """Raise ``NoRunTrainedError`` when runs failed and none trained (completed, pruned or
    stopped after at least one step): every failure named, with the last line of its error."""
    failed = [r for r in runs if r["status"] == "failed"]
    trained = [
        r for r in runs if r["status"] in ("completed", "pruned", "stopped") and r["steps_done"]
    ]
    if not failed or trained:
        return
    named = "; ".join(f"run {r['run_id']}: {last_line(r.get('error'))}" for r in failed)
    raise NoRunTrainedError(
        f"experiment {name!r}: no run trained, {len(failed)} of {len(runs)} failed: {named}. "
        f"Full errors: get_runs_info()['error'] and {log}"
    )


def finish(
    name: str, info: Any, metric: str, note: str, exp_dir: Path,
    tails: Mapping[int, str] | None = None, unit: str = "chunks",
) -> None:  # fmt: skip
    """At the end of run_fit: show the summary of ``info`` (``get_runs_info()``), then raise
    ``NoRunTrainedError`` if nothing trained."""
    from actors.logs import log_path

    runs, log = info.to_dict("records"), log_path(exp_dir)
    say(render(name, runs, metric, note, log, tails, unit))
    check_trained(name, runs, log)


def say(text: str) -> None:
    """Show ``text`` in the driver's output (stdout, as the live view) and log it. Set
    ``RF_RAY_SUMMARY=0`` to keep it out of stdout (it still goes to the log file)."""
    logger.info("%s", text)
    if os.environ.get("RF_RAY_SUMMARY", "1") != "0":
        print(text, flush=True)


__all__ = [
    "EVERY_RUN_TO_THE_END",
    "GenerationFlagWarning",
    "check_trained",
    "evals_pruning_note",
    "finish",
    "generation_notes",
    "last_line",
    "pruning_note",
    "render",
    "say",
]
