"""FSDP2 (`trainer=fsdp`): every decoder block, and then the rest of the model, sharded across the
data-parallel processes with `torch.distributed.fsdp.fully_shard`, through Lightning's
`ModelParallelStrategy`.

Why FSDP2 and not Lightning's `FSDPStrategy`: that one wraps FSDP1, which refuses a CPU, so it
could never be tested here; FSDP2 runs on CPU processes with the gloo backend (CI runs it) and on
GPUs with NCCL, from the same code. The parameters become `DTensor`s (each process holds a slice
of dim 0); a forward gathers one block at a time, so every process must run the same forwards in
the same order. What reads weights outside a forward (value vectors, the probe's logit lens, the
component split) gathers just the matrix it reads (`model.wrappers.full`), on every process.

The policy and the frozen reference are sharded the same way. Checkpoints are full by default
(`save_distributed_checkpoint: false`): one `.ckpt` file written by rank 0 through the atomic
checkpoint IO, loadable by one process or by any number of them; a sharded checkpoint (a folder,
one file per process) is faster to write for models whose full state does not fit one process.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from lightning_dpo.model.wrappers import is_sharded
from lightning_dpo.neurons.hooks import find_decoder_layers
from lightning_dpo.training.lightning_compat import set_parallel_sizes
from lightning_dpo.utils.errors import ConfigError
from lightning_dpo.utils.processes import Processes

log = logging.getLogger(__name__)
MIXED_PRECISION = ("auto", "bf16", "fp16", "none")


class FSDP2Strategy(ModelParallelStrategy):
    """Data-parallel FSDP2 over every process (tensor parallel 1).

    Args:
        mixed_precision: `auto` (bf16 parameters and fp32 gradient reduction on a GPU, fp32 on a
            CPU), `bf16`, `fp16` or `none`. Keep `trainer.precision=32-true`: FSDP2 casts itself.
        reshard_after_forward: free each block's gathered weights after its forward (less memory,
            one more gather in the backward).
        save_distributed_checkpoint: false (default): one full checkpoint file; true: a folder of
            shards (Lightning's distributed checkpoint).
    """

    def __init__(
        self, mixed_precision: str = "auto", reshard_after_forward: bool = True, save_distributed_checkpoint: bool = False, **kwargs: Any
    ) -> None:
        if mixed_precision not in MIXED_PRECISION:
            raise ConfigError("trainer.strategy.mixed_precision", f"got {mixed_precision!r}; accepted: {list(MIXED_PRECISION)}")
        for key in ("data_parallel_size", "tensor_parallel_size"):
            if key in kwargs:
                raise ConfigError(f"trainer.strategy.{key}", "is set by trainer=fsdp: data parallel over every process, tensor parallel 1")
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
        self.mixed_precision = mixed_precision
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        set_parallel_sizes(self, data_parallel=self.num_nodes * self.num_processes, tensor_parallel=1)
        super().setup_environment()

    def mixed_precision_policy(self) -> Any:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        choice = self.mixed_precision
        if choice == "auto":
            choice = "bf16" if self.root_device.type == "cuda" else "none"
        if choice == "none":
            return MixedPrecisionPolicy()
        dtype = torch.bfloat16 if choice == "bf16" else torch.float16
        return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)

    def shard(self, model: nn.Module) -> nn.Module:
        """fully_shard every decoder block, then the root (embeddings, final norm, LM head)."""
        return shard_model(model, self.device_mesh["data_parallel"], self.mixed_precision_policy(), self.reshard_after_forward)


def shard_model(model: nn.Module, mesh: Any, mp_policy: Any = None, reshard_after_forward: bool = True) -> nn.Module:
    """Apply FSDP2 to `model` in place (idempotent): each decoder block is one unit of gathering."""
    from torch.distributed.fsdp import fully_shard

    if is_sharded(model):
        return model
    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    for block in find_decoder_layers(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def shard_across(models: list[nn.Module], processes: Processes) -> list[nn.Module]:
    """A command's models (analyze, evaluate under torchrun) sharded over its processes, one device
    mesh for all of them; fp32 or the loaded dtype (no training: no mixed-precision policy)."""
    if processes.world == 1:
        return models
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(processes.device.type, (processes.world,))
    if processes.is_main:
        log.info("%d model(s) sharded over %d processes (FSDP2)", len(models), processes.world)
    return [shard_model(model, mesh) for model in models]
