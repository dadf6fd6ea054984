"""The package's layout: rooms in the order the data goes through them, and the old names of
moved modules still importing, with a warning."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import pan_model

PACKAGE = Path(pan_model.__file__).parent


def test_top_level_holds_the_rooms_and_the_drivers_only():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    rooms = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert modules == {"__init__", "cli", "config", "demo", "registry"}
    assert {"data", "models", "engine", "evaluation", "reporting"} <= rooms


@pytest.mark.parametrize("old,new", sorted(pan_model.MOVED_MODULES.items()))
def test_moved_module_imports_under_its_old_name_with_a_warning(old, new):
    # a fresh interpreter: in this one the old name may be imported already, and warns once only
    code = (
        "import importlib, warnings\n"
        "warnings.simplefilter('error')\n"
        f"new = importlib.import_module({new!r})\n"
        "try:\n"
        f"    importlib.import_module({old!r})\n"
        "except DeprecationWarning as warning:\n"
        "    print(warning)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"{old} is deprecated: import {new}"
    with pytest.warns(DeprecationWarning):
        sys.modules.pop(old, None)
        assert importlib.import_module(old) is importlib.import_module(new)


# The rooms in the order they may import each other: each only from those before it (a trainer
# scores its model, so evaluation comes before the engine that calls it). config.py and
# registry.py serve every room.
ROOMS = ("backbones", "data", "models", "evaluation", "engine", "reporting")


def _imported_rooms(path: Path) -> set:
    """The pan_model rooms a module imports, at its top or inside functions."""
    import ast

    package = path.relative_to(PACKAGE.parent).with_suffix("").parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level]
                target = [*base, *(node.module.split(".") if node.module else [])]
                names = [[*target, alias.name] for alias in node.names] if not node.module else [target]
            else:
                names = [node.module.split(".")] if node.module else []
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        else:
            continue
        found |= {name[1] for name in names if len(name) > 1 and name[0] == "pan_model" and name[1] in ROOMS}
    return found


@pytest.mark.parametrize("room", ROOMS)
def test_rooms_import_only_the_rooms_before_them(room):
    allowed = set(ROOMS[: ROOMS.index(room) + 1])
    for path in sorted((PACKAGE / room).rglob("*.py")):
        assert _imported_rooms(path) <= allowed, f"{path.relative_to(PACKAGE)} imports {_imported_rooms(path) - allowed}"
