"""Fresh run, resume or refusal: decided from the run directory's files before anything is written.

- A fresh run into a directory that holds a run's outputs is refused.
- A resume (`ckpt_path=last` or a file) compares the weight-deciding settings (`run_config`) with the
  ones stored in the checkpoint; a difference is refused with the changed keys (old -> new) unless
  `allow_changes` names them. `trainer.max_steps` below the checkpoint's step is refused.
- `ckpt_path=last` in a directory that holds outputs but no checkpoint (they were deleted) restarts
  the run from scratch: its settings are compared with the run's recorded config first (the same
  refusal), and every output of the public contract is moved to `previous/<time>/`, none overwritten.
Nothing is written here, so a refused run never changes another run's files.
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lightning_dpo.runs.directory import ATTEMPT_RECORD, RunDirectory
from lightning_dpo.utils.config import override_arg
from lightning_dpo.utils.errors import ConfigError, OutputError

log = logging.getLogger(__name__)

# What a resume may not change silently: everything that decides the weights.
GUARDED_SECTIONS = ("model", "data", "loss", "optim", "world", "seed")
GUARDED_TRAINER_KEYS = ("precision", "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm")
# Locations, not settings: they may differ between attempts.
UNGUARDED_KEYS = ("model.reference_cache_dir", "world.dir", "optim.optimizer.fused")
# Overrides that say how or where a run happens, not what it is (left out of the resume command).
_NOT_IN_RESUME_COMMAND = re.compile(r"^\+*(ckpt_path|hydra\.run\.dir|hydra\.sweep\.dir|hydra\.mode|hparams_search|launcher)=")
_NODE_INTERPOLATION = re.compile(r"^\$\{[^:{}]*\}$")  # ${seed}, ${..lr}: a copy of another key, compared there


@dataclass
class RunPlan:
    ckpt_path: str | None  # the checkpoint to resume from, or None for a fresh run
    checkpoint_step: int = 0
    archive: list[str] = field(default_factory=list)  # outputs of an attempt without a checkpoint, to move aside
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # allowed changes: key -> (old, new)
    already_complete: bool = False  # resuming a completed run at its own max_steps: nothing to do
    previous_max_steps: int | None = None

    @property
    def resuming(self) -> bool:
        return self.ckpt_path is not None


def run_config(cfg: DictConfig, keep_copies: bool = True) -> dict[str, Any]:
    """The weight-deciding part of a train config, flattened to dotted keys. Values are resolved,
    except (with `keep_copies`) a plain copy of another key (`${..lr}`), kept as its text: the key it
    copies is compared in its own right, so one change is reported once."""
    out: dict[str, Any] = {}
    for section in GUARDED_SECTIONS:
        if section not in cfg or cfg[section] is None:
            continue
        raw = OmegaConf.to_container(cfg[section], resolve=False) if isinstance(cfg[section], DictConfig) else cfg[section]
        for key, value in _flatten(section, raw).items():
            if not (keep_copies and isinstance(value, str) and _NODE_INTERPOLATION.match(value)):
                value = OmegaConf.select(cfg, key) if "." in key else cfg[key]
                value = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
            out[key] = value
    trainer = cfg.get("trainer") or {}
    for key in GUARDED_TRAINER_KEYS:
        if key in trainer:
            out[f"trainer.{key}"] = trainer[key]
    out["trainer.max_steps"] = trainer.get("max_steps")
    if "optim.scheduler.total_steps" in out and OmegaConf.select(cfg, "optim.scheduler.schedule") not in (None, "constant"):
        # the step budget shapes a decaying schedule: extending such a run changes its learning rates
        out["optim.scheduler.total_steps"] = OmegaConf.select(cfg, "optim.scheduler.total_steps")
    return {k: v for k, v in out.items() if k not in UNGUARDED_KEYS}


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(f"{prefix}.{key}", inner))
        return out
    return {prefix: value}


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two `run_config` dicts (max_steps excluded: it has its own rule)."""
    keys = (set(old) | set(new)) - {"trainer.max_steps"}
    return {k: (old.get(k), new.get(k)) for k in sorted(keys) if old.get(k) != new.get(k)}


def _allowed(key: str, allow: list[str]) -> bool:
    return any(key == a or key.startswith(a + ".") for a in allow)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _refuse_changes(cfg: DictConfig, run: RunDirectory, what: str, saved: Mapping[str, Any], new: Mapping[str, Any]) -> dict:
    """The allowed changes between `saved` and `new`; any other change is refused naming the keys."""
    allow = [str(k) for k in (cfg.get("allow_changes") or [])]
    changes = changed_keys(saved, new)
    refused = {k: v for k, v in changes.items() if not _allowed(k, allow)}
    if refused:
        listing = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in refused.items())
        raise ConfigError(
            "ckpt_path",
            f"resuming {what} with settings that differ from the run's: {listing}. Resume with the run's settings (the "
            f"command in {run.hydra_dir / 'resume_command.txt'}), or change them on purpose with "
            f"allow_changes=[{','.join(refused)}] (recorded in the run's .hydra/attempts/)",
        )
    return changes


def plan_run(run: RunDirectory, cfg: DictConfig, ckpt_path: str | None, checkpoint: Mapping[str, Any] | None) -> RunPlan:
    """Fresh run, resume or refusal, decided from the files only (nothing is written here)."""
    requested = cfg.get("ckpt_path")
    if ckpt_path is None:
        found = run.outputs()
        if found and requested != "last":
            raise OutputError(
                f"{run.path} already holds a run ({', '.join(found)}): resume it with ckpt_path=last, or start "
                "a new one in another directory (hydra.run.dir=...)"
            )
        plan = RunPlan(None)
        if found:  # ckpt_path=last but no checkpoint: a restart from scratch of the run recorded here
            plan.changes = _compare_with_record(run, cfg)
            plan.archive = found + [name for name in ATTEMPT_RECORD if (run.path / name).exists()]
        return plan
    assert checkpoint is not None
    step = int(checkpoint.get("global_step", 0))
    plan = RunPlan(ckpt_path, checkpoint_step=step)
    saved = checkpoint.get("run_config")
    new = run_config(cfg)
    if saved is None:
        log.warning(
            "%s holds no record of its run's settings (written by an older version): the resume cannot check "
            "that loss/optim/model/data are unchanged",
            ckpt_path,
        )
    else:
        plan.previous_max_steps = saved.get("trainer.max_steps")
        plan.changes = _refuse_changes(cfg, run, str(ckpt_path), saved, new)
    max_steps = new.get("trainer.max_steps")
    if max_steps is not None and 0 < max_steps < step:
        started = f"; the run was started with trainer.max_steps={plan.previous_max_steps}" if plan.previous_max_steps else ""
        raise ConfigError("trainer.max_steps", f"{max_steps} is below the checkpoint's step {step}{started}")
    if max_steps is not None and max_steps == step and run.status == "completed":
        plan.already_complete = True
    elif plan.previous_max_steps is not None and max_steps != plan.previous_max_steps:
        log.warning(
            "this run was started with trainer.max_steps=%s; this attempt %s it at trainer.max_steps=%s",
            plan.previous_max_steps,
            "extends" if (max_steps or 0) > plan.previous_max_steps else "ends",
            max_steps,
        )
    return plan


def _compare_with_record(run: RunDirectory, cfg: DictConfig) -> dict[str, tuple[Any, Any]]:
    """The settings of a restart (its checkpoints are gone) against the run's recorded, resolved config."""
    recorded = run.hydra_dir / "config.resolved.yaml"
    if not recorded.is_file():
        log.warning("%s holds outputs but no record of its settings (.hydra/config.resolved.yaml): the restart cannot check them", run.path)
        return {}
    try:
        saved_cfg = OmegaConf.load(recorded)
        if not isinstance(saved_cfg, DictConfig):
            raise ValueError("not a mapping")
    except Exception as exc:
        raise ConfigError(
            "ckpt_path", f"{recorded} cannot be read ({type(exc).__name__}): restore it, or start the run in another directory"
        ) from None
    new, copies = run_config(cfg, keep_copies=False), run_config(cfg)
    plain = {k for k, v in copies.items() if not (isinstance(v, str) and _NODE_INTERPOLATION.match(v))}
    saved = {k: v for k, v in run_config(saved_cfg, keep_copies=False).items() if k in plain}
    return _refuse_changes(
        cfg, run, f"{run.path} (its checkpoints are gone: it restarts from step 0)", saved, {k: v for k, v in new.items() if k in plain}
    )


# -- the command that finishes a run -------------------------------------------------------------------
def task_overrides() -> list[str]:
    """The command-line overrides of the running Hydra job ([] outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        return []


def hydra_cli_options() -> list[str]:
    """`--config-dir` / `--config-name` of the running command (a user's own config folder), so that
    the printed resume command composes the same config."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):
        return []
    options = []
    for source in hydra_cfg.runtime.config_sources:
        if source.provider == "command-line" and source.schema == "file":
            options += ["--config-dir", shlex.quote(str(source.path))]
    if hydra_cfg.job.config_name not in (None, "train"):
        options += ["--config-name", shlex.quote(str(hydra_cfg.job.config_name))]
    return options


def resume_command(run_dir: Path, overrides: list[str], options: list[str] | None = None) -> str:
    """The command that finishes this run: its config folder, its own overrides, its directory, ckpt_path=last."""
    kept = [shlex.quote(o) for o in overrides if not _NOT_IN_RESUME_COMMAND.match(o)]
    args = (hydra_cli_options() if options is None else options) + kept + [override_arg("hydra.run.dir", run_dir), "ckpt_path=last"]
    return "python -m lightning_dpo.train " + " ".join(args)
