"""Two CPU processes train through DistributedDataParallel (gloo), as torchrun would run
them: the replicas start from different random weights and must end bitwise identical."""

import datetime
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pan_model import build_model
from pan_model.config import load_config
from pan_model.engine import Trainer, distributed
from pan_model.engine.loaders import build_run_data, prepare_dataset
from pan_model.models import unwrap_model

SMOKE = Path(__file__).resolve().parent.parent / "pan_model" / "configs" / "smoke.yaml"
WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _config(dataset_root, output):
    # 16 images per step over 2 processes: each sees 2 identities x 4 images
    return load_config(
        SMOKE,
        [
            f"data.root={dataset_root}",
            f"output_dir={output}",
            "data.batch_size=16",
            "train.epochs=2",
            "train.eval_every=0",
        ],
    )


def _replica(rank: int, port: int, dataset_root: str, output: str, stop_rank: int = -1) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    device = torch.device("cpu")
    # joined here with a short timeout, so that a process left waiting fails the test, not hangs it
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
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


def test_two_process_ddp_keeps_replicas_identical(tmp_path):
    dataset_root = tmp_path / "data"
    prepare_dataset(_config(dataset_root, tmp_path))  # generate once, before the processes start
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


def test_a_stop_in_one_process_stops_every_process_at_the_same_step(tmp_path):
    dataset_root = tmp_path / "data"
    prepare_dataset(_config(dataset_root, tmp_path))
    mp.spawn(_replica, args=(_free_port(), str(dataset_root), str(tmp_path), 1), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
    stopped = {"status": "interrupted", "epoch": 1, "step_in_epoch": 1}  # 2 steps per epoch
    assert ranks[0]["result"] == stopped and ranks[1]["result"] == stopped
    for name, tensor in ranks[0]["final"].items():
        assert torch.equal(tensor, ranks[1]["final"][name]), f"replicas differ in {name}"
    assert torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)["global_step"] == 3
