"""docs/architecture.md names real things: a newcomer who greps for a name it gives finds it.

Read from the source with ``ast`` (no import, no Ray): every backticked repository path exists;
every ``Class.member`` of a class of rf-ray's has that member (its own or a base's); every name
the page places in a file (`` `name` in `path` ``, `` `name` (`path` ``, `` `path`'s `name` ``)
is defined in that file; and every other backticked name is defined somewhere in
``rf_ray/``, ``actors/`` or ``policies/``, is one of their modules, or is one of the library
names the page cites (``LIBRARY_NAMES``).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("rf_ray", "actors", "policies")
PATH = re.compile(r"^(?:rf_ray|actors|policies|tests|bench|examples|scripts|docs)/")
NAME = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
CODE_FILE = r"((?:rf_ray|actors|policies)/[\w/]+\.py)"
PLACED = [
    re.compile(r"`([A-Za-z_][\w.]*)`\)? (?:in |\()`" + CODE_FILE + "`"),
    re.compile(r"`" + CODE_FILE + r"`'s `([A-Za-z_][\w.]*)`"),
]

LIBRARY_NAMES = {
    "GRPOTrainer", "GradientState", "MlflowClient", "Route", "TimeoutError", "compute_loss",
    "flock", "log_batch", "notify_all", "skip_prepare_dataset", "torch", "Host", "grep",
    "_prepare_inputs", "gen_seconds", "rf_ray",
}  # fmt: skip
"""Names the page cites that are not rf-ray's (TRL, accelerate, MLflow, Starlette, asyncio,
the shell), a metric's name, and the package itself."""


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


@cache
def _index() -> tuple[set[str], dict[str, tuple[set[str], list[str]]], set[str]]:
    """(every name defined anywhere, each class's members and bases, every module's name)."""
    defined: set[str] = set()
    classes: dict[str, tuple[set[str], list[str]]] = {}
    modules = {p.stem for p in _sources()} | {p.parent.name for p in _sources()}
    for path in _sources():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Store):
                defined.add(node.id if isinstance(node, ast.Name) else node.attr)
            elif isinstance(node, ast.arg):
                defined.add(node.arg)
            if isinstance(node, ast.ClassDef):
                members, bases = classes.setdefault(node.name, (set(), []))
                bases += [b.id for b in node.bases if isinstance(b, ast.Name)]
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        members.add(sub.name)
                    elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                        members.add(sub.id)
                    elif isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store):
                        members.add(sub.attr)  # self.x = ... in a method
    return defined, classes, modules


def _members(cls: str, seen: frozenset[str] = frozenset()) -> set[str]:
    _, classes, _ = _index()
    if cls not in classes or cls in seen:
        return set()
    members, bases = classes[cls]
    return members.union(*(_members(b, seen | {cls}) for b in bases))


def _defined_in(path: str) -> set[str]:
    """What a file defines: functions, classes, methods, assigned names (a class's attributes
    too) and what it imports."""
    names = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
    return names


def unknown_names(text: str) -> list[str]:
    """The backticked names and paths of ``text`` that the tree does not have."""
    defined, classes, modules = _index()
    found = []
    for token in sorted(set(re.findall(r"`([^`\n]+)`", text))):
        if PATH.match(token):
            if "<" not in token and not list(ROOT.glob(token.rstrip("/"))):
                found.append(f"{token}: no such path")
            continue
        match = NAME.match(token)
        if not match or any(c in token for c in " =*<-/"):
            continue  # a command line, an option, a keyword argument, a pattern, a folder
        chain = match.group(0).split(".")
        if chain[0] in classes and len(chain) > 1:
            if chain[1] not in _members(chain[0]):
                found.append(f"{token}: {chain[0]} has no {chain[1]}")
        elif not ({chain[0], chain[-1]} & (defined | modules | LIBRARY_NAMES)) and not any(
            chain[-1] == f"{m}.py" or token == f"{m}.py" for m in modules
        ):
            found.append(f"{token}: defined nowhere in {', '.join(PACKAGES)}")
    for pattern in PLACED:
        for match in pattern.finditer(text):
            name, path = match.groups() if pattern is PLACED[0] else match.groups()[::-1]
            first = name.split(".")[0]
            if (ROOT / path).exists() and first not in _defined_in(path):
                found.append(f"{name}: not defined in {path}")
    return found


def test_every_name_in_the_architecture_page_exists():
    found = unknown_names(DOC.read_text())
    assert found == [], "docs/architecture.md names what the tree lacks:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "text",
    [
        "`actors/engine/no_such_module.py`",
        "`SchedulerCore.no_such_method`",
        "`no_such_function_anywhere`",
        "`take` in `rf_ray/session.py`",
        "`rf_ray/plan.py`'s `no_such_name`",
    ],
)
def test_a_name_the_tree_lacks_is_found(text):
    assert unknown_names(text) != []


def test_names_the_tree_has_pass():
    text = (
        "`actors/storage/lock.py` `SchedulerCore.grant_for` `RunRow.columns()` `take` in "
        "`actors/storage/lock.py`, `rf_ray/plan.py`'s `persist`, `lora_kernel.py`"
    )
    assert unknown_names(text) == []
