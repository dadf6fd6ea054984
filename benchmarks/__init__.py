"""Timings only, run from the repository root (conftest.py describes the harness)."""
