import os
from pathlib import Path

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors; the
# variable must be set before triton is first imported (by pan_ops).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# CI runs a fixed set of hypothesis examples (derandomize), so that a submission's result
# does not depend on the draw; local runs keep exploring new ones.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One smoke training run through the CLI (data/ and run/ in the returned folder), shared
    by the tests of the commands that need a checkpoint."""
    from pan_model.cli import main

    folder = tmp_path_factory.mktemp("cli")
    smoke = Path(__file__).resolve().parent.parent / "pan_model" / "configs" / "smoke.yaml"
    code = main(["train", str(smoke), f"data.root={folder / 'data'}", "train.epochs=1", "--output-dir", str(folder / "run")])
    assert code == 0
    return folder
