"""DESIGN.md's direction of imports, checked on the source: ``origin -> cache -> blobstore``,
``origin -> recommender``, ``origin -> origin.catalog``; each package is used through its
``__init__``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("origin", "cache", "blobstore", "recommender")
# What each package may import of the others.
ALLOWED = {
    "blobstore": set(),
    "cache": {"blobstore"},
    "recommender": set(),
    "origin": {"cache", "blobstore", "recommender"},
}


def imported_modules(path: Path) -> list[str]:
    """Absolute module names imported by ``path`` (relative imports stay in the package)."""
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_go_one_way(package: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources(package)
        for name in imported_modules(path)
        if (top := name.split(".")[0]) in PACKAGES
        and top != package
        and top not in ALLOWED[package]
    ]
    assert not wrong, wrong


@pytest.mark.parametrize("package", PACKAGES)
def test_other_packages_are_used_through_their_init(package: str) -> None:
    reaching_in = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources(package)
        for name in imported_modules(path)
        if name.split(".")[0] in PACKAGES and name.split(".")[0] != package and "." in name
    ]
    assert not reaching_in, reaching_in


def test_the_catalog_is_used_through_its_init() -> None:
    outside = [p for p in sources("origin") if "catalog" not in p.relative_to(ROOT).parts]
    reaching_in = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in outside
        for name in imported_modules(path)
        if name.startswith("origin.catalog.")
    ]
    assert not reaching_in, reaching_in


def test_the_upload_command_line_does_not_load_the_server_side() -> None:
    """`origin upload` runs from scripts and loops; the server side costs a second to import."""
    import subprocess
    import sys

    probe = (
        "import sys, origin.cli; "
        "print(sorted(m for m in ('origin.app', 'origin.commands', 'sqlalchemy', 'alembic', "
        "'numpy', 'recommender') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.strip()
    assert loaded == "[]"
