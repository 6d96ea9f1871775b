"""The epoch plan shared by both loaders (tdsa_fast.data.sharding): which samples each
rank reads, in which order and in which batches."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from tdsa_fast.data.sharding import ShardPlan, epoch_seed, plan_epoch, step_real_counts

WORLD_SIZES = [1, 2, 4]
NUM_SAMPLES = [1, 3, 7, 10, 2040]
BATCH_SIZES = [1, 3, 32]

GRID = list(itertools.product(NUM_SAMPLES, BATCH_SIZES, WORLD_SIZES))
GRID_IDS = [f"n{n}-b{b}-w{w}" for n, b, w in GRID]


def plans(n, b, w, *, shuffle, seed=0, epoch=0) -> list[ShardPlan]:
    return [plan_epoch(n, batch_size=b, shuffle=shuffle, seed=seed, epoch=epoch, rank=r, world_size=w)
            for r in range(w)]


def batches(plan: ShardPlan) -> list[tuple[np.ndarray, int]]:
    return [plan.batch(k) for k in range(len(plan))]


def real_from_batches(plan: ShardPlan) -> np.ndarray:
    """The rank's real samples as a consumer sees them: each batch's first ``real``."""
    parts = [idx[:real] for idx, real in batches(plan)]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


@pytest.mark.parametrize("shuffle", [False, True], ids=["eval", "shuffle"])
@pytest.mark.parametrize("n,b,w", GRID, ids=GRID_IDS)
def test_real_samples_of_all_ranks_cover_range_once(n, b, w, shuffle):
    ps = plans(n, b, w, shuffle=shuffle, seed=3, epoch=1)
    for r, p in enumerate(ps):
        assert p.indices.dtype == np.int64, f"rank {r}: indices dtype {p.indices.dtype}, want int64"
        assert p.indices.ndim == 1
        assert ((p.indices >= 0) & (p.indices < n)).all(), f"rank {r}: an index outside [0, {n})"
        assert np.array_equal(real_from_batches(p), p.indices[:p.num_real]), (
            f"rank {r}: the batches' real samples are not the plan's first num_real={p.num_real} indices")
    real = np.concatenate([real_from_batches(p) for p in ps])
    counts = np.bincount(real, minlength=n)
    assert len(real) == n and (counts == 1).all(), (
        f"real samples over {w} ranks: {len(real)} for N={n}; indices seen twice: "
        f"{np.flatnonzero(counts > 1)[:10].tolist()}, never: {np.flatnonzero(counts == 0)[:10].tolist()}")


@pytest.mark.parametrize("n,b,w", GRID, ids=GRID_IDS)
def test_every_rank_has_the_same_batches(n, b, w):
    ps = plans(n, b, w, shuffle=True, seed=1, epoch=2)
    per_rank = -(-n // w)
    want_sizes = [b] * (per_rank // b) + ([per_rank % b] if per_rank % b else [])
    for r, p in enumerate(ps):
        assert len(p.indices) == per_rank, f"rank {r}: {len(p.indices)} samples, want ceil({n}/{w}) = {per_rank}"
        assert len(p) == len(want_sizes), f"rank {r}: {len(p)} batches, want {len(want_sizes)}"
        sizes = [len(idx) for idx, _ in batches(p)]
        assert sizes == want_sizes, f"rank {r}: batch sizes {sizes[-3:]}..., want {want_sizes[-3:]}..."
        assert (p.batch_size, p.epoch) == (b, 2)
    with pytest.raises(IndexError):
        ps[0].batch(len(ps[0]))
    with pytest.raises(IndexError):
        ps[0].batch(-1)


@pytest.mark.parametrize("n,b,w", GRID, ids=GRID_IDS)
def test_padding_only_at_the_end_and_at_most_one_per_rank(n, b, w):
    ps = plans(n, b, w, shuffle=True, seed=5)
    total_padding = 0
    for r, p in enumerate(ps):
        padding = len(p.indices) - p.num_real
        assert p.num_real == len(range(r, n, w)), f"rank {r}: num_real {p.num_real}, want {len(range(r, n, w))}"
        assert 0 <= padding <= 1, f"rank {r}: {padding} padding samples, want at most 1"
        total_padding += padding
        reals = [real for _, real in batches(p)]
        sizes = [len(idx) for idx, _ in batches(p)]
        # all batches full of real samples, then (only at the very end) the padding
        first_short = next((k for k, (real, size) in enumerate(zip(reals, sizes)) if real < size), len(reals))
        assert all(real == 0 for real in reals[first_short + 1:]), (
            f"rank {r}: real samples after padding (per-batch real counts {reals})")
        assert sum(sizes) - sum(reals) == padding
    assert total_padding == -(-n // w) * w - n, f"padding {total_padding}, want ceil(N/w)*w - N"
    assert total_padding < w


@pytest.mark.parametrize("n", [10, 2040])
@pytest.mark.parametrize("w", WORLD_SIZES)
def test_shuffle_order_follows_seed_and_epoch(n, w):
    def order(seed, epoch):
        return np.concatenate([p.indices for p in plans(n, 4, w, shuffle=True, seed=seed, epoch=epoch)])

    a = order(7, 3)
    assert np.array_equal(a, order(7, 3)), "the same (seed, epoch) gave another order"
    assert not np.array_equal(a, order(7, 4)), "the next epoch repeated the order"
    assert not np.array_equal(a, order(8, 3)), "another seed gave the same order"
    first = plans(n, 4, w, shuffle=True, seed=7, epoch=3)[0]
    assert not np.array_equal(np.sort(first.indices[:first.num_real]), first.indices[:first.num_real]), (
        "shuffle=True left rank 0's samples in dataset order")


@pytest.mark.parametrize("n", [7, 10, 2040])
@pytest.mark.parametrize("w", [2, 4])
def test_shuffle_is_one_global_permutation_split_by_rank(n, w):
    """Rank r takes positions r, r + w, ... of the same epoch order that world size 1
    reads, so a change of world size does not change which samples an epoch visits."""
    (single,) = plans(n, 5, 1, shuffle=True, seed=11, epoch=6)
    ps = plans(n, 5, w, shuffle=True, seed=11, epoch=6)
    interleaved = np.empty(n, np.int64)
    for r, p in enumerate(ps):
        interleaved[r::w] = p.indices[:p.num_real]
    assert np.array_equal(interleaved, single.indices), "ranks do not interleave world size 1's order"
    # the padding repeats the first samples of the order
    pad = [p.indices[p.num_real:] for p in ps if len(p.indices) > p.num_real]
    if pad:
        assert np.array_equal(np.concatenate(pad), single.indices[:len(pad)])


@pytest.mark.parametrize("n,b,w", GRID, ids=GRID_IDS)
def test_eval_order_and_sharded_evaluation_counts_each_sample_once(n, b, w):
    ps = plans(n, b, w, shuffle=False, seed=99, epoch=5)  # seed/epoch must not matter
    assert [p.indices.tolist() for p in ps] == [p.indices.tolist() for p in plans(n, b, w, shuffle=False)]
    for r, p in enumerate(ps):
        assert np.array_equal(p.indices[:p.num_real], np.arange(r, n, w)), (
            f"rank {r}: eval order is not the dataset order r, r+w, ...")
    if w == 1:
        assert np.array_equal(ps[0].indices, np.arange(n))
    # an evaluation that counts each batch's first `real` samples, on every rank
    seen = np.zeros(n, np.int64)
    for p in ps:
        for idx, real in batches(p):
            np.add.at(seen, idx[:real], 1)
    assert (seen == 1).all(), f"eval over {w} ranks counted indices {np.flatnonzero(seen != 1)[:10].tolist()} != once"


@pytest.mark.parametrize("n,b,w", GRID, ids=GRID_IDS)
def test_step_real_counts(n, b, w):
    counts = step_real_counts(n, batch_size=b, world_size=w)
    ps = plans(n, b, w, shuffle=True, seed=2, epoch=9)
    assert counts.dtype == np.int64 and counts.shape == (len(ps[0]),)
    assert int(counts.sum()) == n, f"step_real_counts sums to {int(counts.sum())}, want N={n}"
    assert (counts >= 0).all() and (counts <= w * b).all()
    per_step = [sum(p.batch(k)[1] for p in ps) for k in range(len(ps[0]))]
    assert counts.tolist() == per_step, "differs from the real counts of a shuffled epoch"


def test_epoch_seed():
    seeds = {epoch_seed(s, e) for s in range(4) for e in range(50)}
    assert len(seeds) == 200, "two (seed, epoch) pairs share an epoch seed"
    assert all(0 <= s < 2 ** 63 for s in seeds)
    assert epoch_seed(3, 4) == epoch_seed(3, 4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_samples=0), "num_samples"),
    (dict(num_samples=-5), "num_samples"),
    (dict(num_samples=2.0), "num_samples"),
    (dict(num_samples=True), "num_samples"),
    (dict(num_samples="10"), "num_samples"),
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=1.5), "batch_size"),
    (dict(world_size=0), "world_size"),
    (dict(rank=-1), "rank"),
    (dict(rank=2, world_size=2), "rank"),
    (dict(rank=5, world_size=4), "rank"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    args = dict(num_samples=10, batch_size=4, shuffle=True, rank=0, world_size=2)
    args.update(kwargs)
    n = args.pop("num_samples")
    with pytest.raises(ValueError, match=match):
        plan_epoch(n, **args)


@pytest.mark.parametrize("world_size", [0, -1, 2.5, True])
def test_step_real_counts_bad_arguments(world_size):
    with pytest.raises(ValueError, match="world_size"):
        step_real_counts(10, batch_size=4, world_size=world_size)
    with pytest.raises(ValueError, match="batch_size"):
        step_real_counts(10, batch_size=0, world_size=2)
    with pytest.raises(ValueError, match="num_samples"):
        step_real_counts(0, batch_size=4, world_size=2)
