"""The training engine end to end on a few synthetic identities: the files of a run, its
progress output, exact resume after a signal, the NaN guard, the schedule and the optimiser
choices."""

import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest
import torch

from pan_model.config import load_config
from pan_model.engine import NonFiniteLossError, WarmupMultiStepLR, build_optimizer, load_checkpoint, load_model, train
from pan_model.engine.run_log import RunLog, read_log
from pan_model.engine.trainer import _Progress
from pan_model.engine.losses import ReIDLoss

SMOKE = Path(__file__).resolve().parent.parent / "pan_model" / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


def smoke_config(dataset_root, output, *overrides):
    return load_config(SMOKE, [f"data.root={dataset_root}", f"output_dir={output}", *overrides])


def step_records(folder):
    return [
        (r["global_step"], r["total"], r["id_global"], r["triplet"]) for r in read_log(folder) if r["kind"] == "step"
    ]


def test_tiny_run_trains_evaluates_and_writes_its_files(dataset_root, tmp_path, capsys):
    result = train(smoke_config(dataset_root, tmp_path, "train.progress=true"))
    assert result["status"] == "finished"
    # output captured, so not a terminal: one progress line per logged step, no bar
    out, err = capsys.readouterr()
    lines = re.findall(r"^epoch (\d)/2  step (\d)/2  [\d.]+ steps/s  loss [\d.]+  lr 3\.50e-04  ETA \d+:\d\d:\d\d$", out, re.M)
    assert lines == [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")]
    assert "\r" not in out + err
    assert {"checkpoint_last.pt", "model_best.pt", "metrics.json", "log.jsonl", "config.yaml"} <= {
        p.name for p in tmp_path.iterdir()
    }
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("rank1", "mAP", "mINP"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["epoch"] == 2 and metrics["best"]["epoch"] in (1, 2)
    kinds = [r["kind"] for r in read_log(tmp_path)]
    assert kinds == ["step", "step", "train", "eval"] * 2
    state = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (2, 0, 4)
    model, config = load_model(tmp_path / "model_best.pt")
    assert config.model.backbone == "osnet_x0_25" and not model.training
    features = model(torch.randn(3, 3, 64, 32))
    assert features.shape == (3, model.feature_dim)


def test_training_stream_does_not_depend_on_evaluation_or_loader_workers(dataset_root, tmp_path):
    # Augmentations are seeded per sample and the loaders own their generators, so neither
    # evaluating between epochs nor decoding in a worker process may change a training step.
    runs = {
        "evaluated, in process": ["train.eval_every=1", "data.num_workers=0"],
        "not evaluated": ["train.eval_every=0", "data.num_workers=0"],
        "evaluated, one worker": ["train.eval_every=1", "data.num_workers=1"],
    }
    records = {}
    for name, overrides in runs.items():
        folder = tmp_path / name.replace(" ", "_").replace(",", "")
        train(smoke_config(dataset_root, folder, "train.epochs=3", *overrides))
        records[name] = step_records(folder)
    assert len(records["evaluated, in process"]) == 6
    assert records["not evaluated"] == records["evaluated, in process"]
    assert records["evaluated, one worker"] == records["evaluated, in process"]


def test_progress_is_a_live_bar_on_a_terminal_and_a_line_per_interval_elsewhere(capsys, monkeypatch):
    def epoch():
        with _Progress(True, "epoch 2/3", steps=6, done=0, later_steps=6) as progress:
            for done in range(1, 7):
                progress.update(done, 1.5 + done, 3.5e-4, 40.0, 0.5, due=done % 3 == 0)

    epoch()  # captured: not a terminal
    out, err = capsys.readouterr()
    assert out.splitlines() == [  # ETA: the 6 - done steps left in this epoch and 6 in the next, at 0.5 step/s
        "epoch 2/3  step 3/6  0.50 steps/s  loss 4.5000  lr 3.50e-04  ETA 0:00:18",
        "epoch 2/3  step 6/6  0.50 steps/s  loss 7.5000  lr 3.50e-04  ETA 0:00:12",
    ]
    assert err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    epoch()
    out, err = capsys.readouterr()
    assert out == "" and "\r" in err and "epoch 2/3" in err and "lr=3.50e-04" in err  # tqdm's bar
    with _Progress(False, "epoch 2/3", steps=6, done=0, later_steps=0) as progress:  # train.progress=false
        progress.update(3, 1.0, 3.5e-4, 40.0, 0.5, due=True)
    assert capsys.readouterr() == ("", "")


def test_a_log_line_cut_short_by_a_crash_is_dropped_on_resume(tmp_path):
    log = RunLog(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        log.write({"kind": "step", "global_step": step, "total": 1.0})
    with open(log.path, "a") as handle:
        handle.write('{"kind": "step", "global_st')  # the process died mid-write
    assert [r["global_step"] for r in read_log(tmp_path)] == [1, 2, 3]
    log.truncate_after(2)
    log.write({"kind": "step", "global_step": 3, "total": 2.0})
    assert [(r["global_step"], r["total"]) for r in read_log(tmp_path)] == [(1, 1.0), (2, 1.0), (3, 2.0)]


class _SignalAtStep:
    """Wraps ReIDLoss.forward: sends `signum` to this process during step `step`."""

    def __init__(self, monkeypatch, step, signum):
        self.calls, self.step, self.signum = 0, step, signum
        original = ReIDLoss.forward

        def forward(loss_self, outputs, targets):
            self.calls += 1
            if self.calls == self.step:
                os.kill(os.getpid(), self.signum)
            return original(loss_self, outputs, targets)

        monkeypatch.setattr(ReIDLoss, "forward", forward)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_resume_after_a_signal_repeats_the_uninterrupted_run(dataset_root, tmp_path, monkeypatch, signum):
    overrides = ["train.epochs=3", "train.checkpoint_every=0", "train.eval_every=0", "data.augment={erasing_prob: 0.8}"]
    reference = train(smoke_config(dataset_root, tmp_path / "reference", *overrides))

    with monkeypatch.context() as patch:
        _SignalAtStep(patch, step=3, signum=signum)  # mid-epoch 2
        stopped = train(smoke_config(dataset_root, tmp_path / "resumed", *overrides))
    assert stopped == {"status": "interrupted", "epoch": 1, "step_in_epoch": 1}
    checkpoint = tmp_path / "resumed" / "checkpoint_last.pt"
    assert load_checkpoint(checkpoint)["global_step"] == 3
    # the resumed run loads its data with a worker process: the images must not depend on it
    resumed = train(
        smoke_config(dataset_root, tmp_path / "resumed", *overrides, "data.num_workers=1"), resume=checkpoint
    )

    assert step_records(tmp_path / "resumed") == step_records(tmp_path / "reference")
    assert len(step_records(tmp_path / "reference")) == 6
    assert resumed == reference
    final = load_checkpoint(checkpoint)["model"]
    for name, tensor in load_checkpoint(tmp_path / "reference" / "checkpoint_last.pt")["model"].items():
        assert torch.equal(final[name], tensor), name


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(dataset_root, tmp_path, monkeypatch):
    config = smoke_config(dataset_root, tmp_path, "train.epochs=3", "train.eval_every=0")
    original = ReIDLoss.forward
    calls = []

    def forward(loss_self, outputs, targets):
        calls.append(1)
        total, components = original(loss_self, outputs, targets)
        if len(calls) == 4:  # the second step of epoch 2
            total = total * float("nan")
            components["total"] = total.detach()
        return total, components

    monkeypatch.setattr(ReIDLoss, "forward", forward)
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite loss at epoch 2, step 2 \(.*total=nan.*checkpoint_last\.pt.*optim\.lr"
    ):
        train(config)
    assert load_checkpoint(tmp_path / "checkpoint_last.pt")["epoch"] == 1  # the last good one


def test_warmup_multistep_schedule_matches_the_paper():
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))], lr=3.5e-4)
    schedule = WarmupMultiStepLR(optimizer, milestones=[60, 90], gamma=0.1, warmup_epochs=20, warmup_factor=0.1)
    rates = []
    for _ in range(120):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    expected = [
        3.5e-5 + (3.5e-4 - 3.5e-5) * e / 20 if e < 20 else 3.5e-4 * 0.1 ** ((e >= 60) + (e >= 90)) for e in range(120)
    ]
    assert rates == pytest.approx(expected, rel=1e-9)
    restored = WarmupMultiStepLR(optimizer, milestones=[60, 90], warmup_epochs=20)
    restored.load_state_dict(schedule.state_dict())
    assert restored.get_last_lr() == pytest.approx(schedule.get_last_lr())


def test_mask_generator_learning_rate_group():
    import pan_model

    model = pan_model.build_model("pan", 5, backbone="osnet_x0_25")
    optimizer = build_optimizer(model, "adam", lr=1e-3, mask_lr_factor=0.1)
    groups = optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-4])
    mask_ids = {id(p) for p in model.mask_generator.parameters()}
    assert {id(p) for p in groups[1]["params"]} == mask_ids
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    assert not mask_ids & {id(p) for p in groups[0]["params"]}
    schedule = WarmupMultiStepLR(optimizer, milestones=[1], warmup_epochs=0)
    optimizer.step()
    schedule.step()  # the schedule scales both groups alike
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-5])
    assert len(build_optimizer(model, "adam", lr=1e-3).param_groups) == 1
    with pytest.raises(ValueError, match="mask_lr_factor=0.5 needs a model with a learned mask generator"):
        build_optimizer(pan_model.build_model("pcb", 5, backbone="osnet_x0_25"), mask_lr_factor=0.5)
    with pytest.raises(ValueError, match="mask_lr_factor must be > 0"):
        build_optimizer(model, mask_lr_factor=0.0)


def test_schedule_and_optimizer_argument_checks():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match=r"milestones must be increasing, got \[9, 3\]"):
        WarmupMultiStepLR(optimizer, milestones=[9, 3])
    with pytest.raises(ValueError, match="warmup_factor=0"):
        WarmupMultiStepLR(optimizer, milestones=[], warmup_factor=0)
    model = torch.nn.Linear(3, 2)
    assert isinstance(build_optimizer(model, "adamw", lr=1e-3), torch.optim.AdamW)
    with pytest.raises(ValueError, match=r"name must be one of .* got 'lamb'"):
        build_optimizer(model, "lamb")
