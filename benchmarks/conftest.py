"""Collects the pytest-benchmark suites of this folder, named bench_*.py, so that
`pytest benchmarks --benchmark-only` (make bench) runs them; pytest's own pattern,
test_*.py, is kept for tests/. Scripts here guard their work with __main__, so
importing them for collection runs nothing."""

import pytest


def pytest_collect_file(file_path, parent):
    # Files named on the command line are collected by pytest itself.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
