"""One run directory, one run: the lock, the attempt record, and the checks before anything is written.

The protocol, in order (`claim` then `RunDirectory.plan` then `start_attempt`):
1. `claim`: create the directory, prove it writable, and take an exclusive lock on
   `.lightning_dpo.lock` (rank 0 only); a second run into the same directory stops at once,
   naming the holder (pid, host, start time, command).
2. `plan`: decide fresh run, resume, or refusal, reading only. A fresh run into a directory that
   holds a run's outputs is refused; a resume whose loss/optim/model/data/seed/world or
   weight-relevant trainer values differ from the checkpoint's is refused with the changed keys
   (old -> new), unless `allow_changes` names them; a resume whose `trainer.max_steps` is below
   the checkpoint's step says so. Nothing is written before this point, so a refused run never
   changes another run's files.
3. `start_attempt`: write `.hydra/` (config.yaml, config.resolved.yaml, overrides.yaml, hydra.yaml: Hydra's own writing
   is switched off in conf/hydra/default.yaml so that it cannot happen before the checks), keep a
   copy per attempt under `.hydra/attempts/<NNN>/` (with `changes.yaml` for allowed changes),
   remove what a killed attempt left behind (`.*.tmp` files, checkpoints of steps after the one
   resumed), and start `train.log`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shlex
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import lightning as L
from omegaconf import DictConfig, ListConfig, OmegaConf

from lightning_dpo.utils.config import override_arg
from lightning_dpo.utils.errors import ConfigError, OutputError
from lightning_dpo.utils.io import atomic_write_text, ensure_writable_dir

log = logging.getLogger(__name__)

LOCK_FILE = ".lightning_dpo.lock"
# A run's outputs: a directory holding any of these holds a run (`.hydra/` and `status.json` alone
# are the record of an attempt that produced nothing, which a new run may replace).
RUN_OUTPUTS = ("metrics.csv", "checkpoints", "dynamics", "probe.safetensors", "toxicity_eval.csv", "eval", "hf_model", "plots",
               "wandb", "wandb_run_id.txt")
# What a resume may not change silently: everything that decides the weights.
GUARDED_SECTIONS = ("model", "data", "loss", "optim", "world", "seed")
GUARDED_TRAINER_KEYS = ("precision", "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm")
# Locations, not settings: they may differ between attempts.
UNGUARDED_KEYS = ("model.reference_cache_dir", "world.dir", "optim.optimizer.fused")
# Overrides that say how or where a run happens, not what it is (left out of the resume command).
_NOT_IN_RESUME_COMMAND = re.compile(r"^\+*(ckpt_path|hydra\.run\.dir|hydra\.sweep\.dir|hydra\.mode|hparams_search|launcher)=")


def _is_rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


@contextlib.contextmanager
def claim(path: str | Path) -> Iterator[Path]:
    """Create and lock the run directory for this process (rank 0; other ranks share rank 0's claim)."""
    run_dir = ensure_writable_dir(path, "run directory (paths.output_dir)")
    if not _is_rank_zero():
        yield run_dir
        return
    lock_path = run_dir / LOCK_FILE
    handle = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise OutputError(f"run directory {run_dir} is in use by another run ({holder}); wait for it, or choose another "
                              "directory (hydra.run.dir=...)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                     f"{' '.join(shlex.quote(a) for a in sys.argv)}\n")
        handle.flush()
        yield run_dir
    finally:
        handle.close()  # closing releases the lock


@dataclass
class RunPlan:
    ckpt_path: str | None  # the checkpoint to resume from, or None for a fresh run
    checkpoint_step: int = 0
    archive: list[str] = field(default_factory=list)  # outputs of an attempt that never checkpointed, to move aside
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # allowed changes on resume: key -> (old, new)
    already_complete: bool = False  # resuming a completed run at its own max_steps: nothing to do
    previous_max_steps: int | None = None

    @property
    def resuming(self) -> bool:
        return self.ckpt_path is not None


_NODE_INTERPOLATION = re.compile(r"^\$\{[^:{}]*\}$")  # ${seed}, ${..lr}: a copy of another key, compared there


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The weight-deciding part of a train config, flattened to dotted keys. Values are resolved,
    except a plain copy of another key (`${..lr}`), which is kept as its text: the key it copies
    is compared in its own right, so one change is reported once."""
    out: dict[str, Any] = {}
    for section in GUARDED_SECTIONS:
        if section not in cfg or cfg[section] is None:
            continue
        raw = OmegaConf.to_container(cfg[section], resolve=False) if isinstance(cfg[section], DictConfig) else cfg[section]
        for key, value in _flatten(section, raw).items():
            if not (isinstance(value, str) and _NODE_INTERPOLATION.match(value)):
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


class RunConfigInCheckpoint(L.Callback):
    """Puts the run's weight-deciding settings (`run_config`) into every checkpoint, where a resume
    finds the settings that produced exactly those weights."""

    def __init__(self, settings: Mapping[str, Any]):
        self.settings = dict(settings)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["run_config"] = dict(self.settings)


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


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def hydra_dir(self) -> Path:
        return self.path / ".hydra"

    def outputs(self) -> list[str]:
        return [name for name in RUN_OUTPUTS if (self.path / name).exists()]

    # -- before anything is written ---------------------------------------------------------------
    def plan(self, cfg: DictConfig, ckpt_path: str | None, checkpoint: Mapping[str, Any] | None) -> RunPlan:
        """Fresh run, resume or refusal, decided from the files only (nothing is written here)."""
        requested = cfg.get("ckpt_path")
        if ckpt_path is None:
            found = self.outputs()
            if found and requested != "last":
                raise OutputError(
                    f"{self.path} already holds a run ({', '.join(found)}): resume it with ckpt_path=last, "
                    "or start a new one in another directory (hydra.run.dir=...)"
                )
            return RunPlan(None, archive=found)
        assert checkpoint is not None
        step = int(checkpoint.get("global_step", 0))
        plan = RunPlan(ckpt_path, checkpoint_step=step)
        saved = checkpoint.get("run_config")
        new = run_config(cfg)
        if saved is None:
            log.warning("%s holds no record of its run's settings (written by an older version): the resume cannot check "
                        "that loss/optim/model/data are unchanged", ckpt_path)
        else:
            plan.previous_max_steps = saved.get("trainer.max_steps")
            allow = [str(k) for k in (cfg.get("allow_changes") or [])]
            changes = changed_keys(saved, new)
            refused = {k: v for k, v in changes.items() if not _allowed(k, allow)}
            if refused:
                listing = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in refused.items())
                raise ConfigError(
                    "ckpt_path",
                    f"resuming {ckpt_path} with settings that differ from the run's: {listing}. Resume with the run's "
                    f"settings (the command in {self.hydra_dir / 'resume_command.txt'}), or change them on purpose with "
                    f"allow_changes=[{','.join(refused)}] (recorded in the run's .hydra/attempts/)",
                )
            plan.changes = changes
        max_steps = new.get("trainer.max_steps")
        if max_steps is not None and 0 < max_steps < step:
            started = f"; the run was started with trainer.max_steps={plan.previous_max_steps}" if plan.previous_max_steps else ""
            raise ConfigError("trainer.max_steps", f"{max_steps} is below the checkpoint's step {step}{started}")
        if max_steps is not None and max_steps == step and self._status() == "completed":
            plan.already_complete = True
        elif plan.previous_max_steps is not None and max_steps != plan.previous_max_steps:
            log.warning("this run was started with trainer.max_steps=%s; this attempt %s it at trainer.max_steps=%s",
                        plan.previous_max_steps, "extends" if (max_steps or 0) > plan.previous_max_steps else "ends", max_steps)
        return plan

    def _status(self) -> str | None:
        import json

        try:
            return json.loads((self.path / "status.json").read_text()).get("status")
        except (OSError, ValueError, AttributeError):
            return None

    # -- writing, once the plan stands ------------------------------------------------------------
    def start_attempt(self, cfg: DictConfig, plan: RunPlan) -> Path:
        """Record this attempt (.hydra/ and .hydra/attempts/<NNN>/) and clear what a killed attempt left."""
        if plan.archive:
            archive = self.path / "previous" / time.strftime("%Y%m%d-%H%M%S")
            archive.mkdir(parents=True)
            for name in plan.archive:
                (self.path / name).rename(archive / name)
            log.warning("no checkpoint to resume in %s: moved the earlier attempt's outputs to %s and started afresh", self.path, archive)
        self.remove_leftovers(plan.checkpoint_step if plan.resuming else None)
        overrides = task_overrides()
        config_yaml = OmegaConf.to_yaml(cfg)
        overrides_yaml = OmegaConf.to_yaml(OmegaConf.create(overrides))
        hydra_yaml = _hydra_yaml()
        attempts = self.hydra_dir / "attempts"
        number = 1 + max((int(p.name.split("-")[0]) for p in attempts.glob("[0-9]*") if p.name.split("-")[0].isdigit()), default=0)
        attempt = attempts / f"{number:03d}-{time.strftime('%Y%m%d-%H%M%S')}"
        resolved = _resolved_yaml(cfg)
        for directory in (self.hydra_dir, attempt):
            atomic_write_text(directory / "config.yaml", config_yaml)
            if resolved is not None:
                atomic_write_text(directory / "config.resolved.yaml", resolved)
            atomic_write_text(directory / "overrides.yaml", overrides_yaml)
            if hydra_yaml is not None:
                atomic_write_text(directory / "hydra.yaml", hydra_yaml)
        if plan.changes:
            atomic_write_text(attempt / "changes.yaml", OmegaConf.to_yaml(OmegaConf.create(
                {k: {"old": _plain(a), "new": _plain(b)} for k, (a, b) in plan.changes.items()})))
            log.warning("resuming with changed settings (allow_changes): %s",
                        "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in plan.changes.items()))
        atomic_write_text(self.hydra_dir / "resume_command.txt", resume_command(self.path, overrides) + "\n")
        return attempt

    def remove_leftovers(self, resumed_step: int | None) -> None:
        """Temporary files of a killed write, and checkpoints of steps the resumed one never reached."""
        for tmp in self.path.rglob(".*.tmp"):
            if tmp.is_file():
                tmp.unlink()
        if resumed_step is None:
            return
        for ckpt in (self.path / "checkpoints").glob("*.ckpt"):
            match = re.search(r"step[_=]?(\d+)", ckpt.stem)
            if match and int(match.group(1)) > resumed_step:
                log.info("removing %s: written after step %d, which this resume starts from", ckpt, resumed_step)
                ckpt.unlink()


def task_overrides() -> list[str]:
    """The command-line overrides of the running Hydra job ([] outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        return []


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


def resume_command(run_dir: Path, overrides: list[str]) -> str:
    """The command that finishes this run: its own overrides, its directory, ckpt_path=last."""
    kept = [shlex.quote(o) for o in overrides if not _NOT_IN_RESUME_COMMAND.match(o)]
    args = kept + [override_arg("hydra.run.dir", run_dir), "ckpt_path=last"]
    return "python -m lightning_dpo.train " + " ".join(args)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
