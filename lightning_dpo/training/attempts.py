"""Recording an attempt: `.hydra/` (the attempt's config, resolved config, overrides, Hydra's own
config), a copy under `.hydra/attempts/<NNN>-<time>/` (with `changes.yaml` for allowed changes),
`resume_command.txt`, and the clean-up of what a killed attempt left (temporary files, checkpoints
of steps after the one resumed). Hydra's own writing is switched off (conf/hydra/default.yaml) so
that nothing is written before the run is accepted."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_dpo.runs.directory import RunDirectory
from lightning_dpo.training.plan import RunPlan, resume_command, task_overrides
from lightning_dpo.utils.io import atomic_write_text

log = logging.getLogger(__name__)


def record_attempt(run: RunDirectory, cfg: DictConfig, plan: RunPlan) -> Path:
    """Write this attempt's record (module docstring) and clear what a killed attempt left."""
    remove_leftovers(run, plan.checkpoint_step if plan.resuming else None)
    overrides = task_overrides()
    config_yaml = OmegaConf.to_yaml(cfg)
    overrides_yaml = OmegaConf.to_yaml(OmegaConf.create(overrides))
    hydra_yaml = _hydra_yaml()
    attempts = run.hydra_dir / "attempts"
    number = 1 + max((int(p.name.split("-")[0]) for p in attempts.glob("[0-9]*") if p.name.split("-")[0].isdigit()), default=0)
    attempt = attempts / f"{number:03d}-{time.strftime('%Y%m%d-%H%M%S')}"
    resolved = _resolved_yaml(cfg)
    for directory in (run.hydra_dir, attempt):
        atomic_write_text(directory / "config.yaml", config_yaml)
        if resolved is not None:
            atomic_write_text(directory / "config.resolved.yaml", resolved)
        atomic_write_text(directory / "overrides.yaml", overrides_yaml)
        if hydra_yaml is not None:
            atomic_write_text(directory / "hydra.yaml", hydra_yaml)
    if plan.changes:
        atomic_write_text(
            attempt / "changes.yaml",
            OmegaConf.to_yaml(OmegaConf.create({k: {"old": _plain(a), "new": _plain(b)} for k, (a, b) in plan.changes.items()})),
        )
        log.warning(
            "%s with changed settings (allow_changes): %s",
            "resuming" if plan.resuming else "restarting",
            "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in plan.changes.items()),
        )
    atomic_write_text(run.hydra_dir / "resume_command.txt", resume_command(run.path, overrides) + "\n")
    return attempt


def remove_leftovers(run: RunDirectory, resumed_step: int | None) -> None:
    """Temporary files of a killed write, and checkpoints of steps the resumed one never reached."""
    for tmp in run.path.rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink()
    if resumed_step is None:
        return
    for ckpt in run.checkpoints.glob("*.ckpt"):
        match = re.search(r"step[_=]?(\d+)", ckpt.stem)
        if match and int(match.group(1)) > resumed_step:
            log.info("removing %s: written after step %d, which this resume starts from", ckpt, resumed_step)
            ckpt.unlink()


def _resolved_yaml(cfg: DictConfig) -> str | None:
    """The config with every interpolation resolved (the paths and values this attempt really used)."""
    try:
        return OmegaConf.to_yaml(cfg, resolve=True)
    except Exception as exc:  # a value that cannot be resolved outside its context
        log.info("could not record the resolved config (%s)", exc)
        return None


def _hydra_yaml() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return OmegaConf.to_yaml({"hydra": HydraConfig.get()})
    except (ImportError, ValueError):
        return None


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
