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


def hydra_command(fn: Callable[[Any], Any], config_name: str) -> Callable[[], Any]:
    """The `python -m lightning_dpo.<command>` entry point: `conf/commands/<config_name>.yaml` + `fn`."""
    import hydra

    @hydra.main(version_base="1.3", config_path="pkg://lightning_dpo.conf.commands", config_name=config_name)
    def main(cfg: Any) -> None:
        run_command(fn, cfg)

    return main


def run_command(fn: Callable[[Any], Any], cfg: Any) -> Any:
    """Run a command; a user error prints one clear line and exits with status 2 (no traceback)."""
    register_resolvers()
    try:
        ensure_toy_world(cfg)
        return fn(cfg)
    except LightningDPOError as exc:
        log.error("%s", exc)
        sys.exit(2)
