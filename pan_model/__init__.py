"""pan_model: the Part-Aware Network for occluded person re-identification, its
PCB and global baselines, data, metrics and the training engine.

The sub-packages follow the data: data -> models -> engine (training) -> evaluation ->
reporting (evaluation imports no engine code; the trainer calls evaluation). config.py is
the recipe every stage reads, registry.py the name -> builder tables they choose from, and
cli.py and demo.py drive them.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"


def build_model(arch: str, num_classes: int, **options):
    """Build "pan", "pcb" or "global" (see pan_model.models)."""
    from .models import build_model as _build

    return _build(arch, num_classes, **options)


# Modules that moved into the package's rooms in 0.1: their old names still import, with a
# DeprecationWarning, and will be removed in a later release.
MOVED_MODULES = {
    "pan_model.diagnostics": "pan_model.evaluation.diagnostics",
    "pan_model.export": "pan_model.models.export",
    "pan_model.losses": "pan_model.engine.losses",
    "pan_model.metrics": "pan_model.evaluation.metrics",
    "pan_model.profiling": "pan_model.reporting.profiling",
    "pan_model.visualization": "pan_model.reporting.plots",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as the module it moved to (the same module object, so
    monkeypatching either name patches both)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED_MODULES else None

    def create_module(self, spec):
        new = MOVED_MODULES[spec.name]
        warnings.warn(f"{spec.name} is deprecated: import {new}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass  # the module it moved to is already executed


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModuleFinder())

__all__ = ["build_model", "MOVED_MODULES"]
