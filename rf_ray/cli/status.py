"""``rf-ray list`` and ``rf-ray status``: the experiments under a root, and one experiment's runs.

Both only read (the store is opened read-only), so they are safe while an experiment trains.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

from actors.storage.layout import ExperimentDir
from actors.storage.store import PRUNING_ERROR_KEY, Store
from actors.storage.trust import check_trusted
from policies.errors import ConfigError, UntrustedDirectoryError
from policies.redact import redact
from policies.settings import stored_settings
from rf_ray.experiment import DEFAULT_ROOT
from rf_ray.live import chunk_progress
from rf_ray.samples import generation_metrics, metric_columns
from rf_ray.specs import differing_keys, to_jsonable

ERROR_WIDTH = 40


def find_experiments(root: Path) -> list[str]:
    """Names of the experiment directories directly under ``root`` (those with a store)."""
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and Store.listed(d))


def _candidates(root: Path) -> str:
    names = find_experiments(root)
    if not names:
        return f"no experiments found under {root.resolve()}"
    return f"experiments under {root.resolve()}: {', '.join(names)}"


def read_experiment(exp_dir: Path, trust: bool = False) -> dict[str, Any]:
    """Meta, runs and chunk metrics of one experiment, read through a read-only store (once
    the directory is found to be the user's alone, or ``trust``); the runs' secret-looking
    knob values masked (``policies.redact``), since all of it is printed."""
    check_trusted(exp_dir, trust)
    try:
        store = Store(exp_dir, readonly=True)
        try:
            return {
                "meta": store.meta(),
                "runs": [{**r, "params": redact(r["params"])} for r in store.runs()],
                "chunks": store.chunk_metrics(),
            }
        finally:
            store.close()
    except sqlite3.Error as exc:
        raise ConfigError(
            f"cannot read {ExperimentDir(exp_dir).store}: {exc}; is it an rf-ray experiment store?"
        ) from exc


# --------------------------------------------------------------------------- status


def add_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="experiment name (a directory under the root)")
    add_root(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_root(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--path", metavar="ROOT", default=None, help=f"experiments root (default ./{DEFAULT_ROOT})"
    )
    add_trust(p)


def add_trust(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust",
        action="store_true",
        help="open experiment directories that another user owns or can write (docs/security.md)",
    )


def cmd_status(args: argparse.Namespace) -> int:
    root = Path(args.path or DEFAULT_ROOT)
    exp_dir = root / args.name
    check_trusted(exp_dir, args.trust)  # another user's directory: say whose, first
    if not Store.exists(exp_dir):
        raise ConfigError(
            f"no experiment {args.name!r} under {root.resolve()}; {_candidates(root)}"
        )
    data = read_experiment(exp_dir, args.trust)
    if args.json:
        print(json.dumps(status_json(args.name, exp_dir, data), indent=2))
    else:
        print(status_text(args.name, exp_dir, data))
    return 0


def status_json(name: str, exp_dir: Path, data: dict[str, Any]) -> dict[str, Any]:
    per_run: dict[int, list[dict[str, Any]]] = {}
    for run_id, chunk, metrics in data["chunks"]:
        per_run.setdefault(run_id, []).append({"chunk": chunk, **metrics})
    per_epoch = stored_settings(data["meta"]).get("num_chunks")
    runs = [
        {**r, "progress": _progress(r, per_epoch), "chunks": per_run.get(r["run_id"], [])}
        for r in data["runs"]
    ]
    generated = generation_metrics(exp_dir, [r["run_id"] for r in runs])
    for r in runs:
        r["generation_metrics"] = generated.get(r["run_id"], {})
    evals = _evals_view(exp_dir, data)
    for r in runs if evals is not None else ():  # evals: each metric's last interval
        r["intervals"] = {
            k: dict(zip(("value", "lower", "upper"), v))
            for k, v in evals.intervals.get(r["run_id"], {}).items()
        }
    out = {
        "name": name,
        "dir": str(exp_dir.resolve()),
        "mode": "fit" if evals is None else "evals",
        "meta": data["meta"],
        "differing": differing_keys([r["params"] for r in data["runs"]]),
        "runs": runs,
    }
    return dict(to_jsonable(out))  # NaN and inf become None: json.dumps writes invalid JSON


def status_text(name: str, exp_dir: Path, data: dict[str, Any]) -> str:
    meta, runs = data["meta"], data["runs"]
    pruner = stored_settings(meta).get("pruner") or {}
    metric = pruner.get("metric") or "metric"
    lines = [
        f"Experiment {name} ({meta.get('status', 'unknown')}) at {exp_dir.resolve()}",
        f"  fingerprint:  {meta.get('fingerprint', '-')}",
        f"  pruner:       {pruner.get('type', '-')} on {metric} ({pruner.get('mode') or '-'})",
        f"  tracking uri: {_tracking_uri(exp_dir, meta)}",
        *([f"  pruning:      {meta[PRUNING_ERROR_KEY]}"] if meta.get(PRUNING_ERROR_KEY) else []),
        "",
    ]
    if not runs:
        return "\n".join([*lines, "No runs yet."])
    knobs = differing_keys([r["params"] for r in runs])
    # the runs' last generation metrics (runs/<id>/samples.json), beside the pruner's metric
    generated = generation_metrics(exp_dir, [r["run_id"] for r in runs])
    gen_columns = metric_columns(generated, skip=pruner.get("metric"))
    headers = ["run", "status", "progress", "steps", f"last {metric}", f"best {metric}", "pruned@"]
    evals = _evals_view(exp_dir, data)  # evals: shards, rows, metrics with their intervals
    intervals = evals.columns() if evals is not None else []
    per_epoch = stored_settings(meta).get("num_chunks")
    if evals is not None:
        # a pipeline's metric after a shard is its estimate so far: the last one is the result,
        # and the best of them means nothing
        headers[2:6] = ["shards", "rows", f"last {metric}"]
    headers += [*(f"{k} [interval]" for k in intervals), *gen_columns, *knobs, "error"]
    rows = [
        [
            str(r["run_id"]),
            r["status"],
            evals.progress(r) if evals is not None else _progress(r, per_epoch),
            f"{r['steps_done']}/{r['total_steps']}",
            _fmt(r["last_metric"]),
            *([_fmt(r["best_metric"])] if evals is None else []),
            _fmt(r["pruned_at"]),
            *(evals.cell(r["run_id"], k) for k in intervals if evals is not None),
            *(_fmt(generated.get(r["run_id"], {}).get(k)) for k in gen_columns),
            *(_fmt(r["params"].get(k)) for k in knobs),
            _truncate(r["error"]),
        ]
        for r in runs
    ]
    counts = Counter(r["status"] for r in runs)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return "\n".join([*lines, format_table(headers, rows), "", f"{len(runs)} runs: {summary}"])


def _progress(run: dict[str, Any], per_epoch: Any) -> str:
    return chunk_progress(run["chunks_done"], run["total_chunks"], per_epoch)


def _tracking_uri(exp_dir: Path, meta: dict[str, Any]) -> str:
    stored = meta.get("tracking_uri")
    return "-" if stored is None else ExperimentDir(exp_dir).tracking_uri_from(stored)


def _evals_view(exp_dir: Path, data: dict[str, Any]) -> Any:
    """An evals experiment's view (``rf_ray.evals.progress``), None for a fit experiment."""
    from rf_ray.evals.progress import EvalsView

    return EvalsView.of(exp_dir, [r["run_id"] for r in data["runs"]], data["meta"], data["chunks"])


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain left-aligned columns: readable in a terminal, a pipe and a CI log alike."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _truncate(text: str | None, width: int = ERROR_WIDTH) -> str:
    if not text:
        return ""
    line = " ".join(text.split())  # tracebacks are multi-line; the table wants one line
    return line if len(line) <= width else line[: width - 3] + "..."


# --------------------------------------------------------------------------- list


def cmd_list(args: argparse.Namespace) -> int:
    root = Path(args.path or DEFAULT_ROOT)
    if not root.is_dir():
        raise ConfigError(f"{root.resolve()} is not a directory; pass the experiments root --path")
    names = find_experiments(root)
    if not names:
        print(f"No experiments under {root.resolve()} (rf-ray demo makes one).")
        return 0
    rows = []
    for name in names:
        try:
            data = read_experiment(root / name, args.trust)
        except ConfigError as exc:  # one unreadable experiment does not hide the others
            why = "untrusted" if isinstance(exc, UntrustedDirectoryError) else "unreadable"
            rows.append([name, why, "-", _truncate(str(exc), 2 * ERROR_WIDTH)])
            continue
        counts = Counter(r["status"] for r in data["runs"])
        rows.append(
            [
                name,
                str(data["meta"].get("status", "unknown")),
                str(len(data["runs"])),
                ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "-",
            ]
        )
    print(f"Experiments under {root.resolve()}:")
    print(format_table(["name", "status", "runs", "by status"], rows))
    return 0
