"""A seeded, epoch-aware, rank-aware sampler that can resume in the middle of an epoch.

The order of epoch `e` is a permutation drawn from `seed + e`, so it does not depend on any
global RNG state. Under data parallelism rank `r` of `w` takes positions `r, r + w, ...` of that
permutation: the union of the ranks' batches `j` is exactly the single-process batch `j` of
size `w * batch_size`, which makes a DDP run equal a single-process run with the same global batch.
Resuming skips the samples that the restored optimizer steps already consumed in the epoch.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, num_samples: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._skip = 0  # samples of this rank to skip at the next iteration only

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of each epoch."""
        self.epoch = epoch

    def skip_next(self, num_samples: int) -> None:
        """Skip the first `num_samples` of the next iteration (mid-epoch resume)."""
        self._skip = num_samples

    def order(self, epoch: int) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            perm = list(range(self.num_samples))
        usable = self.num_samples - self.num_samples % self.world_size
        return perm[:usable][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        indices = self.order(self.epoch)
        skip, self._skip = self._skip, 0
        return iter(indices[skip:])

    def __len__(self) -> int:
        # the full epoch length, also when resuming: Lightning counts batches from the restored position
        return self.num_samples // self.world_size
