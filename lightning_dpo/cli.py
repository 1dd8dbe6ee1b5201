"""The commands' shared entry point (not a command itself): `python -m lightning_dpo.<command>` = a
primary config of conf/ (conf/<command>.yaml) + the command's `run(cfg)`.

A user error prints one clear line and exits with status 2 (no traceback).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning_dpo.toy.config import ensure_toy_world, register_toy_resolver
from lightning_dpo.utils.config import register_resolvers
from lightning_dpo.utils.errors import LightningDPOError
from lightning_dpo.utils.quiet import quiet_libraries

log = logging.getLogger("lightning_dpo")


_DIR_ARGUMENT = re.compile(r"^\+*(hydra\.(?:run|sweep)\.dir)=")


def check_output_dir_arguments(argv: list[str], default: str = "outputs") -> None:
    """Hydra creates the run (or sweep) directory before any of the command's own checks, so an
    unusable one (inside a file, under /proc, not writable) would end in Hydra's traceback: it is
    checked here first, with one line and exit status 2, and nothing is created."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    targets = []
    for arg in argv:
        match = _DIR_ARGUMENT.match(arg)
        if match:
            try:
                targets.append((match.group(1), str(parser.parse_override(arg.lstrip("+")).value())))
            except Exception:
                continue  # Hydra reports an override it cannot parse itself
    if not targets and "-m" not in argv and "--multirun" not in argv:
        targets.append(("hydra.run.dir", default))
    for key, value in targets:
        problem = directory_problem(Path(value).expanduser())
        if problem:
            print(f"error: config key '{key}': cannot use {value} as the run directory: {problem}", file=sys.stderr)
            sys.exit(2)


def directory_problem(path: Path) -> str | None:
    """Why `path` cannot be created and written (None if it can); leaves nothing behind."""
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    created: list[Path] = []
    try:
        for part in reversed([p for p in [path.absolute(), *path.absolute().parents] if not p.exists()]):
            part.mkdir()
            created.append(part)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        for part in reversed(created):
            part.rmdir()
    return None


# choosing one of these (not the demo's `toy`) is a run on your own model or data
OWN_RUN_GROUPS = ("model", "data")


def without_demo_bundle(args: Sequence[str]) -> list[str]:
    """Compatibility for one release: `model=<x>` or `data=<x>` (x not `toy`) with no `experiment`
    choice used to start from nothing of the demo's. The demo is now the default bundle
    (experiment=demo), so such a command gets `experiment=none` added, with a FutureWarning."""
    if any(re.match(r"^[~+]*experiment(@[\w.]+)?(=|$)", a) for a in args):
        return list(args)
    own = [
        a
        for a in args
        if a.partition("=")[0] in OWN_RUN_GROUPS
        and a.partition("=")[2]
        and "toy" not in [c.strip() for c in a.partition("=")[2].split(",")]
    ]
    if not own:
        return list(args)
    warnings.warn(
        f"{' '.join(own)} without experiment=none: the demo is the default bundle now (experiment=demo, its prompts, probe and "
        "scorer); add experiment=none for a run on your own model or data (added for you in this release)",
        FutureWarning,
        stacklevel=2,
    )
    at = list(args).index(own[0])  # among the overrides: Hydra's parser wants them in one run, flags aside
    return [*args[:at], "experiment=none", *args[at:]]


def hydra_command(fn: Callable[[Any], Any], config_name: str) -> Callable[[], Any]:
    """The `python -m lightning_dpo.<command>` entry point: `conf/<config_name>.yaml` + `fn`."""
    import hydra

    @hydra.main(version_base="1.3", config_path="pkg://lightning_dpo.conf", config_name=config_name)
    def main(cfg: Any) -> None:
        run_command(fn, cfg)

    def entry() -> None:
        quiet_libraries()
        register_all_resolvers()  # Hydra resolves the configs before `main` runs
        main()

    return entry


def register_all_resolvers() -> None:
    """Every `${...}` resolver of the configs (idempotent): Hydra resolves before a command runs."""
    from lightning_dpo.assets.config import register_assets_resolvers

    register_resolvers()
    register_toy_resolver()
    register_assets_resolvers()


def ensure_built(cfg: Any, demo_keys: tuple[str, ...] = ()) -> None:
    """Build what the config's values point into (the demo world, the real-model assets), once."""
    from lightning_dpo.assets.config import ensure_assets

    ensure_toy_world(cfg, demo_keys=demo_keys)
    ensure_assets(cfg)


def compose_config(name: str, overrides: list[str]) -> Any:
    """A command's config (conf/<name>.yaml with `overrides`), also from inside another running command."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name=name, overrides=overrides)
    with initialize_config_module("lightning_dpo.conf", version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def run_command(fn: Callable[[Any], Any], cfg: Any) -> Any:
    """Run a command; a user error prints one clear line and exits with status 2 (no traceback)."""
    register_all_resolvers()
    quiet_libraries()
    try:
        ensure_built(cfg)
        return fn(cfg)
    except LightningDPOError as exc:
        log.error("%s", exc)
        sys.exit(2)
