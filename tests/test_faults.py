"""kill -9 at random points of a training run, during steps and during checkpoint writes,
then resume: no damaged file is ever loaded, at most one checkpoint interval is lost, and
the resumed run repeats the uninterrupted one (tests/fault_runner.py does the killing)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pan_model.config import load_config
from pan_model.data import prepare_dataset
from pan_model.engine import load_checkpoint, train
from pan_model.engine.checkpoint import CheckpointError
from pan_model.engine.run_log import read_log

REPO = Path(__file__).resolve().parent.parent
RUNNER = REPO / "tests" / "fault_runner.py"
SMOKE = REPO / "pan_model" / "configs" / "smoke.yaml"
EPOCHS, STEPS_PER_EPOCH = 4, 2  # smoke: max_steps_per_epoch=2
# a checkpoint every epoch; random erasing, so that the images depend on the restored seeds
RUN = [f"train.epochs={EPOCHS}", "train.checkpoint_every=1", "train.eval_every=0", "data.augment={erasing_prob: 0.8}"]


def run_training(dataset_root, output, spec) -> int:
    """The runner in a fresh process; its exit status (-9 when it killed itself)."""
    completed = subprocess.run(
        [sys.executable, str(RUNNER), json.dumps(spec), f"data.root={dataset_root}", f"output_dir={output}", *RUN],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode in (0, -signal.SIGKILL), completed.stderr[-3000:]
    return completed.returncode


def step_records(folder):
    return [(r["global_step"], r["total"], r["triplet"]) for r in read_log(folder) if r["kind"] == "step"]


def kill_plan(rng: random.Random) -> list:
    """Two kills during steps and two during the checkpoint writes of two epochs, in the
    order the run meets them: (steps completed when it dies, spec). Each resume starts at
    or before the last kill, so it meets the next one."""
    steps = rng.sample(range(1, EPOCHS * STEPS_PER_EPOCH + 1), 2)
    epochs = rng.sample(range(1, EPOCHS + 1), 2)
    plan = [(step - 1, {"point": "step", "at": step}) for step in steps]
    for epoch in epochs:
        spec = {"point": rng.choice(["write", "rename", "renamed"]), "at": epoch, "fraction": rng.random()}
        plan.append((epoch * STEPS_PER_EPOCH, spec))
    # the save that ends an epoch comes before the next epoch's first step
    return sorted(plan, key=lambda kill: (kill[0], kill[1]["point"] == "step"))


def test_kill_9_anywhere_then_resume_repeats_the_uninterrupted_run(tmp_path):
    seed = int(os.environ.get("PAN_FAULT_SEED", time.time_ns() % 2**32))
    plan = kill_plan(random.Random(seed))
    context = f"PAN_FAULT_SEED={seed}, plan {plan}"
    dataset_root = tmp_path / "data"
    prepare_dataset(load_config(SMOKE, [f"data.root={dataset_root}"]).data)  # generated once, before the runs

    assert run_training(dataset_root, tmp_path / "reference", {"point": None}) == 0
    run = tmp_path / "killed"
    checkpoint = run / "checkpoint_last.pt"
    for done, spec in plan:
        assert run_training(dataset_root, run, {**spec, "resume": "auto"}) == -signal.SIGKILL, context
        strays = [p.name for p in run.glob(".checkpoint_last.pt.*.tmp")]
        assert bool(strays) == (spec["point"] in ("write", "rename")), (context, spec, strays)
        if checkpoint.exists():
            kept = load_checkpoint(checkpoint)["global_step"]  # complete, and its checksums hold
        else:  # killed before the first checkpoint was in place
            kept = 0
        assert done - kept <= STEPS_PER_EPOCH, (context, spec, kept)  # at most one checkpoint interval lost
    assert run_training(dataset_root, run, {"point": None, "resume": "auto"}) == 0

    assert step_records(run) == step_records(tmp_path / "reference"), context
    assert len(step_records(run)) == EPOCHS * STEPS_PER_EPOCH
    final, expected = (load_checkpoint(folder / "checkpoint_last.pt") for folder in (run, tmp_path / "reference"))
    assert final["global_step"] == EPOCHS * STEPS_PER_EPOCH
    for name, tensor in expected["model"].items():
        assert torch.equal(final["model"][name], tensor), (context, name)
    assert not list(run.glob(".*.tmp")), "the last save removes the temporaries of killed writers"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A one-epoch smoke run: (its config overrides, its folder)."""
    folder = tmp_path_factory.mktemp("finished")
    overrides = [f"data.root={folder / 'data'}", "train.epochs=1", "train.eval_every=0", f"output_dir={folder / 'run'}"]
    train(load_config(SMOKE, overrides))
    return overrides, folder


@pytest.mark.parametrize(
    "changes, named",
    [
        (["model.arch=pcb"], r"model\.arch: 'pan' in the checkpoint, 'pcb' now"),
        (["data.synthetic.num_ids=10", "data.root=other"], r"data\.synthetic: .* now; training identities: 4 in the checkpoint, 5"),
    ],
)
def test_a_checkpoint_of_another_run_is_refused_naming_what_differs(finished_run, changes, named):
    overrides, folder = finished_run
    changes = [change.replace("=other", f"={folder / 'other'}") for change in changes]
    written = (folder / "run" / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match=f"cannot resume from .*checkpoint_last.pt: it is a checkpoint of another run; {named}"):
        train(load_config(SMOKE, [*overrides, *changes]), resume="auto")
    assert (folder / "run" / "config.yaml").read_text() == written  # the refused run changed nothing
