"""Shared start-up for the Hydra-configured commands (probe, evaluate, analyze, make_pairs)."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

import torch

from lightning_dpo.config import ensure_toy_world, register_resolvers
from lightning_dpo.utils.errors import LightningDPOError

log = logging.getLogger("lightning_dpo")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_command(fn: Callable[[Any], Any], cfg: Any) -> Any:
    """Run a command; a user error prints one clear line and exits with status 2 (no traceback)."""
    register_resolvers()
    try:
        ensure_toy_world(cfg)
        return fn(cfg)
    except LightningDPOError as exc:
        log.error("%s", exc)
        sys.exit(2)
