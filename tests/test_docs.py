"""The docs hold together: every relative link in README.md and docs/**.md points to a file (and a
heading) that exists, README.md stays short, and every Python snippet in them parses and imports
only names that exist. No Ray, no training: the snippets themselves are run by hand (they start
experiments); what rots silently, a renamed module or function, is caught here."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
README_MAX_LINES = 260

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def _links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.MULTILINE | re.DOTALL)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]  # not http:, mailto:


def test_the_docs_are_found():
    names = {_rel(p) for p in DOCS}
    assert {"README.md", "docs/architecture.md", "docs/performance.md"} <= names
    assert {f"docs/guides/{g}.md" for g in ("dpo", "grpo", "tune", "ray-jobs", "cluster")} <= names


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_relative_links_point_to_files_and_headings_that_exist(doc):
    broken = []
    for target in _links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {_rel(dest)}")
    assert not broken, f"{_rel(doc)} has broken links:\n" + "\n".join(broken)


def test_links_are_checked_at_all():
    # The README links to the docs; a regex that silently matched nothing would pass above.
    assert "docs/architecture.md" in _links(ROOT / "README.md")
    assert "docs/guides/tune.md" in _links(ROOT / "README.md")


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move depth to docs/"
    )


def _is_module(name: str) -> bool:
    """``from ray import tune``: a submodule is importable before it is an attribute."""
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        return False
    return True


def _snippets() -> list[tuple[str, str]]:
    return [
        (f"{_rel(doc)}#{i}", code)
        for doc in DOCS
        for i, code in enumerate(FENCE.findall(doc.read_text()), start=1)
    ]


@pytest.mark.parametrize(("where", "code"), _snippets(), ids=[w for w, _ in _snippets()])
def test_python_snippets_parse_and_import_names_that_exist(where, code):
    tree = ast.parse(code, filename=where)
    missing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            missing += [
                f"{node.module}.{a.name}"
                for a in node.names
                if not hasattr(module, a.name) and not _is_module(f"{node.module}.{a.name}")
            ]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
    assert not missing, f"{where} imports names that do not exist: {missing}"


def test_snippets_are_found():
    where = [w for w, _ in _snippets()]
    assert any(w.startswith("README.md#") for w in where)
    assert any(w.startswith("docs/guides/tune.md#") for w in where)
