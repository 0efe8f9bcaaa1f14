"""rf-ray's public API: ``rf_ray.__all__`` and what the examples and the README import.

Every name in ``rf_ray.__all__`` exists and is documented; every name the examples and the
README import from ``rf_ray`` (or one of its modules) exists there and, where the module has an
``__all__``, is listed in it. No Ray, no model.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

import rf_ray

ROOT = Path(__file__).resolve().parents[2]
IMPORT = re.compile(r"^\s*from (rf_ray(?:\.\w+)*) import (\([^)]*\)|[^\n#]+)", re.MULTILINE)


def _imports() -> list[tuple[str, str, str]]:
    """(file, module, name) for every ``from rf_ray... import name`` in examples and README."""
    files = [*sorted((ROOT / "examples").glob("*.py")), ROOT / "README.md"]
    found = []
    for path in files:
        for module, names in IMPORT.findall(path.read_text()):
            for name in names.strip("()").replace("\n", " ").split(","):
                name = name.split(" as ")[0].strip()
                if name and name != "\\":
                    found.append((path.name, module, name))
    return found


def test_all_is_unique_and_every_name_exists():
    assert len(set(rf_ray.__all__)) == len(rf_ray.__all__)
    for name in rf_ray.__all__:
        assert getattr(rf_ray, name) is not None, name


@pytest.mark.parametrize("name", [n for n in rf_ray.__all__ if n != "__version__"])
def test_every_public_name_is_documented(name):
    obj = getattr(rf_ray, name)
    assert inspect.getdoc(obj), f"rf_ray.{name} has no docstring"


def test_the_package_docstring_maps_the_modules():
    doc = rf_ray.__doc__ or ""
    package = ROOT / "rf_ray"
    modules = {p.stem for p in package.glob("*.py") if not p.stem.startswith("_")}
    modules |= {p.name for p in package.iterdir() if (p / "__init__.py").exists()}
    missing = sorted(m for m in modules if f"``{m}``" not in doc)
    assert not missing, f"rf_ray/__init__.py's module map does not mention {missing}"


def test_examples_and_readme_import_only_public_names():
    imports = _imports()
    assert any(module == "rf_ray" for _, module, _ in imports)  # the parser found them
    for file, module, name in imports:
        mod = importlib.import_module(module)
        assert hasattr(mod, name), f"{file}: {module} has no {name}"
        public = getattr(mod, "__all__", None)
        if public is not None:
            assert name in public, f"{file} imports {module}.{name}, which is not in __all__"
