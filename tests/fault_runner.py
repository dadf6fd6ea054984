"""One training process of the smoke recipe that kills itself with SIGKILL at a chosen point,
as a `kill -9` arriving at that moment would (tests/test_faults.py, tests/test_ddp.py).

    python tests/fault_runner.py SPEC key=value ...

SPEC is JSON: {"point": ..., "at": n, "fraction": f, "rank": r, "resume": "auto" | null}.
  "step"     during global step n, after its backward, before the optimiser update
  "write"    while checkpoint_last.pt of epoch n is written, after a fraction f of its bytes
  "rename"   that file written and flushed, before it replaces the previous one
  "renamed"  after it replaced the previous one, before the folder is synced
  null       no kill
Only the process of rank r (default 0) dies, and only in torchrun's first attempt.
"""

import io
import json
import os
import signal
import sys
from pathlib import Path

import torch

from pan_model.config import load_config
from pan_model.engine import checkpoint, distributed, trainer
from pan_model.engine.trainer import CHECKPOINT_NAME, Trainer, train

SMOKE = Path(__file__).resolve().parent.parent / "pan_model" / "configs" / "smoke.yaml"


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _DiesWhileWriting:
    """A file handle that dies once `limit` bytes have gone through it."""

    def __init__(self, handle, limit: int):
        self.handle, self.limit, self.written = handle, limit, 0

    def write(self, data) -> int:
        if self.written + len(data) >= self.limit:
            self.handle.write(bytes(data)[: self.limit - self.written])
            self.handle.flush()
            die()
        self.written += self.handle.write(data)
        return len(data)


def arm(spec: dict) -> None:
    point, at = spec["point"], spec.get("at")
    if point == "step":
        original_step = Trainer._train_step

        def train_step(self, images, pids):
            if self.global_step + 1 == at:
                self.optimizer.step = die
            return original_step(self, images, pids)

        Trainer._train_step = train_step
        return
    armed = []  # holds True while the chosen checkpoint is being saved
    original_save = trainer.save_checkpoint

    def save(state, path):
        if Path(path).name == CHECKPOINT_NAME and state["epoch"] == at:
            armed.append(True)
        return original_save(state, path)

    trainer.save_checkpoint = save
    if point == "write":
        original_torch_save = torch.save

        def torch_save(state, handle):
            if armed:
                size = len(_serialised(state, original_torch_save))
                handle = _DiesWhileWriting(handle, max(1, int(spec["fraction"] * size)))
            return original_torch_save(state, handle)

        torch.save = torch_save
    elif point == "rename":
        _die_when_called(os, "replace", armed)
    elif point == "renamed":
        _die_when_called(checkpoint, "_fsync_directory", armed)
    else:
        raise ValueError(f"unknown point {point!r}")


def _die_when_called(owner, name: str, armed: list) -> None:
    """owner.name dies when called while `armed` holds (and works as before otherwise)."""
    original = getattr(owner, name)

    def call(*args):
        if armed:
            die()
        return original(*args)

    setattr(owner, name, call)


def _serialised(state, save) -> bytes:
    buffer = io.BytesIO()
    save(state, buffer)
    return buffer.getvalue()


def main() -> int:
    spec = json.loads(sys.argv[1])
    first_attempt = distributed.restart_count() == 0
    if spec["point"] is not None and first_attempt and int(os.environ.get("RANK", "0")) == spec.get("rank", 0):
        arm(spec)
    result = train(load_config(SMOKE, sys.argv[2:]), resume=spec.get("resume"))
    return 0 if result["status"] == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
