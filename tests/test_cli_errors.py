"""Every `pan-reid` subcommand given bad input: missing, misspelt or out-of-range arguments
and config values, missing, empty or broken dataset folders, missing or broken checkpoints.
Each must exit non-zero (2 for usage errors) with one line that names the argument or file,
no Python traceback, and nothing already on disk overwritten."""

import shutil
from pathlib import Path

import pytest

from pan_model.cli import main

REPO = Path(__file__).resolve().parent.parent
SMOKE = str(REPO / "pan_model" / "configs" / "smoke.yaml")


@pytest.fixture(scope="module")
def bad_inputs(trained_run, tmp_path_factory):
    """Named paths: the smoke run's checkpoint and broken copies of its dataset (read as a
    `custom` folder), next to files and folders a failed command must leave untouched."""
    root = tmp_path_factory.mktemp("bad")
    data = trained_run / "data"

    def copy(name):
        shutil.copytree(data, root / name, ignore=shutil.ignore_patterns("*.json"))
        return root / name

    corrupt = copy("corrupt")
    broken_image = sorted((corrupt / "bounding_box_test").glob("*.jpg"))[3]
    broken_image.write_bytes(b"not a jpeg at all")
    unparsed = copy("unparsed")
    shutil.copy(next((unparsed / "query").glob("*.jpg")), unparsed / "query" / "person.jpg")
    no_match = copy("no_match")
    query_pids = {p.name.split("_")[0] for p in (no_match / "query").glob("*.jpg")}
    for image in (no_match / "bounding_box_test").glob("*.jpg"):
        if image.name.split("_")[0] in query_pids:
            image.unlink()
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (root / "empty" / split).mkdir(parents=True)
    (root / "not_a_checkpoint.pt").write_bytes(b"\x80\x04 half a pickle")
    (root / "scores.json").write_text("kept\n")
    (root / "model.onnx").write_text("kept\n")
    return {
        "ckpt": str(trained_run / "run" / "model_best.pt"), "run": str(trained_run / "run"),
        "corrupt": str(corrupt), "broken_image": broken_image.name, "unparsed": str(unparsed),
        "no_match": str(no_match), "empty": str(root / "empty"), "missing": str(root / "missing"),
        "garbage": str(root / "not_a_checkpoint.pt"), "scores": str(root / "scores.json"),
        "onnx": str(root / "model.onnx"), "synth": str(root / "synth"),
    }  # fmt: skip


USAGE, INPUT = 2, 1
# (arguments, with {name} for the paths above; exit status; what the message must say)
CASES = [
    (["train"], USAGE, "train needs a config file"),
    (["train", "smoek"], USAGE, "did you mean smoke?"),
    (["train", SMOKE, "train.epochz=1"], USAGE, "unknown config key train.epochz (did you mean train.epochs?)"),
    (["train", SMOKE, "train.epochs=-1"], USAGE, "train.epochs: must be >= 1, got -1"),
    (["train", SMOKE, "optim.lr=fast"], USAGE, "optim.lr: expected float, got 'fast'"),
    (["train", SMOKE, "data.dataset=market"], USAGE, "data.dataset: 'market' is not a valid choice (did you mean market1501?"),
    (["train", SMOKE, "data.batch_size=7"], USAGE, "data.batch_size=7 must be a positive multiple of data.num_instances=2"),
    (["train", SMOKE, "model.arch=pcv", "--output-dir", "{run}"], USAGE, "did you mean pcb?"),
    (["train", SMOKE, "--epochs", "3"], USAGE, "unrecognized arguments: --epochs"),
    (["train", SMOKE, "data.dataset=custom", "data.root={missing}", "--output-dir", "{run}"], INPUT, "missing does not exist"),
    (["train", SMOKE, "data.dataset=custom", "data.root={empty}", "--output-dir", "{run}"], INPUT, "bounding_box_train holds no images"),
    (["train", SMOKE, "--resume", "{missing}/checkpoint_last.pt"], INPUT, "missing/checkpoint_last.pt"),
    (["eval"], USAGE, "the following arguments are required: --checkpoint"),
    (["eval", "--checkpoint", "{missing}.pt"], INPUT, "missing.pt"),
    (["eval", "--checkpoint", "{garbage}"], INPUT, "not_a_checkpoint.pt is not a complete checkpoint"),
    (["eval", "--checkpoint", "{ckpt}", "eval.metric=cosin", "--output", "{scores}"], USAGE, "did you mean cosine?"),
    (["eval", "--checkpoint", "{ckpt}", "data.dataset=custom", "data.root={corrupt}", "--output", "{scores}"], INPUT, "{broken_image}"),
    (["eval", "--checkpoint", "{ckpt}", "data.dataset=custom", "data.root={unparsed}", "--output", "{scores}"], INPUT, "'person.jpg'"),
    (["eval", "--checkpoint", "{ckpt}", "data.dataset=custom", "data.root={no_match}", "--output", "{scores}"], INPUT, "no query has a matching gallery image"),
    (["visualize", "--checkpoint", "{ckpt}", "--num-images", "0"], USAGE, "--num-images must be >= 1, got 0"),
    (["export", "--checkpoint", "{ckpt}"], USAGE, "the following arguments are required: --output"),
    (["export", "--checkpoint", "{missing}.pt", "--output", "{onnx}"], INPUT, "missing.pt"),
    (["profile", "model.backbone=resnet5"], USAGE, "did you mean resnet50?"),
    (["profile", SMOKE, "--input-size", "64"], USAGE, "--input-size: expected 2 arguments"),
    (["synth", "{synth}", "--num-ids", "1"], USAGE, "invalid num_ids=1"),
    (["synth", "{synth}", "--height", "tall"], USAGE, "--height: invalid int value: 'tall'"),
    (["synth", "{synth}", "--query-occlusion", "1.5"], USAGE, "query_occlusion=1.5"),
    (["weights", "resnet51"], USAGE, "invalid choice: 'resnet51'"),
    (["demo", "train.epochs=0"], USAGE, "train.epochs: must be >= 1, got 0"),
    (["fly"], USAGE, "invalid choice: 'fly'"),
]


def snapshot(paths: dict) -> dict:
    """Contents of every file under the run folder and of the files a command could overwrite."""
    files = [*Path(paths["run"]).rglob("*"), Path(paths["scores"]), Path(paths["onnx"])]
    return {str(f): f.read_bytes() for f in files if f.is_file()}


@pytest.mark.parametrize("arguments, status, message", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_exits_with_one_clear_line(bad_inputs, arguments, status, message, capsys):
    before = snapshot(bad_inputs)
    argv = [argument.format(**bad_inputs) for argument in arguments]
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own usage errors
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == status, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert message.format(**bad_inputs) in last, err
    assert last.startswith(f"pan-reid {argv[0]}: error: ") or "error:" in last  # argparse: "pan-reid eval: error: ..."
    assert snapshot(bad_inputs) == before  # nothing overwritten
    assert not Path(bad_inputs["synth"]).exists()


def test_debug_shows_the_traceback():
    from pan_model.config import ConfigError

    with pytest.raises(ConfigError, match="did you mean smoke"):
        main(["--debug", "train", "smoek"])
