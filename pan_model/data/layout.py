"""The on-disk layout that the dataset reader (datasets.py) and the synthetic writer
(synthetic/writer.py) share: Market-1501 split folders and file names, and the metadata file
that the synthetic writer leaves next to its splits. Kept apart so that neither of them
imports the other."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
NAME_PATTERN = re.compile(r"^(-?\d+)_c(\d+)")  # <pid>_c<camera>..., the part every dataset shares
JUNK_PID = -1

SYNTHETIC_METADATA_NAME = "synthetic.json"
# Bump whenever the synthetic images of a parameter set change: existing folders are reused
# when their recorded format and parameters match.
SYNTHETIC_FORMAT_VERSION = 1


def market_file_name(pid: int, camera: int, frame: int) -> str:
    """A Market-1501 name, ``0001_c1s1_000123_00.jpg`` (camera 1-based, sequence 1), that
    NAME_PATTERN parses back."""
    return f"{pid:04d}_c{camera}s1_{frame:06d}_00.jpg"


def read_synthetic_metadata(root: "str | Path") -> Optional[dict]:
    """The synthetic writer's record in `root` (parameters, and counts once complete), or None
    when there is none of the current format."""
    path = Path(root) / SYNTHETIC_METADATA_NAME
    if not path.is_file():
        return None
    metadata = json.loads(path.read_text())
    return metadata if metadata.get("format") == SYNTHETIC_FORMAT_VERSION else None
