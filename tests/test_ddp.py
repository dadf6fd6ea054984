"""Two CPU processes train through DistributedDataParallel (gloo), as torchrun runs them:
replicas end bitwise identical, a stop anywhere stops all, the processes share each global
batch of data.batch_size images and together compute what one process computes stepping on
those shares, every packaged recipe splits, and torchrun --max-restarts resumes a launch
whose process was killed."""

import datetime
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pan_model import build_model
from pan_model.config import CONFIG_DIR, ConfigError, load_config
from pan_model.data import prepare_dataset
from pan_model.engine import Trainer, distributed, load_checkpoint, train
from pan_model.engine.distributed import DistributedContext
from pan_model.engine.loaders import build_run_data, per_process_batch
from pan_model.engine.run_log import read_log
from pan_model.models import unwrap_model

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "pan_model" / "configs" / "smoke.yaml"
WORLD_SIZE = 2
# 3 epochs of 2 steps, a checkpoint after each epoch, evaluated at the end only
RUN = ["train.epochs=3", "train.checkpoint_every=1", "train.eval_every=0"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _config(dataset_root, output, *overrides):
    # smoke's 8 images per step over 2 processes: each trains on 2 identities x 2 images
    return load_config(SMOKE, [f"data.root={dataset_root}", f"output_dir={output}", "train.epochs=2", "train.eval_every=0", *overrides])


def _replica(rank: int, port: int, dataset_root: str, output: str, stop_rank: int = -1) -> None:
    _join(rank, port)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    context = distributed.init_distributed(device)
    try:
        config = _config(dataset_root, output)
        data = build_run_data(config, context)
        torch.manual_seed(100 + rank)  # different weights per process: DDP must start them from rank 0's
        model = build_model(config.model.arch, data.num_classes, **config.model.options())
        initial = {name: p.detach().clone() for name, p in model.named_parameters()}
        trainer = Trainer(config, model, data, device, context)
        if rank == stop_rank:  # as a signal would, in this process only, during its third step
            _request_stop_in_step(trainer, step=3)
        result = trainer.fit()
        final = {name: p.detach().clone() for name, p in unwrap_model(trainer.model).named_parameters()}
        samples = [int(index) for index in data.epoch_sampler.sampler]  # the last epoch's, in order
        torch.save(
            {"initial": initial, "final": final, "result": result, "samples": samples}, Path(output) / f"rank{rank}.pt"
        )
    finally:
        distributed.destroy()


def _request_stop_in_step(trainer: Trainer, step: int) -> None:
    original = trainer._train_step

    def train_step(images, pids):
        if trainer.global_step + 1 == step:
            trainer.request_stop("test stop")
        return original(images, pids)

    trainer._train_step = train_step


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    prepare_dataset(_config(root, root).data)  # generated once, before any process starts
    return root


def _join(rank: int, port: int) -> None:
    """Join the group as torchrun's environment would describe it, with a short timeout, so
    that a process left waiting fails the test instead of hanging it."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))


def _train_process(rank: int, port: int, dataset_root: str, output: str) -> None:
    """One process of a launch, through train() as `pan-reid train` runs it."""
    _join(rank, port)
    train(_config(dataset_root, output, *RUN))


@pytest.fixture(scope="module")
def two_process_run(dataset_root, tmp_path_factory):
    """The folder of an uninterrupted 2-process run of RUN."""
    output = tmp_path_factory.mktemp("two_processes")
    mp.spawn(_train_process, args=(_free_port(), str(dataset_root), str(output)), nprocs=WORLD_SIZE, join=True)
    return output


def step_records(folder):
    return [r for r in read_log(folder) if r["kind"] == "step"]


def test_two_process_ddp_keeps_replicas_identical(dataset_root, tmp_path):
    mp.spawn(_replica, args=(_free_port(), str(dataset_root), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]

    assert any(not torch.equal(ranks[0]["initial"][n], ranks[1]["initial"][n]) for n in ranks[0]["initial"])
    for name, tensor in ranks[0]["final"].items():
        assert torch.equal(tensor, ranks[1]["final"][name]), f"replicas differ in {name}"
    assert any(not torch.equal(ranks[0]["final"][n], ranks[0]["initial"][n]) for n in ranks[0]["final"])
    assert ranks[0]["samples"] != ranks[1]["samples"]  # each process trains on its own batches
    # only the main process evaluates and writes the run's files
    assert 0.0 <= ranks[0]["result"]["rank1"] <= 1.0 and "rank1" not in ranks[1]["result"]
    assert (tmp_path / "checkpoint_last.pt").is_file() and (tmp_path / "metrics.json").is_file()


def test_a_stop_in_one_process_stops_every_process_at_the_same_step(dataset_root, tmp_path):
    mp.spawn(_replica, args=(_free_port(), str(dataset_root), str(tmp_path), 1), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
    stopped = {"status": "interrupted", "epoch": 1, "step_in_epoch": 1}  # 2 steps per epoch
    assert ranks[0]["result"] == stopped and ranks[1]["result"] == stopped
    for name, tensor in ranks[0]["final"].items():
        assert torch.equal(tensor, ranks[1]["final"][name]), f"replicas differ in {name}"
    assert torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)["global_step"] == 3


def test_processes_share_the_global_batches_of_one_process(dataset_root):
    """Step by step, the shares of 2 processes, in rank order, are one process's batch:
    the same images with the same augmentation seeds (so the same pixels)."""
    config = _config(dataset_root, dataset_root, "data.augment={erasing_prob: 0.8}")

    def steps(context):
        data = build_run_data(config, context)
        keys = []
        for epoch in range(2):
            data.epoch_sampler.set_epoch(epoch)
            keys += list(data.epoch_sampler)
        return [keys[start : start + data.batch_size] for start in range(0, len(keys), data.batch_size)]

    single = steps(DistributedContext())
    shares = [steps(DistributedContext(rank, WORLD_SIZE, rank)) for rank in range(WORLD_SIZE)]
    assert [first + second for first, second in zip(*shares)] == single
    assert len(single) >= 4 and len(single[0]) == config.data.batch_size


def _train_step_in_shares(self, images, pids):
    """Trainer._train_step of one process that computes what WORLD_SIZE DDP processes compute
    on the shares of the batch: each share is forwarded on its own (BatchNorm statistics and
    triplet mining per share), each share's gradient is divided by the world size and the
    results summed (DDP's average), BatchNorm's running statistics are share 0's (DDP
    broadcasts rank 0's buffers), and the logged losses are the shares' mean, summed as the
    trainer's all_reduce sums them."""
    model, parameters = self.model, list(self.model.parameters())
    gradients, sums, kept_buffers = None, None, None
    for share, (share_images, share_pids) in enumerate(zip(images.chunk(WORLD_SIZE), pids.chunk(WORLD_SIZE))):
        loss, components = self.loss_fn(model(share_images), share_pids)
        share_gradients = [g / WORLD_SIZE for g in torch.autograd.grad(loss, parameters)]
        values = torch.stack([value.float() for value in components.values()])
        if share == 0:
            gradients, sums = share_gradients, values
            kept_buffers = [buffer.clone() for buffer in model.buffers()]
        else:
            gradients = [total + g for total, g in zip(gradients, share_gradients)]
            sums = sums + values
    with torch.no_grad():
        for buffer, kept in zip(model.buffers(), kept_buffers):
            buffer.copy_(kept)
    self.optimizer.zero_grad(set_to_none=True)
    for parameter, gradient in zip(parameters, gradients):
        parameter.grad = gradient
    self.optimizer.step()
    return {name: total / WORLD_SIZE for name, total in zip(components, sums.tolist())}, False


def test_two_processes_compute_what_one_process_computes_on_their_shares(two_process_run, dataset_root, tmp_path, monkeypatch):
    """Bitwise, every logged loss and the final weights and buffers. (A plain one-process run
    of the same global batches differs: its BatchNorm statistics and hardest negatives come
    from all 8 images of a step, not from each process's 4; docs/DESIGN.md §9.)"""
    monkeypatch.setattr(Trainer, "_train_step", _train_step_in_shares)
    train(_config(dataset_root, tmp_path, *RUN))
    assert step_records(tmp_path) == step_records(two_process_run)
    assert len(step_records(two_process_run)) == 6
    expected = load_checkpoint(two_process_run / "checkpoint_last.pt")["model"]
    for name, tensor in load_checkpoint(tmp_path / "checkpoint_last.pt")["model"].items():
        assert torch.equal(tensor, expected[name]), name
    # the main process alone evaluated (once, at the end) and wrote the run's files
    assert [r["kind"] for r in read_log(two_process_run)].count("eval") == 1
    assert json.loads((two_process_run / "metrics.json").read_text())["epoch"] == 3


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_packaged_recipe_splits_over_two_processes(path):
    config = load_config(path)
    assert per_process_batch(config, 1) == config.data.batch_size
    assert per_process_batch(config, 2) * 2 == config.data.batch_size


def test_a_batch_that_cannot_be_split_is_a_clear_error():
    config = load_config(SMOKE, ["data.num_instances=4"])  # 8 images = 2 identities: one per process
    with pytest.raises(
        ConfigError,
        match=r"data.batch_size=8 with data.num_instances=4 cannot be split over 2 processes: .* must be a "
        r"multiple of 8 \(num_instances x processes\) and at least 16",
    ):
        per_process_batch(config, 2)
    with pytest.raises(ConfigError, match="data.batch_size=12 with data.num_instances=4 cannot be split over 2"):
        per_process_batch(load_config(SMOKE, ["data.num_instances=4", "data.batch_size=12"]), 2)


def test_torchrun_restarts_a_killed_process_from_the_last_checkpoint(two_process_run, dataset_root, tmp_path):
    """Process 1 dies (SIGKILL) in a random step; torchrun --max-restarts 1 starts both again,
    they resume from checkpoint_last.pt (or from the beginning before the first one) and the
    run ends as the uninterrupted one did."""
    step = random.randint(1, 6)
    spec = {"point": "step", "at": step, "rank": 1}
    completed = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD_SIZE}",
            "--max-restarts=1", str(REPO / "tests" / "fault_runner.py"), json.dumps(spec),
            f"data.root={dataset_root}", f"output_dir={tmp_path}", *RUN,
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, f"killed in step {step}:\n{completed.stderr[-4000:]}"
    # Only a restarted process resumes by itself (the runner passes no resume). After a kill
    # in step 2 the survivor may or may not finish that step and write epoch 1's checkpoint.
    resumed, from_scratch = ("resumed from" in completed.stdout), ("starting from the beginning" in completed.stdout)
    assert resumed or from_scratch, completed.stdout
    if step != 2:
        assert resumed == (step >= 3), completed.stdout
    assert step_records(tmp_path) == step_records(two_process_run), f"killed in step {step}"
    expected = load_checkpoint(two_process_run / "checkpoint_last.pt")["model"]
    for name, tensor in load_checkpoint(tmp_path / "checkpoint_last.pt")["model"].items():
        assert torch.equal(tensor, expected[name]), (step, name)
