"""A sweep's jobs: the run directories found under a sweep directory, and the ones its
`multirun.yaml` (written by Hydra when the sweep starts) planned, so that a job folder deleted from
a sweep is listed as missing instead of silently dropping out of the table."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from omegaconf import OmegaConf

from lightning_dpo.runs.directory import RunDirectory
from lightning_dpo.utils.config import safe_dirname

log = logging.getLogger(__name__)

# the job folder name conf/hydra/default.yaml gives (the only naming whose folders can be predicted)
DEFAULT_SUBDIR = "${safe_dirname:${hydra.job.override_dirname}}"


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Every run directory under `sweep_dir` (a folder holding .hydra/config.yaml), attempts and W&B files aside."""
    return sorted(p.parent.parent for p in sweep_dir.glob("**/.hydra/config.yaml") if "wandb" not in p.parts and "attempts" not in p.parts)


def is_sweep(path: Path) -> bool:
    """A folder of run directories (not itself a run directory)."""
    return path.is_dir() and not RunDirectory.is_run(path)


def planned_jobs(sweep_dir: Path) -> list[str] | None:
    """The job folder names the sweep planned (from <sweep_dir>/multirun.yaml), or None when they
    cannot be known (no multirun.yaml, another folder naming, or sweep settings it cannot expand)."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        hydra = OmegaConf.load(path).hydra
        if OmegaConf.to_container(hydra.sweep, resolve=False).get("subdir") != DEFAULT_SUBDIR:
            return None
        parser = OverridesParser.create()
        naming = hydra.job.config.override_dirname
        exclude = set(naming.exclude_keys or [])
        jobs = BasicSweeper.split_arguments(parser.parse_overrides(list(hydra.overrides.task)), None)[0]
        names = []
        for job in jobs:
            lines = sorted(str(o.input_line) for o in parser.parse_overrides(job) if o.key_or_group not in exclude)
            names.append(safe_dirname(re.sub("=", naming.kv_sep, naming.item_sep.join(lines))))
        return names
    except Exception as exc:  # an old or hand-edited multirun.yaml: the jobs found are all we know
        log.info("%s: cannot tell the planned jobs (%s: %s)", path, type(exc).__name__, exc)
        return None
