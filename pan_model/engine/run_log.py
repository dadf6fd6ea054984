"""The run's metric log: one JSON object per line in ``log.jsonl`` (and TensorBoard scalars
when the tensorboard package is installed)."""

from __future__ import annotations

import json
from pathlib import Path

LOG_NAME = "log.jsonl"


class RunLog:
    """Appends records {"kind": "step" | "train" | "eval", "global_step": n, ...} to
    ``<folder>/log.jsonl``. Only the main process writes (enabled=False elsewhere)."""

    def __init__(self, folder: "str | Path", enabled: bool = True, tensorboard: bool = True):
        self.path = Path(folder) / LOG_NAME
        self.enabled = enabled
        self._tensorboard = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                self._tensorboard = _tensorboard_writer(self.path.parent / "tensorboard")

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            for name, value in record.items():
                if name not in ("kind", "global_step", "epoch", "step") and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(f"{record['kind']}/{name}", value, record["global_step"])

    def truncate_after(self, global_step: int) -> None:
        """Drop records newer than a checkpoint being resumed, so they are not logged twice."""
        if self.enabled and self.path.is_file():
            kept = [r for r in read_log(self.path) if r["global_step"] <= global_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def read_log(path: "str | Path") -> list[dict]:
    """The records of a log.jsonl file (or of the log.jsonl inside a run folder). A last
    line without its newline is left out: a record being written, or one cut short by a
    crash (a resumed run's truncate_after then rewrites the file without it)."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_NAME
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.endswith("\n") and line.strip()]


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(folder))
