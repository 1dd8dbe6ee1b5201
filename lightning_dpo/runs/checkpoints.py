"""Reading a checkpoint a user hands us: it never runs code, and one that cannot be read is named.

A checkpoint comes from `ckpt_path=<file>`, a `last.ckpt` planted in a run directory, or `evaluate
model.name_or_path=<file>.ckpt`: it is read with `torch.load(..., weights_only=True)` everywhere (the
trainer's resume too, through training/checkpoints.py), so unpickling builds tensors and plain
values (dicts, lists, numbers, strings) only and never calls a function the file names. The
project writes nothing else into its checkpoints (hyper-parameters are stored as plain
containers); a file that holds anything else is refused in one line naming it and the type it
tried to build.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from lightning_dpo.utils.errors import CheckpointError

log = logging.getLogger(__name__)

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def safe_load(path: str | Path) -> Any:
    """`torch.load` of a file that may come from anyone: tensors and plain values only
    (memory-mapped, on the CPU). A file that asks to build any other object is refused, naming it."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        what = f"an object of type {found.group(1)}" if found else "an object that is not a tensor or a plain value"
        raise CheckpointError(
            f"checkpoint {path} refused: it asks to build {what}, and a checkpoint is only read as tensors "
            "and plain values (loading it would let the file run code)"
        ) from None


def _other_checkpoints(path: Path) -> list[Path]:
    return sorted((p for p in path.parent.glob("*.ckpt") if p != path), key=lambda p: p.stat().st_mtime, reverse=True)


def check_checkpoint(path: str | Path) -> dict[str, Any]:
    """Open the checkpoint lazily (memory-mapped) so a truncated or corrupted file fails here, by
    name; returns its contents (tensors memory-mapped, not read)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (config key 'ckpt_path')")
    try:
        state = safe_load(path)
        if not isinstance(state, dict) or "state_dict" not in state:
            raise ValueError("not a Lightning checkpoint (no state_dict)")
    except CheckpointError:
        raise
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
