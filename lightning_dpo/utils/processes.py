"""The processes that evaluate one model together: DDP or trainer=fsdp during training, and the
`analyze` and `evaluate` commands under torchrun (every model sharded with FSDP2).

Why one object: the toxicity evaluation of the callback and of the commands share their prompts
between processes in one way (rank r decodes prompts r, r + world, ...), so that both give the
numbers of one process. When the model is sharded every forward is a collective: each process
must run as many forwards, so a short share is padded and decoding stops only once every process
is done.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """Rank `rank` of `world` processes; `sharded`: the model is FSDP2-sharded across them."""

    rank: int = 0
    world: int = 1
    sharded: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def of_trainer(cls, trainer: Any, sharded: bool, device: torch.device) -> Processes:
        return cls(trainer.global_rank, trainer.world_size, sharded and trainer.world_size > 1, device)

    def split(self, items: Sequence[T]) -> tuple[list[T], int]:
        """This process's items (rank, rank + world, ...) and how many copies of the first item pad
        them: when sharded, every process runs as many forwards (the padding is dropped after)."""
        mine = list(items[self.rank :: self.world])
        padding = -(-len(items) // self.world) - len(mine) if self.sharded else 0
        return mine + [items[0]] * padding, padding

    def interleave(self, mine: list[T]) -> list[T]:
        """Every process's `split` share gathered back into the items' order, on every process."""
        if self.world == 1:
            return mine
        shares: list[Any] = [None] * self.world
        dist.all_gather_object(shares, mine)
        total = sum(len(s) for s in shares)
        return [shares[i % self.world][i // self.world] for i in range(total)]

    def from_main(self, make: Callable[[], T]) -> T:
        """`make()` run on the main process alone (a folder created, texts scored once), its result
        on every process."""
        return self.broadcast(make() if self.is_main else None)

    def broadcast(self, obj: T | None) -> T:
        """The main process's `obj` (the others may pass None), on every process."""
        box = [obj]
        if self.world > 1:
            dist.broadcast_object_list(box, src=0)
        assert box[0] is not None, "the main process broadcast None"
        return box[0]

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over processes (a new tensor; the input is left as it was)."""
        total = tensor.clone()
        if self.world > 1:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @property
    def sum_across(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """`reduce_sum` where there are several processes, else None (nothing to sum)."""
        return self.reduce_sum if self.world > 1 else None

    def all_finished(self, done_here: bool) -> bool:
        """True on every process once every process's rows are finished (decoding's early stop)."""
        pending = torch.tensor([0.0 if done_here else 1.0], device=self.device)
        return float(self.reduce_sum(pending)) == 0.0

    def decoding_sync(self) -> Callable[[bool], bool] | None:
        """The early stop across processes that sharded decoding needs (None: each stops alone)."""
        return self.all_finished if self.sharded else None


SINGLE = Processes()


@contextlib.contextmanager
def launched(device: torch.device) -> Iterator[Processes]:
    """The processes of a command started by torchrun (WORLD_SIZE > 1), in the process group (NCCL on
    GPUs, each rank on its LOCAL_RANK's GPU; gloo on CPUs) until the command ends, also on error.
    Launched alone: one process."""
    processes = Processes(device=device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        processes = Processes(dist.get_rank(), dist.get_world_size(), sharded=True, device=device)
    try:
        yield processes
    finally:
        if processes.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
