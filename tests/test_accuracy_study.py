"""experiments/accuracy_synthetic.py end to end on the smoke budget: every model trains, is
evaluated on occluded and holistic queries against one gallery, and gets its diagnostics."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_study(args: list, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    """python -m experiments.accuracy_synthetic in `cwd` (a scratch folder, so that nothing it
    writes lands in the repository), with the repository root on the module path."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "experiments.accuracy_synthetic", *args],
        cwd=cwd, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_study_runs_and_tables_its_runs(tmp_path):
    args = [
        "--config", str(REPO / "pan_model" / "configs" / "smoke.yaml"), "--models", "pan", "pan_stripes", "global",
        "--seeds", "0", "--output", str(tmp_path / "runs"), f"data.root={tmp_path / 'data'}", "train.epochs=1",
    ]  # fmt: skip
    done = run_study(args, tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads((tmp_path / "runs" / "runs.json").read_text())
    assert [run["model"] for run in runs] == ["pan", "pan_stripes", "global"]
    # the holistic queries are the occluded ones redrawn without occluders, in a sibling folder
    occluded, holistic = tmp_path / "data" / "query", tmp_path / "data_holistic" / "query"
    assert sorted(p.name for p in occluded.iterdir()) == sorted(p.name for p in holistic.iterdir())
    assert any((occluded / p.name).read_bytes() != p.read_bytes() for p in holistic.iterdir())
    for run in runs:
        for split in ("occluded", "holistic"):
            assert set(run[split]) == {"rank1", "mAP", "mINP"} and 0 < run[split]["mAP"] <= 1
    assert {"mean_overlap", "constant_share", "cos_part_gap", "slice_scores"} <= set(runs[0]["diagnostics"])
    assert "mean_overlap" not in runs[1]["diagnostics"] and "diagnostics" not in runs[2]
    assert "| PAN's path with PCB's stripes as fixed masks (diagnostic) |" in done.stdout
    tables = run_study(["--tables-from", str(tmp_path / "runs" / "runs.json")], tmp_path, timeout=120)
    assert tables.returncode == 0 and tables.stdout.splitlines()[2].startswith("| PAN | ")
