"""PKSampler invariants: P x K batches, every identity each round, ranks sharing each batch
by whole identities, determinism."""

import collections

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from pan_model.data import PKSampler, identities_per_process


def random_items(seed, num_ids, min_images, max_images):
    """(path, pid, camid) items in a shuffled order, pids not contiguous."""
    rng = np.random.default_rng(seed)
    pids = np.repeat(rng.choice(10 * num_ids, num_ids, replace=False), rng.integers(min_images, max_images + 1, num_ids))
    rng.shuffle(pids)
    return [(f"img{index}.jpg", int(pid), index % 3) for index, pid in enumerate(pids)]


def rank_batches(sampler):
    """The sampler's indices cut into its per-step shares."""
    indices = list(sampler)
    assert len(indices) == len(sampler) and len(indices) % sampler.share == 0
    return [indices[start : start + sampler.share] for start in range(0, len(indices), sampler.share)]


@pytest.mark.parametrize(
    "num_ids, min_images, max_images, num_instances, batch_size, world_size, rounds",
    [
        (23, 1, 9, 4, 16, 1, None),  # some identities below K: sampled with replacement
        (37, 5, 13, 3, 24, 2, 1),
        (41, 2, 30, 4, 48, 3, 2),
        (10, 4, 4, 2, 20, 1, None),  # one batch per round holds every identity
    ],
)
def test_batches_are_p_identities_times_k(num_ids, min_images, max_images, num_instances, batch_size, world_size, rounds):
    items = random_items(num_ids, num_ids, min_images, max_images)
    pid_of = [pid for _, pid, _ in items]
    images_of = collections.Counter(pid_of)
    samplers = [PKSampler(items, num_instances, batch_size, seed=5, rank=r, world_size=world_size, rounds=rounds) for r in range(world_size)]
    per_rank = [rank_batches(sampler) for sampler in samplers]
    assert len({len(batches) for batches in per_rank}) == 1  # same number of steps everywhere
    appearances = collections.Counter()
    for shares in zip(*per_rank):  # the ranks' shares of one step
        batch = [index for share in shares for index in share]
        groups = [batch[start : start + num_instances] for start in range(0, batch_size, num_instances)]
        group_pids = [{pid_of[index] for index in group} for group in groups]
        assert all(len(pids) == 1 for pids in group_pids)  # a group is one identity: shares hold whole identities
        pids = [next(iter(pids)) for pids in group_pids]
        assert len(set(pids)) == batch_size // num_instances  # P distinct identities
        for pid, group in zip(pids, groups):
            if images_of[pid] >= num_instances:
                assert len(set(group)) == num_instances  # no repeat within a group
        appearances.update(pids)
    expected_rounds = samplers[0].rounds
    assert set(appearances) == set(images_of)
    assert min(appearances.values()) >= expected_rounds  # every identity, every round
    padding = sum(appearances.values()) - expected_rounds * num_ids
    assert 0 <= padding < expected_rounds * (batch_size // num_instances)  # only each round's last batch


def test_default_rounds_cover_about_one_pass_over_the_images():
    items = random_items(0, 30, 10, 30)
    sampler = PKSampler(items, 4, 32, seed=0)
    assert sampler.rounds == round(len(items) / (30 * 4))
    assert abs(len(sampler) - len(items)) <= 4 * 32 + 30 * 4


def test_ranks_share_the_batches_a_single_process_draws():
    items = random_items(1, 45, 12, 20)  # enough images that no identity cycles within an epoch
    world_size, batch_size = 3, 24
    samplers = [PKSampler(items, 4, batch_size, seed=9, rank=r, world_size=world_size, rounds=1) for r in range(world_size)]
    single = PKSampler(items, 4, batch_size, seed=9, rounds=1)
    shares = [list(sampler) for sampler in samplers]
    assert sum(len(share) for share in shares) == len(set().union(*map(set, shares)))  # no index twice
    steps = [[index for batches in step for index in batches] for step in zip(*map(rank_batches, samplers))]
    assert steps == rank_batches(single)  # step by step, the shares in rank order are the single process's batch
    # and global_position says where each process's index stands in that stream
    stream = list(single)
    for rank, share in enumerate(shares):
        assert [stream[samplers[rank].global_position(p)] for p in range(len(share))] == share


def test_order_depends_on_seed_and_epoch_only_and_resumes():
    items = random_items(2, 31, 1, 11)
    sampler = PKSampler(items, 4, 16, seed=3)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    resumed = PKSampler(items, 4, 16, seed=123)
    resumed.load_state_dict(sampler.state_dict())
    assert list(resumed) == second and resumed.epoch == 1 and resumed.seed == 3
    assert list(PKSampler(items, 4, 16, seed=4)) != first
    with pytest.raises(ValueError, match="saved batch_size=16, this sampler has 32"):
        PKSampler(items, 4, 32).load_state_dict(sampler.state_dict())
    # another number of processes only splits the same batches
    shared = PKSampler(items, 4, 16, seed=123, rank=1, world_size=2)
    shared.load_state_dict(sampler.state_dict())
    assert list(shared) == [i for step in rank_batches(resumed) for i in step[8:]]


def test_works_as_a_dataloader_sampler():
    items = random_items(3, 19, 2, 7)
    sampler = PKSampler(items, 2, 10, seed=0)
    loader = DataLoader(torch.tensor([pid for _, pid, _ in items]), batch_size=10, sampler=sampler)
    batches = list(loader)
    assert len(batches) == len(sampler) // 10
    assert all(len(set(batch.tolist())) == 5 for batch in batches)


def test_rank_and_world_size_default_to_the_process_group(tmp_path):
    items = random_items(4, 12, 3, 6)
    assert (PKSampler(items, 2, 4).rank, PKSampler(items, 2, 4).world_size) == (0, 1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        sampler = PKSampler(items, 2, 4)
        assert (sampler.rank, sampler.world_size) == (0, 1)
    finally:
        dist.destroy_process_group()


def test_bad_arguments_are_clear_errors():
    items = random_items(5, 6, 2, 4)
    with pytest.raises(ValueError, match="batch_size=10 must be a positive multiple of num_instances=4"):
        PKSampler(items, 4, 10)
    with pytest.raises(ValueError, match="needs at least 8 identities, the items hold 6"):
        PKSampler(items, 2, 16)
    with pytest.raises(ValueError, match=r"rank=2 must lie in \[0, world_size=2\)"):
        PKSampler(items, 2, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size=6 with num_instances=2 cannot be split over 2 processes: the 3 identities"):
        PKSampler(items, 2, 6, rank=0, world_size=2)


def test_identities_per_process_shares_whole_identities_at_least_as_many_as_asked():
    assert identities_per_process(48, 4, 3) == 4
    assert identities_per_process(8, 4, at_least=2) == 2
    with pytest.raises(ValueError, match=r"data.batch_size=4 with data.num_instances=4 cannot be split over 1 process: .* at least 8"):
        identities_per_process(4, 4, at_least=2, prefix="data.")
    with pytest.raises(ValueError, match="batch_size=0 must be a positive multiple of num_instances=4"):
        identities_per_process(0, 4)
