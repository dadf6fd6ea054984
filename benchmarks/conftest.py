"""Collection and reporting shared by the benchmark suites of this folder.

The suites are named bench_*.py; pytest's own pattern, test_*.py, is kept for tests/.
Collecting them here lets `pytest benchmarks --benchmark-only` (make bench) run them all;
scripts in this folder guard their work with __main__, so importing them runs nothing.
"""

import pytest

SUMMARY_LINES = pytest.StashKey[list]()


def pytest_collect_file(file_path, parent):
    # Files named on the command line are collected by pytest itself.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def summary_lines(request):
    """Lines printed at the end of the run, next to pytest-benchmark's tables (output
    written while the tests run is captured)."""
    return request.config.stash.setdefault(SUMMARY_LINES, [])


def pytest_terminal_summary(terminalreporter, config):
    for line in config.stash.get(SUMMARY_LINES, []):
        terminalreporter.write_line(line)
