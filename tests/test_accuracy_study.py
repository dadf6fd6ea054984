"""experiments.accuracy_study.py end to end on the smoke budget: every model trains, is
evaluated on occluded and holistic queries against one gallery, and gets its diagnostics."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_study(args: list, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    """python -m experiments.accuracy_study in `cwd` (a scratch folder, so that nothing it
    writes lands in the repository), with the repository root on the module path."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "experiments.accuracy_study", *args],
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


def test_study_on_a_real_layout_stretches_and_stages_the_schedule(tmp_path):
    """A dataset without a holistic variant (the smoke set read as a `custom` folder, as a
    real dataset would be) gets one query column; --schedule-scale doubles the schedule and
    --stages scores the model half-way too, with its diagnostics and masks at each point."""
    from pan_model.config import load_config
    from pan_model.data import synthetic

    smoke = load_config(REPO / "pan_model" / "configs" / "smoke.yaml")
    synthetic.generate(tmp_path / "data", **smoke.data.synthetic)
    args = [
        "--config", str(REPO / "pan_model" / "configs" / "smoke.yaml"), "--models", "pan", "global", "--seeds", "0",
        "--schedule-scale", "2", "--stages", "1", "--output", str(tmp_path / "runs"),
        "data.dataset=custom", f"data.root={tmp_path / 'data'}", "train.epochs=1", "optim.milestones=[1]",
    ]  # fmt: skip
    done = run_study(args, tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    pan, global_model = json.loads((tmp_path / "runs" / "runs.json").read_text())
    assert not (tmp_path / "data_holistic").exists()
    for run in (pan, global_model):
        assert "occluded" not in run and "holistic" not in run
        assert run["epochs"] == 2 and [stage["epoch"] for stage in run["stages"]] == [1]
        assert set(run["query"]) == {"rank1", "mAP", "mINP"} and 0 < run["query"]["mAP"] <= 1
    config = (tmp_path / "runs" / "pan_seed0_x2" / "config.yaml").read_text()
    assert "milestones:\n  - 2\n" in config and "epochs: 2\n" in config
    assert {"constant_share", "cos_part_gap"} <= set(pan["stages"][0]["diagnostics"]) and "diagnostics" not in global_model
    for name in ("masks.png", "masks_epoch1.png"):
        assert (tmp_path / "runs" / "pan_seed0_x2" / name).stat().st_size > 0
    header = next(line for line in done.stdout.splitlines() if line.startswith("| model | epochs |"))
    assert "query Rank-1 (%)" in header and "holistic" not in header
    assert "| PAN | 0 | 1 | " in done.stdout and "| PAN | 0 | 2 | " in done.stdout  # the stage table


def test_study_goes_on_from_what_a_killed_study_left(tmp_path):
    """A study run again over the same --output trains nothing that is done: a finished run is
    read back from its study.json, and a run whose final scores were never written (the study
    was killed after training) is scored from its checkpoint without training. A folder
    trained with another recipe is refused rather than resumed."""
    args = [
        "--config", str(REPO / "pan_model" / "configs" / "smoke.yaml"), "--models", "pan", "global", "--seeds", "0",
        "--output", str(tmp_path / "runs"), f"data.root={tmp_path / 'data'}", "train.epochs=1",
    ]  # fmt: skip
    first = run_study(args, tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    pan_folder = tmp_path / "runs" / "pan_seed0"
    record = json.loads((pan_folder / "study.json").read_text())
    # as if killed between the end of training and the final scores
    (pan_folder / "study.json").write_text(json.dumps({key: record[key] for key in ("model", "seed", "epochs", "seconds", "stages")}))
    trained = {folder: (folder / "log.jsonl").stat().st_mtime_ns for folder in (tmp_path / "runs").iterdir() if folder.is_dir()}

    again = run_study(args, tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "backbone" in first.stdout and "backbone" not in again.stdout  # train() names the backbone it builds
    assert {folder: (folder / "log.jsonl").stat().st_mtime_ns for folder in trained} == trained
    runs = json.loads((tmp_path / "runs" / "runs.json").read_text())
    assert runs[0]["occluded"] == record["occluded"] and runs[0]["diagnostics"] == record["diagnostics"]

    other = run_study([*args, "loss.triplet_weight=0.5"], tmp_path, timeout=600)
    assert other.returncode != 0 and "loss.triplet_weight: 1.0 in the checkpoint, 0.5 now" in other.stderr


def test_a_checkpoint_written_inside_an_epoch_is_past_that_epochs_end():
    from experiments.accuracy_study import Progress

    assert not Progress().started and Progress(0, mid_epoch=True).started  # something to resume
    assert [Progress(2).passed(epoch) for epoch in (1, 2, 3)] == [True, False, False]  # 2 can still be scored
    assert [Progress(2, mid_epoch=True).passed(epoch) for epoch in (1, 2, 3)] == [True, True, False]  # 2 is gone
