"""Checkpoints that are never half-written, and a clear error for one that cannot be read."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lightning_dpo.utils.errors import CheckpointError
from lightning_dpo.utils.io import atomic_save

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` to a temporary file beside the target, fsync, then one `os.replace`: a crash at
    any moment leaves the previous checkpoint intact.

    What it adds over Lightning's own save (`_atomic_save`: the whole checkpoint serialised into an
    in-memory buffer, then written through an fsspec transaction): no second, in-memory copy of the
    checkpoint (tens of GB for a 7B model with its optimizer state), an fsync before the rename (the
    file survives a power loss once it is in place), and a full disk or a read-only directory
    reported by file name (OutputError), with the status of the run saying so."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        atomic_save(path, lambda tmp: torch.save(checkpoint, tmp))


def _other_checkpoints(path: Path) -> list[Path]:
    return sorted((p for p in path.parent.glob("*.ckpt") if p != path), key=lambda p: p.stat().st_mtime, reverse=True)


def check_checkpoint(path: str | Path) -> dict[str, Any]:
    """Open the checkpoint lazily (memory-mapped) so a truncated or corrupted file fails here, by
    name; returns its contents (tensors memory-mapped, not read)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (config key 'ckpt_path')")
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        if not isinstance(state, dict) or "state_dict" not in state:
            raise ValueError("not a Lightning checkpoint (no state_dict)")
    except Exception as exc:
        others = _other_checkpoints(path)
        hint = f"; the previous checkpoint is {others[0]} (pass ckpt_path={others[0]})" if others else ""
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}){hint}") from exc
    return state


def resolve_ckpt_path(ckpt_path: str | None, checkpoint_dir: str | Path) -> tuple[str | None, dict[str, Any] | None]:
    """`null` starts fresh; `last` resumes from `<checkpoint_dir>/last.ckpt` if it exists (else
    starts fresh); any other value is a checkpoint file. The file is checked before training:
    returns its path and contents (tensors memory-mapped), or (None, None) for a fresh run."""
    if not ckpt_path:
        return None, None
    if ckpt_path == "last":
        last = Path(checkpoint_dir) / "last.ckpt"
        if not last.exists():
            log.info("ckpt_path=last: no %s yet, starting from scratch", last)
            return None, None
        return str(last), check_checkpoint(last)
    return str(ckpt_path), check_checkpoint(ckpt_path)
