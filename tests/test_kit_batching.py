"""Padding, masks and the length-bucketing sampler (determinism, sharding, measured padding)."""

from __future__ import annotations

import pytest
import torch

from longstream.pipelines.common import (
    DistEnv,
    LengthBucketSampler,
    UserError,
    lengths_to_mask,
    mask_to_lengths,
    pad_sequences,
    padding_fraction,
)


def test_pad_sequences_right_left_truncate():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0])
    x, m = pad_sequences([a, b], pad_value=-1.0)
    assert x.tolist() == [[1, 2, 3], [4, -1, -1]]
    assert m.tolist() == [[True, True, True], [True, False, False]]
    x, m = pad_sequences([a, b], side="left")
    assert x.tolist() == [[1, 2, 3], [0, 0, 4]] and m.tolist() == [[True] * 3, [False, False, True]]
    x, m = pad_sequences([a, b], max_len=2)
    assert x.tolist() == [[1, 2], [4, 0]] and mask_to_lengths(m).tolist() == [2, 1]
    feats = [torch.randn(4, 3), torch.randn(2, 3)]
    x, m = pad_sequences(feats)
    assert x.shape == (2, 4, 3) and torch.equal(x[1, :2], feats[1]) and (x[1, 2:] == 0).all()
    with pytest.raises(UserError, match="clip 1 has shape \\(2, 5\\).*per-step shape \\(3,\\)"):
        pad_sequences([torch.randn(4, 3), torch.randn(2, 5)], what="clip")


def test_lengths_mask_round_trip():
    m = lengths_to_mask([3, 0, 1])
    assert m.tolist() == [[True, True, True], [False, False, False], [True, False, False]]
    assert lengths_to_mask([1], max_len=3).tolist() == [[True, False, False]]
    n = torch.randint(0, 9, (20,))
    assert torch.equal(mask_to_lengths(lengths_to_mask(n)), n)


def _lengths(n=2000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(16, 4096, (n,), generator=g)


def test_every_item_once_and_deterministic_per_seed_and_epoch():
    lengths = _lengths(1003)
    s = LengthBucketSampler(lengths, 32, seed=3)
    first = list(s)
    assert len(first) == len(s) == 32  # 31 full + 1 short
    assert sorted(i for b in first for i in b) == list(range(1003))
    assert list(LengthBucketSampler(lengths, 32, seed=3)) == first  # same seed, epoch -> same order
    s.set_epoch(1)
    assert list(s) != first
    assert list(LengthBucketSampler(lengths, 32, seed=4)) != first
    s.set_epoch(0, start_batch=5)  # resume after 5 batches of epoch 0: the same remaining batches
    assert list(s) == first[5:]
    dl = LengthBucketSampler(lengths, 32, seed=3, drop_last=True)
    assert len(list(dl)) == len(dl) == 31 and all(len(b) == 32 for b in dl)


def test_bucketing_pads_far_less_than_random_batches():
    lengths = _lengths()
    bucketed = LengthBucketSampler(lengths, 16, seed=0, pool_batches=50).global_batches()
    perm = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    random = [perm[i : i + 16] for i in range(0, len(perm), 16)]
    pf_b, pf_r = padding_fraction(lengths, bucketed), padding_fraction(lengths, random)
    # uniform lengths in [16, 4096): random batches of 16 waste ~ 1 - 0.5 / (16/17) = 47%
    assert 0.40 < pf_r < 0.52
    assert pf_b < 0.05 and pf_b < pf_r / 10
    no_bucket = LengthBucketSampler(lengths, 16, seed=0, pool_batches=1).global_batches()
    assert padding_fraction(lengths, no_bucket) > 0.40  # pools of one batch: no bucketing
    # hand example: lengths 1, 3 in one batch -> 2 of 6 positions padded
    assert padding_fraction([1, 3], [[0, 1]]) == pytest.approx(2 / 6)


def test_shards_across_ranks_like_shard_indices():
    lengths = _lengths(203)
    world = 4
    single = LengthBucketSampler(lengths, 16, seed=1).global_batches()
    per_rank = [list(LengthBucketSampler(lengths, 16, seed=1, env=DistEnv(rank=r, world_size=world)))
                for r in range(world)]
    assert all(len(p) == len(single) for p in per_rank)
    for k, batch in enumerate(single[:-1]):
        assert [i for r in range(world) for i in per_rank[r][k]] == batch  # contiguous shares
        assert all(len(per_rank[r][k]) == 4 for r in range(world))
    last = [per_rank[r][-1] for r in range(world)]  # 203 = 12*16 + 11 -> padded to 12
    assert all(len(x) == 3 for x in last)
    assert set(i for x in last for i in x) == set(single[-1])
    with pytest.raises(UserError, match="not divisible by 4 processes"):
        LengthBucketSampler(lengths, 10, env=DistEnv(rank=0, world_size=4))
