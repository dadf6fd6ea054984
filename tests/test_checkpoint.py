"""Atomic checkpoint writes (a kill mid-save keeps the old file), weights-only loading, RNG state."""

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

from pan_model.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from pan_model.models import unwrap_model

REPO = Path(__file__).resolve().parent.parent


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
    save_checkpoint(_state(4), path)  # and a stray temporary does not block the next save
    assert load_checkpoint(path)["epoch"] == 4


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
