"""Atomic checkpoint writes (a kill mid-save keeps the old file), weights-only loading that
refuses damaged files and checkpoints of another run, RNG state."""

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pan_model.config import load_config
from pan_model.engine.checkpoint import (
    TRAINING_STATE,
    CheckpointError,
    capture_rng_state,
    check_resumable,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from pan_model.models import unwrap_model

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "pan_model" / "configs" / "smoke.yaml"


def _state(seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(5, 3)
    return {
        "model": model.state_dict(),
        "epoch": seed,
        "weights": torch.randn(17, 3, generator=generator),
        "rng": capture_rng_state(),
    }


@pytest.mark.parametrize("mmap", [False, True])
def test_round_trip_loads_weights_only(tmp_path, mmap):
    state = _state(3)
    path = save_checkpoint(state, tmp_path / "deep" / "ckpt.pt")
    loaded = load_checkpoint(path, mmap=mmap)
    assert loaded["epoch"] == 3 and torch.equal(loaded["weights"], state["weights"])
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temporary left behind


def test_file_needing_arbitrary_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "payload": Path("/etc")}, path)  # a pickled class instance
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)


def test_foreign_or_newer_files_are_rejected(tmp_path):
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a pan_model checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="format 99"):
        load_checkpoint(tmp_path / "future.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_error_during_save_keeps_the_previous_checkpoint(tmp_path):
    path = save_checkpoint(_state(1), tmp_path / "ckpt.pt")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot serialise")

    with pytest.raises(RuntimeError, match="cannot serialise"):
        save_checkpoint({"bad": Unpicklable()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


_KILLED_WRITER = """
import sys, time, torch
from pathlib import Path
from pan_model.engine.checkpoint import save_checkpoint

class Stall:
    # pickled after the tensors' records started: the writer is killed while stalled here
    def __reduce__(self):
        Path(sys.argv[2]).touch()
        time.sleep(60)
        return (int, (0,))

save_checkpoint({"weights": torch.randn(256, 1024), "stall": Stall(), "epoch": 2}, sys.argv[1])
"""


def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path):
    path = save_checkpoint(_state(1), tmp_path / "ckpt.pt")
    marker = tmp_path / "stalled"
    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path), str(marker)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert writer.poll() is None, "the writer exited before stalling"
        assert time.monotonic() < deadline, "the writer never reached the stall"
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    temporaries = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert temporaries, "the kill should have hit the write of the temporary file"
    assert load_checkpoint(path)["epoch"] == 1  # the previous checkpoint is intact
    save_checkpoint(_state(4), path)  # a stray temporary does not block the next save, which removes it
    assert load_checkpoint(path)["epoch"] == 4
    assert [p.name for p in tmp_path.iterdir() if p.name != "stalled"] == ["ckpt.pt"]


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    live = tmp_path / f".ckpt.pt.{os.getppid()}.tmp"  # as if the parent process were writing ckpt.pt
    live.write_bytes(b"partial")
    save_checkpoint(_state(1), tmp_path / "ckpt.pt")
    assert live.read_bytes() == b"partial"


def test_a_file_cut_short_or_damaged_is_refused(tmp_path):
    path = save_checkpoint(_state(2), tmp_path / "ckpt.pt")
    data = path.read_bytes()
    for length in (0, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:length])
        with pytest.raises(CheckpointError, match="ckpt.pt is not a complete checkpoint .*: it was cut short or damaged"):
            load_checkpoint(path)
    # one flipped bit in the weights: torch.load alone would return them silently changed
    weights = _state(2)["weights"].numpy().tobytes()
    start = data.index(weights)
    damaged = bytearray(data)
    damaged[start + len(weights) // 2] ^= 0x10
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match=r"ckpt.pt is damaged: its record \S+/data/\d+ does not match its checksum"):
        load_checkpoint(path)


def _training_state(config, num_classes=4) -> dict:
    return {**{key: 0 for key in TRAINING_STATE}, "config": config.to_dict(), "num_classes": num_classes}


def test_resuming_needs_a_training_checkpoint_of_the_same_run():
    config = load_config(SMOKE)
    # where files are, how fast, how often, how long and how it is evaluated may change
    moved = load_config(SMOKE, ["output_dir=elsewhere", "data.root=moved", "train.epochs=9", "train.eval_every=3", "eval.flip=true"])
    check_resumable(_training_state(config), moved, 4, "ckpt.pt")
    other = load_config(SMOKE, ["model.backbone=osnet_x0_5", "optim.lr=0.1", "train.seed=3", "data.num_instances=4"])
    with pytest.raises(CheckpointError) as refused:
        check_resumable(_training_state(config), other, 5, "ckpt.pt")
    assert str(refused.value).startswith("cannot resume from ckpt.pt: it is a checkpoint of another run; ")
    for difference in (
        "model.backbone: 'osnet_x0_25' in the checkpoint, 'osnet_x0_5' now",
        "data.num_instances: 2 in the checkpoint, 4 now",
        "optim.lr: 0.00035 in the checkpoint, 0.1 now",
        "train.seed: 0 in the checkpoint, 3 now",
        "training identities: 4 in the checkpoint, 5 in the dataset",
    ):
        assert difference in str(refused.value)
    best = {"config": config.to_dict(), "num_classes": 4, "model": {}, "epoch": 2, "scores": {}}  # a model_best.pt
    with pytest.raises(CheckpointError, match=r"holds no training state \(optimizer, .* missing\); a model_best.pt"):
        check_resumable(best, config, 4, "model_best.pt")


def _draws():
    return random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(3).tolist()


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    save_checkpoint({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = _draws()
    _draws()
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert _draws() == expected


def test_unwrap_model_removes_compile_wrappers():
    model = torch.nn.Linear(2, 2)
    assert unwrap_model(torch.compile(model)) is model
    assert unwrap_model(model) is model
