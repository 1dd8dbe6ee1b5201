"""Checkpoints that are never half-written, and read only as tensors and plain values (the trainer's
resume reads through `AtomicCheckpointIO.load_checkpoint`: lightning_dpo/runs/checkpoints.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lightning_dpo.runs.checkpoints import check_checkpoint, resolve_ckpt_path, safe_load
from lightning_dpo.utils.io import atomic_save

__all__ = ["AtomicCheckpointIO", "check_checkpoint", "resolve_ckpt_path", "safe_load"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` to a temporary file beside the target, fsync, then one `os.replace`: a crash at
    any moment leaves the previous checkpoint intact.

    What it adds over Lightning's own save (`_atomic_save`: the whole checkpoint serialised into an
    in-memory buffer, then written through an fsspec transaction): no second, in-memory copy of the
    checkpoint (tens of GB for a 7B model with its optimizer state), an fsync before the rename (the
    file survives a power loss once it is in place), and a full disk or a read-only directory
    reported by file name (OutputError), with the status of the run saying so. Reading is always
    `weights_only` (the caller's choice is ignored): a checkpoint never runs code."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        atomic_save(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return safe_load(path)
