"""The training order: torch's DistributedSampler, plus a skip that makes mid-epoch resume exact.

The order is DistributedSampler's (`drop_last=True`): epoch `e` is a permutation drawn from
`seed + e` (independent of any global RNG state), cut to a multiple of the world size, and rank
`r` of `w` takes positions `r, r + w, ...`. The union of the ranks' batches `j` is therefore the
single-process batch `j` of size `w * batch_size`, which makes a DDP run equal a single-process
run with the same global batch.

The one addition: when an epoch's iteration starts, `consumed(epoch)` says how many of this
rank's samples of that epoch the restored optimizer steps already used, and those are skipped.
It is asked at iteration time, from the epoch Lightning is about to run and the restored step
count, so every restart path of Lightning's loops (mid-epoch, at an epoch's last batch, after a
validation) yields exactly the batches an uninterrupted run would have seen next.

Why not Lightning's stateful-dataloader resume: it restores a loader's own saved state, which is
a second record of the position that can disagree with the weights (a checkpoint written after a
validation, a loader rebuilt with other workers). The optimizer-step count is the one number the
weights already carry; the loader's `state_dict` only records the order's parameters, to warn
when a resume would change them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    def __init__(
        self,
        dataset: Any,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        consumed: Callable[[int], int] | None = None,
    ):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.consumed = consumed  # epoch -> samples of this rank already used in that epoch

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip = self.consumed(self.epoch) if self.consumed is not None else 0
        return iter(indices[skip:])
