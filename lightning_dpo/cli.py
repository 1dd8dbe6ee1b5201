"""The commands' shared entry point (not a command itself): `python -m lightning_dpo.<command>` = a
primary config of conf/ (conf/<command>.yaml) + the command's `run(cfg)`.

A user error prints one clear line and exits with status 2 (no traceback).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

from lightning_dpo.toy.config import ensure_toy_world, register_toy_resolver
from lightning_dpo.utils.config import register_resolvers
from lightning_dpo.utils.errors import LightningDPOError
from lightning_dpo.utils.quiet import quiet_libraries

log = logging.getLogger("lightning_dpo")


def hydra_command(fn: Callable[[Any], Any], config_name: str) -> Callable[[], Any]:
    """The `python -m lightning_dpo.<command>` entry point: `conf/<config_name>.yaml` + `fn`."""
    import hydra

    @hydra.main(version_base="1.3", config_path="pkg://lightning_dpo.conf", config_name=config_name)
    def main(cfg: Any) -> None:
        run_command(fn, cfg)

    return main


def run_command(fn: Callable[[Any], Any], cfg: Any) -> Any:
    """Run a command; a user error prints one clear line and exits with status 2 (no traceback)."""
    register_resolvers()
    register_toy_resolver()
    quiet_libraries()
    try:
        ensure_toy_world(cfg)
        return fn(cfg)
    except LightningDPOError as exc:
        log.error("%s", exc)
        sys.exit(2)
