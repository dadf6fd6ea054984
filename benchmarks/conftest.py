"""The harness of this folder's timings, and the collection and reporting of its CPU suites.

CPU timings are pytest-benchmark suites named bench_*.py (pytest's own pattern, test_*.py,
is kept for tests/), collected here: `pytest benchmarks --benchmark-only
--benchmark-json=PATH` (make bench) runs them all and writes their results as JSON.
GPU timings are scripts on one timer, cuda_timer.py: op_timing.py (the op's backends side
by side) and bench_model.py (PAN vs PCB), each writing JSON with --json. They guard their
work with __main__, so collecting them runs nothing.
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
