"""Data loaders of a training run, built so that a run can be resumed exactly.

Every random augmentation of a training image draws from generators seeded by
(run seed, epoch, position in the epoch's global batches), not from whatever state a worker
process happens to be in. The images of step k are then a pure function of the run's seed,
so a resumed run, a run with a different number of loader workers or of processes and an
uninterrupted run all see the same pixels, and resuming mid-epoch only needs the epoch and
the step.

``data.batch_size`` is the global batch (one optimiser step, all processes together); each
of the world_size processes trains on its share, whole identities (see per_process_batch).
"""

from __future__ import annotations

import contextlib
import random
import signal
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .. import data
from ..config import Config, ConfigError
from .distributed import DistributedContext


class EpochSampler(Sampler):
    """Wraps a PKSampler with ``set_epoch``; yields (index, sample_seed) pairs of this
    process's share of one epoch, starting at position `start` of that share (the samples
    consumed before a resume)."""

    def __init__(self, sampler, seed: int):
        self.sampler = sampler
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.start, 0)

    def __iter__(self):
        for position, index in enumerate(self.sampler):
            if position >= self.start:
                # (the 0 held the rank when each process drew its own batches; it stays so that
                # single-process runs keep the pixels they always had)
                seed = sample_seed(self.seed, 0, self.epoch, self.sampler.global_position(position))
                yield int(index), seed

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue a saved run's data stream (its seed); the wrapped sampler checks that the
        batches have the saved shape."""
        self.seed = state["seed"]
        self.epoch = state["epoch"]
        if "sampler" in state:
            self.sampler.load_state_dict(state["sampler"])


def sample_seed(*words: int) -> int:
    """A well-mixed 63-bit seed from a few integers."""
    low, high = np.random.SeedSequence([w & 0xFFFFFFFF for w in words]).generate_state(2)
    return (int(high) << 31 | int(low) >> 1) & 0x7FFFFFFFFFFFFFFF


class SeededDataset(Dataset):
    """``dataset[index]`` evaluated with Python, NumPy and torch generators seeded by the
    key's seed; the caller's generator states are left untouched."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        with seeded_generators(seed):
            return self.dataset[index]


@contextlib.contextmanager
def seeded_generators(seed: int):
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


def _ignore_interrupts(_worker_id: int) -> None:
    """Ctrl-C (and `timeout`, `kill -- -PGID`) signal the whole process group; workers leave
    the signal to the main process, which finishes the step, writes a checkpoint and then
    shuts them down (a worker also exits by itself when the main process dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@dataclass
class RunData:
    dataset: object  # .train / .query / .gallery / .num_train_pids
    train_loader: DataLoader
    epoch_sampler: EpochSampler
    query_loader: DataLoader
    gallery_loader: DataLoader
    batch_size: int  # per process: this process's share of data.batch_size

    @property
    def num_classes(self) -> int:
        return self.dataset.num_train_pids


def _loader_options(num_workers: int, pin_memory: bool) -> dict:
    # A private generator per loader: creating an iterator must not consume the global torch stream.
    return dict(
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=_ignore_interrupts,
        generator=torch.Generator(),
    )


def build_test_loader(config: Config, items, pin_memory: bool = False) -> DataLoader:
    """The images of `items` ((img_path, pid, camid) triples) with the test transform, in
    order, ``data.test_batch_size`` at a time: batches of (images, pids, camids)."""
    cfg = config.data
    images = data.ImageDataset(items, data.build_transforms(cfg.height, cfg.width, is_train=False))
    return DataLoader(
        images, batch_size=cfg.test_batch_size, shuffle=False, **_loader_options(cfg.num_workers, pin_memory)
    )


def build_test_loaders(config: Config):
    """The dataset of `config` with loaders of its query and its gallery: what evaluating a
    trained model on that dataset needs."""
    dataset = data.prepare_dataset(config.data)
    return dataset, build_test_loader(config, dataset.query), build_test_loader(config, dataset.gallery)


def per_process_batch(config: Config, world_size: int) -> int:
    """Images each of `world_size` processes trains on per step: its P / world_size whole
    identities of data.num_instances images (data.identities_per_process), at least two,
    since the batch-hard triplet loss looks for each anchor's negative among its own
    process's images."""
    cfg = config.data
    try:
        identities = data.identities_per_process(cfg.batch_size, cfg.num_instances, world_size, at_least=2, prefix="data.")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return identities * cfg.num_instances


def build_run_data(config: Config, context: DistributedContext, pin_memory: bool = False) -> RunData:
    cfg = config.data
    per_process_batch(config, context.world_size)  # the check, before any work: at least 2 identities a process
    dataset = data.prepare_dataset(config.data)
    train_set = data.ImageDataset(
        dataset.train, data.build_transforms(cfg.height, cfg.width, is_train=True, **cfg.augment)
    )
    identity_sampler = data.PKSampler(
        dataset.train,
        cfg.num_instances,
        cfg.batch_size,
        seed=config.train.seed,
        rank=context.rank,
        world_size=context.world_size,
    )
    epoch_sampler = EpochSampler(identity_sampler, config.train.seed)
    train_loader = DataLoader(
        SeededDataset(train_set),
        batch_size=identity_sampler.share,
        sampler=epoch_sampler,
        drop_last=True,
        persistent_workers=cfg.num_workers > 0,
        **_loader_options(cfg.num_workers, pin_memory),
    )
    return RunData(
        dataset,
        train_loader,
        epoch_sampler,
        build_test_loader(config, dataset.query, pin_memory),
        build_test_loader(config, dataset.gallery, pin_memory),
        identity_sampler.share,
    )
