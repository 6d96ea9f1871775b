"""Which samples each rank reads in each epoch, in which order and in which batches.

Both loaders (DALI and the PyTorch fallback) read the plan made here, so they see the same
samples in the same batches for the same ``(seed, epoch, rank, world_size)``:

* the epoch's order is a permutation drawn from a generator seeded with
  :func:`epoch_seed(seed, epoch) <epoch_seed>` when shuffling, the dataset order otherwise
  (so a resumed run sees the same order as an uninterrupted one);
* the order is padded, by repeating its first samples, to a multiple of ``world_size``,
  and rank ``r`` takes positions ``r, r + world_size, r + 2 world_size, ...``.  Every rank
  therefore has the same number of samples and the same number of batches (no rank waits
  forever in a collective), and the padding (at most one sample per rank) sits at the end
  of a rank's sequence;
* :attr:`ShardPlan.num_real` counts the rank's real samples; everything after them is
  padding, which the trainer keeps out of the loss's count and out of every metric.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tdsa_fast._checks import int_at_least

__all__ = ["epoch_seed", "step_seed", "ShardPlan", "plan_epoch", "step_real_counts"]


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for ``(seed, epoch)``; different epochs give unrelated streams."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF, 0x7D5A]).generate_state(
        1, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


def step_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed for the random draws (the channel masks) of optimiser step ``step`` on
    ``rank``: a run replays them exactly after a resume, and one process that accumulates
    the ranks' micro-batches can draw the masks each rank drew."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step) & 0xFFFFFFFF, int(rank) & 0xFFFFFFFF,
                                    0x3A5C]).generate_state(1, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


@dataclass(frozen=True)
class ShardPlan:
    """One rank's samples for one epoch.

    Attributes:
        indices: ``int64 [n]``, sample indices (into the split's sample list) in reading
            order; the first ``num_real`` are real, the rest repeat samples of other ranks.
        num_real: the number of real samples of this rank.
        batch_size: samples per batch; the last batch holds the remainder.
        epoch: the epoch the plan is for (it also seeds the augmentation).
    """

    indices: np.ndarray
    num_real: int
    batch_size: int
    epoch: int

    def __len__(self) -> int:
        """The number of batches."""
        return -(-len(self.indices) // self.batch_size)

    def batch(self, k: int) -> tuple[np.ndarray, int]:
        """``(indices [m], real)`` of batch ``k``: its first ``real`` samples are real."""
        if not 0 <= k < len(self):
            raise IndexError(f"batch {k} out of range for a plan of {len(self)} batches")
        start = k * self.batch_size
        chunk = self.indices[start:start + self.batch_size]
        return chunk, int(min(max(self.num_real - start, 0), len(chunk)))


def plan_epoch(num_samples: int, *, batch_size: int, shuffle: bool, seed: int = 0, epoch: int = 0,
               rank: int = 0, world_size: int = 1) -> ShardPlan:
    """The :class:`ShardPlan` of ``rank`` out of ``world_size`` for ``epoch``.

    Raises:
        ValueError: ``num_samples < 1``, ``batch_size < 1``, ``world_size < 1`` or
            ``rank`` outside ``[0, world_size)``.
    """
    n = int_at_least("num_samples", num_samples, 1)
    b = int_at_least("batch_size", batch_size, 1)
    w = int_at_least("world_size", world_size, 1)
    r = int_at_least("rank", rank, 0)
    if r >= w:
        raise ValueError(f"rank {r} is outside [0, world_size={w})")
    if shuffle:
        order = np.random.Generator(np.random.PCG64(epoch_seed(seed, epoch))).permutation(n)
    else:
        order = np.arange(n)
    per_rank = -(-n // w)
    padded = np.resize(order, per_rank * w)  # np.resize repeats from the start
    return ShardPlan(indices=padded[r::w].astype(np.int64), num_real=len(range(r, n, w)), batch_size=b,
                     epoch=int(epoch))


def step_real_counts(num_samples: int, *, batch_size: int, world_size: int) -> np.ndarray:
    """``int64 [steps]``: real samples summed over all ranks at each step of an epoch
    (the same for every shuffle): a rank can scale its loss by ``world_size * own / total``
    without communicating.

    Raises:
        ValueError: as :func:`plan_epoch`.
    """
    w = int_at_least("world_size", world_size, 1)  # range(0) would make no plan, and fail later
    plans = [plan_epoch(num_samples, batch_size=batch_size, shuffle=False, rank=r, world_size=w)
             for r in range(w)]
    return np.array([sum(p.batch(k)[1] for p in plans) for k in range(len(plans[0]))], dtype=np.int64)
