"""Every ``rf-ray`` command line in the docs' shell blocks runs as written (issue 21, item 6).

Each one (in README.md and docs/**.md, also inside ``ray exec "..."``) parses with the real
command-line parser; a clone's ``knob=value`` changes parse too (the README's
``[--warm-start]``, brackets copied from a usage line, was taken as a knob) and a warm clone
changes nothing a warm start must keep (the same line changed ``lora_rank``). The commands that
read an experiment (``list``, ``status``, ``samples``, ``ops``) then run, in this process, on
experiments built by hand under the paths the docs name. ``dashboard``, ``resume`` and ``demo``
serve or train: they are parsed only. No Ray.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import string
from pathlib import Path

import pytest

from actors.storage.layout import ExperimentDir
from actors.storage.store import Store
from policies.pruning import NoPruning
from policies.settings import SETTINGS_KEY, ExperimentSettings
from rf_ray import cli, ops
from rf_ray.cli.ops import parse_changes

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
SHELL = re.compile(r"^```(?:bash|sh|shell|console)\n(.*?)^```", re.MULTILINE | re.DOTALL)
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _commands() -> list[tuple[str, list[str]]]:
    """``(where, argv)`` of every ``rf-ray`` command in the docs' shell blocks, with the
    block's own variables (``NAME=value`` lines) substituted."""
    found = []
    for doc in DOCS:
        for i, block in enumerate(SHELL.findall(doc.read_text()), start=1):
            variables: dict[str, str] = {}
            for line, tokens in _shell_lines(block):
                if tokens and ASSIGNMENT.match(tokens[0]):
                    name, _, value = tokens[0].partition("=")
                    variables[name] = value
                    continue
                for text in [line] if tokens[:1] == ["rf-ray"] else tokens:
                    if text.startswith("rf-ray "):
                        text = string.Template(text).safe_substitute(variables)
                        argv = shlex.split(text, comments=True)[1:]
                        found.append((f"{doc.relative_to(ROOT)}#{i}: {text.strip()}", argv))
    return found


def _shell_lines(block: str) -> list[tuple[str, list[str]]]:
    """The block's commands and their words: a line continued with a backslash, or inside an
    open quote, goes on to the next."""
    out, pending = [], ""
    for line in block.splitlines():
        pending += line + "\n"
        if line.endswith("\\"):
            pending = pending[:-2] + " "
            continue
        try:
            tokens = shlex.split(pending, comments=True)
        except ValueError:  # a quote still open
            continue
        out.append((pending.strip(), tokens))
        pending = ""
    return out


COMMANDS = _commands()


def test_the_docs_have_rf_ray_commands():
    where = [w for w, _ in COMMANDS]
    assert any(w.startswith("README.md") and " ops clone " in w for w in where)
    assert any(w.startswith("docs/guides/cluster.md") for w in where)  # inside `ray exec "..."`
    assert {argv[0] for _, argv in COMMANDS} >= {"ops", "status", "list", "dashboard", "samples"}


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_each_command_parses_as_written(where, argv):
    try:
        args = cli.build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: the rf-ray parser refuses it")
    if argv[0] == "ops" and args.op == "clone":
        changes = parse_changes(args.changes)
        assert changes, f"{where}: a clone without changes"
        ops.check_function_changes(ops.flat_changes(changes))
        if args.warm_start:
            ops.check_warm_changes(changes)


def _experiment(root: Path, name: str) -> None:
    exp_dir = root / name
    with Store(exp_dir) as store:
        pruner = NoPruning(metric="train_loss").settings()
        settings = ExperimentSettings(num_chunks=4, pruner=pruner)
        store.set_meta(name=name, status="finished", **{SETTINGS_KEY: settings.to_dict()})
        for run_id in (1, 2, 3):
            store.add_run(run_id, {"learning_rate": 1e-4 * run_id}, "completed", 8, 4)
    sample = {"prompt": "Reverse: abc", "reference": "cba", "generation": "cba"}
    record = {"run_id": 3, "step": 8, "metrics": {"rougeL": 1.0}, "samples": [sample]}
    ExperimentDir(exp_dir).run(3).path.mkdir(parents=True)
    ExperimentDir(exp_dir).run(3).samples_file.write_text(json.dumps(record))


READS = [(w, argv) for w, argv in COMMANDS if argv[0] in ("list", "status", "samples")]
OPS = [(w, argv) for w, argv in COMMANDS if argv[0] == "ops"]


def _run(argv: list[str], root: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """``rf-ray ARGV`` with the experiments the docs name built under ``./rf_experiments``
    and ``~/rf_experiments``."""
    home, work = root / "home", root / "work"
    names = {a for _, cmd in COMMANDS for a in cmd[1:3] if re.fullmatch(r"[a-z][a-z0-9-]+", a)}
    for base in (home / "rf_experiments", work / "rf_experiments"):
        for name in names - {"stop", "clone", "resume", "delete", "prune"}:
            _experiment(base, name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    return cli.main([os.path.expanduser(a) for a in argv])


@pytest.mark.parametrize(("where", "argv"), READS, ids=[w for w, _ in READS])
def test_the_commands_that_read_an_experiment_run_as_written(
    where, argv, tmp_path, monkeypatch, capsys
):
    code = _run(argv, tmp_path, monkeypatch)
    assert code == 0, f"{where}: {capsys.readouterr().err}"


@pytest.mark.parametrize(("where", "argv"), OPS, ids=[w for w, _ in OPS])
def test_the_ops_run_as_written_and_say_the_experiment_is_finished(
    where, argv, tmp_path, monkeypatch, capsys
):
    code = _run(argv, tmp_path, monkeypatch)
    err = capsys.readouterr().err
    assert code == 2, where
    assert "is finished" in err, f"{where}: {err}"
