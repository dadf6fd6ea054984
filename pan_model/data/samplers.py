"""PK sampling: batches of P identities x K images, the batches a triplet loss needs."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


def identities_per_process(
    batch_size: int, num_instances: int, world_size: int = 1, *, at_least: int = 1, prefix: str = ""
) -> int:
    """Identities each of `world_size` processes gets of a PK batch: batch_size images are
    P = batch_size / num_instances identities, shared as whole identities, at least `at_least`
    per process. The one statement of this rule: PKSampler, the training loaders and the
    config check call it. A ValueError names the arguments, `prefix` ("data.") as the caller's
    user knows them."""
    batch, instances = f"{prefix}batch_size", f"{prefix}num_instances"
    if num_instances < 1 or batch_size < num_instances or batch_size % num_instances:
        raise ValueError(
            f"{batch}={batch_size} must be a positive multiple of {instances}={num_instances} "
            "(a PK batch is identities x images per identity)"
        )
    identities = batch_size // num_instances
    if identities % world_size or identities < at_least * world_size:
        raise ValueError(
            f"{batch}={batch_size} with {instances}={num_instances} cannot be split over {world_size} "
            f"process{'es' if world_size > 1 else ''}: the {identities} identities of a batch must be shared as "
            f"whole identities, at least {at_least} each, so {batch} must be a multiple of "
            f"{num_instances * world_size} (num_instances x processes) and at least {at_least * num_instances * world_size}"
        )
    return identities // world_size


class PKSampler(Sampler):
    """Indices of `items` ((img_path, pid, camid) tuples) in batches of P = batch_size / K
    distinct identities with K = num_instances images each.

    An epoch is `rounds` rounds; in each round every identity appears once, in a random
    order, and the last batch is completed with identities drawn again at random (so every
    batch has P distinct identities).
    An identity hands out its images in a shuffled cycle, so a round's K images never
    repeat one; identities with fewer than K images are sampled with replacement.
    rounds=None picks about one pass over the images per epoch: round(len(items) / (ids x K)).

    batch_size is the global batch: the images of one optimiser step, all processes together.
    Under torch.distributed (rank of world_size, by default those of the initialised process
    group) each process gets its share of every batch, batch_size / world_size images made of
    P / world_size whole identities, so the union of the shares is the batch a single process
    would draw, whatever the number of processes. The order is a function of (seed, epoch)
    alone: call set_epoch(e) before iterating epoch e. Iteration yields this process's flat
    indices; use it as ``DataLoader(..., batch_size=sampler.share, sampler=sampler)``.
    """

    def __init__(
        self,
        items: Sequence,
        num_instances: int,
        batch_size: int,
        seed: int = 0,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        rounds: Optional[int] = None,
    ):
        if world_size is None:
            world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < world_size:
            raise ValueError(f"PKSampler: rank={rank} must lie in [0, world_size={world_size})")
        identities_per_share = identities_per_process(batch_size, num_instances, world_size)
        indices_of = {}
        for index, item in enumerate(items):
            indices_of.setdefault(int(item[1]), []).append(index)
        self.identity_indices = [np.asarray(indices_of[pid]) for pid in sorted(indices_of)]
        self.num_instances = num_instances
        self.batch_size = batch_size
        self.num_identities_per_batch = batch_size // num_instances
        self.share = identities_per_share * num_instances  # images per process per batch
        if len(self.identity_indices) < self.num_identities_per_batch:
            raise ValueError(
                f"PKSampler: a batch of {batch_size} = {self.num_identities_per_batch} identities x {num_instances} "
                f"images needs at least {self.num_identities_per_batch} identities, the items hold {len(self.identity_indices)}"
            )
        if rounds is None:
            rounds = max(1, round(len(items) / (len(self.identity_indices) * num_instances)))
        if rounds < 1:
            raise ValueError(f"PKSampler: rounds must be >= 1, got {rounds}")
        self.rounds = rounds
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    @property
    def batches_per_round(self) -> int:
        """Batches (optimiser steps) of one round."""
        return math.ceil(len(self.identity_indices) / self.num_identities_per_batch)

    def __len__(self) -> int:
        """Indices this process yields per epoch."""
        return self.rounds * self.batches_per_round * self.share

    def global_position(self, position: int) -> int:
        """Where this process's `position`-th index of the epoch stands in the epoch's batches
        laid end to end (the same for every number of processes)."""
        batch, offset = divmod(position, self.share)
        return batch * self.batch_size + self.rank * self.share + offset

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_batches(self) -> list:
        """All batches of the current epoch: arrays of batch_size indices (all processes' shares)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        num_identities, per_batch = len(self.identity_indices), self.num_identities_per_batch
        cycles = [_ShuffledCycle(indices) for indices in self.identity_indices]
        batches = []
        for _ in range(self.rounds):
            order = rng.permutation(num_identities)
            groups = [order[start : start + per_batch] for start in range(0, num_identities, per_batch)]
            if len(groups[-1]) < per_batch:  # complete the last batch with other identities
                others = np.setdiff1d(order, groups[-1])
                groups[-1] = np.concatenate([groups[-1], rng.choice(others, per_batch - len(groups[-1]), replace=False)])
            for group in groups:
                batches.append(np.concatenate([cycles[identity].take(self.num_instances, rng) for identity in group]))
        return batches

    def __iter__(self):
        start = self.rank * self.share
        for batch in self.epoch_batches():
            yield from batch[start : start + self.share].tolist()

    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "num_instances": self.num_instances,
            "batch_size": self.batch_size,
            "rounds": self.rounds,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at state's epoch; the batch shape must be the saved one, since the batches
        depend on it (the number of processes may change: it only splits them)."""
        for key in ("num_instances", "batch_size", "rounds"):
            if state[key] != getattr(self, key):
                raise ValueError(f"PKSampler.load_state_dict: saved {key}={state[key]}, this sampler has {getattr(self, key)}")
        self.seed = state["seed"]
        self.epoch = state["epoch"]


class _ShuffledCycle:
    """An identity's images in a random order, reshuffled whenever fewer than k remain."""

    def __init__(self, indices: np.ndarray):
        self.indices = indices
        self.order = indices[:0]

    def take(self, k: int, rng: np.random.Generator) -> np.ndarray:
        if len(self.indices) < k:
            return rng.choice(self.indices, k, replace=True)
        if len(self.order) < k:
            self.order = rng.permutation(self.indices)
        taken, self.order = self.order[:k], self.order[k:]
        return taken
