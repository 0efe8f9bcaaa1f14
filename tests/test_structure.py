"""The tree keeps one owner per concept (STYLE.md, docs/architecture.md), read from the source
with ``ast`` (no import, no Ray: well under a second):

* no module reaches into another's private members (``x._name``, ``from m import _name``,
  ``getattr(x, "_name")``); a library's privates live in its adapter,
  ``actors/engine/algorithms/<library>_internals.py``, and nowhere else;
* no function runs past 60 lines without its reason on the ``def`` line (a comment there);
* no path inside the experiment directory is spelled outside ``actors/storage/layout.py``
  (``ExperimentDir`` / ``RunDir``): a file name of the layout as a string, or a path joined
  with one of its directory names;
* no import circle among rf-ray's modules, function-level imports included (a lazy import does
  not hide a circle, it only defers it).

Each check has a twin that feeds it a line it must refuse, so a check that silently matched
nothing would fail too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from actors.storage import layout

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rf_ray", "actors", "policies")
MAX_LINES = 60

INTERNALS = "actors/engine/algorithms/"
"""Where library privates may be touched: the ``*_internals.py`` adapters in this folder."""
STDLIB_PRIVATES = {("os", "_exit"), ("sys", "_current_frames")}
"""Standard-library functions whose names start with ``_`` but that are documented API."""

LAYOUT_FILES = {
    layout.STORE_FILE, layout.LOCK_FILE, layout.CLUSTER_FILE, layout.LOG_FILE, layout.MLFLOW_DB,
    layout.MODEL_FN_FILE, layout.LEGACY_MODEL_FN_FILE, layout.SPEC_FILE, layout.LEGACY_SPEC_FILE,
    layout.PIPELINE_FILE, layout.PIPELINE_PICKLE, layout.SAMPLES_FILE,
}  # fmt: skip
"""Names only the experiment directory has: a string equal to one is a hand-spelled path."""
LAYOUT_DIRS = {"runs", "checkpoints", "data", "train", "eval", "adapter", "corpora", "tune",
               layout.FUNCTIONS_DIR}  # fmt: skip
"""The layout's directory names: ``some_path / "runs"`` spells the layout by hand."""
DIR_SUFFIXES = ("_DIR", "_DIRNAME")
"""A module constant so named and set to a layout directory's name spells the layout too."""
LAYOUT_CONSTANTS = {name for name in vars(layout) if name.isupper()}
"""``layout``'s own constants (``SAMPLES_FILE``, ``STEP_PREFIX``...): joined by hand into a path
outside it, they spell the layout too."""


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_names(tree: ast.AST) -> set[str]:
    """Every name a module defines: its functions, classes, assigned names and attributes."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def private_reaches(source: str, where: str = "<string>") -> list[str]:
    """Places in ``source`` that use a private member another module defines."""
    tree = ast.parse(source)
    own = _own_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                module_file = ROOT / Path(*node.module.split("."), alias.name)
                is_module = module_file.with_suffix(".py").exists() or module_file.is_dir()
                if _private(alias.name) and not is_module:
                    found.append(f"{where}:{node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
            owner = node.value
            if isinstance(owner, ast.Name) and (
                owner.id in ("self", "cls") or (owner.id, node.attr) in STDLIB_PRIVATES
            ):
                continue
            if isinstance(owner, ast.Call) and getattr(owner.func, "id", "") == "super":
                continue
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", "") in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
            and node.args[1].value not in own
        ):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def long_functions(source: str, where: str = "<string>") -> list[str]:
    """Functions over ``MAX_LINES`` lines whose ``def`` line(s) carry no comment (the reason)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        header = lines[node.lineno - 1 : max(node.body[0].lineno - 1, node.lineno)]
        if length > MAX_LINES and not any("#" in line for line in header):
            found.append(f"{where}:{node.lineno}: {node.name} ({length} lines, no reason)")
    return found


def _spells_layout(node: ast.AST) -> bool:
    """A path part that is the layout's: one of its names as a string, or one of its constants
    (alone or inside an f-string)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        first = node.value.split("/")[0]
        return first in LAYOUT_DIRS or first in LAYOUT_FILES
    if isinstance(node, ast.Name):
        return node.id in LAYOUT_CONSTANTS
    if isinstance(node, ast.JoinedStr):
        return any(
            isinstance(part, ast.FormattedValue) and _spells_layout(part.value)
            for part in node.values
        )
    return False


def hand_spelled_paths(source: str, where: str = "<string>") -> list[str]:
    """Path joins and names that spell a path of the experiment directory's layout."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            if _spells_layout(node.right):
                found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Constant) and node.value in LAYOUT_FILES:
            found.append(f"{where}:{node.lineno}: {node.value!r}")
        elif (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and node.value.value in LAYOUT_DIRS
            and any(isinstance(t, ast.Name) and t.id.endswith(DIR_SUFFIXES) for t in node.targets)
        ):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body (``sources``: module name
    -> its text; a package is named like its ``__init__``)."""
    graph: dict[str, set[str]] = {name: set() for name in sources}
    for name, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in sources:  # the longest known prefix
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: its strongly connected parts of two or more modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            part = []
            while True:
                top = stack.pop()
                part.append(top)
                if top == node:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _check_tree(check) -> list[str]:
    found = []
    for path in _sources():
        rel = _rel(path)
        found += check(path.read_text(), rel, rel)
    return found


def test_no_module_reaches_into_another_modules_private_members():
    found = _check_tree(
        lambda text, rel, where: (
            []
            if rel.startswith(INTERNALS) and rel.endswith("_internals.py")
            else private_reaches(text, where)
        )
    )
    assert found == [], "use a public name, or put a library's private in its *_internals.py:\n" + (
        "\n".join(found)
    )


def test_no_long_function_without_its_reason():
    found = _check_tree(lambda text, rel, where: long_functions(text, where))
    assert found == [], "cut these, or say why on the def line:\n" + "\n".join(found)


def test_no_path_of_the_experiment_directory_spelled_outside_its_layout():
    found = _check_tree(
        lambda text, rel, where: (
            [] if rel == "actors/storage/layout.py" else hand_spelled_paths(text, where)
        )
    )
    assert found == [], "ask ExperimentDir / RunDir (actors/storage/layout.py):\n" + "\n".join(
        found
    )


def test_no_import_circle():
    graph = import_graph({_module_name(p): p.read_text() for p in _sources()})
    assert sum(len(targets) for targets in graph.values()) > 100  # the imports were found
    assert circles(graph) == []


def test_an_import_circle_is_found_lazy_imports_too():
    sources = {
        "pkg": "",
        "pkg.a": "from pkg.b import f\n",
        "pkg.b": "def f():\n    from pkg import c\n",
        "pkg.c": "import pkg.a\n",
        "pkg.d": "import pkg.a\n",
    }
    assert circles(import_graph(sources)) == [["pkg.a", "pkg.b", "pkg.c"]]


@pytest.mark.parametrize(
    ("check", "source"),
    [
        (private_reaches, "from rf_ray.configs import _Overrides\n"),
        (private_reaches, "def f(trainer):\n    return trainer._clip_grad_norm(1.0)\n"),
        (private_reaches, "def f(s):\n    return getattr(s, '_chunk_size', None)\n"),
        (long_functions, "def f():\n" + "    x = 1\n" * MAX_LINES),
        (hand_spelled_paths, "def f(d):\n    return d / 'runs' / '1'\n"),
        (hand_spelled_paths, "NAME = 'scheduler.lock'\n"),
        (hand_spelled_paths, "TUNE_DIRNAME = 'tune'\n"),
        (hand_spelled_paths, "def f(d):\n    return d / SAMPLES_FILE\n"),
        (hand_spelled_paths, "def f(d, n):\n    return d / f'{STEP_PREFIX}{n}'\n"),
    ],
)
def test_each_check_refuses_what_it_is_for(check, source):
    assert check(source) != []


@pytest.mark.parametrize(
    ("check", "source"),
    [
        (private_reaches, "class A:\n    def f(self):\n        return self._x\n"),
        (private_reaches, "class A:\n    _r = {}\n\ndef f(a):\n    return a._r\n"),
        (long_functions, "def f():  # one table, read top to bottom\n" + "    x = 1\n" * 70),
        (hand_spelled_paths, "def f(d):\n    return d / 'notes.txt'\n"),
    ],
)
def test_each_check_lets_through_what_is_fine(check, source):
    assert check(source) == []
