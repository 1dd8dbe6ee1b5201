"""Weights & Biases: a logger that never blocks (offline without credentials or network), one run
per job, and a run id kept in the run directory so that a resumed job continues its own run."""

from __future__ import annotations

import logging
import os
import secrets
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_dpo.utils.io import atomic_write_text

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run_id.txt"


def _wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def _wandb_reachable(timeout: float = 3.0) -> bool:
    import socket

    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0].split(":")[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


_warned = False  # one offline warning per process (a sweep's jobs share it)


def choose_wandb_mode(requested: str | None = None, sync_hint: str = "wandb sync <run dir>/wandb/offline-run-*") -> str:
    """`online` with credentials and a reachable server, otherwise `offline` with one warning
    that says how to upload later. An explicit `WANDB_MODE` (or `logger.wandb.mode`) always wins."""
    global _warned
    requested = requested or os.environ.get("WANDB_MODE")
    if requested:
        mode = {"dryrun": "offline", "run": "online"}.get(requested, requested)
        if mode == "offline" and not _warned:  # asked for: still say how the runs get uploaded
            log.warning("W&B: logging offline (as asked). Upload later with: %s", sync_hint)
            _warned = True
        return mode
    reason = None
    if not _wandb_credentials():
        reason = "no credentials found (WANDB_API_KEY or ~/.netrc)"
    elif not _wandb_reachable():
        reason = "server unreachable"
    if reason is None:
        return "online"
    if not _warned:
        log.warning("W&B: %s; logging offline. Upload later with: %s", reason, sync_hint)
        _warned = True
    return "offline"


def is_wandb_logger(logger: Any) -> bool:
    from lightning.pytorch.loggers import WandbLogger

    return isinstance(logger, WandbLogger)


def wandb_run_id(run_dir: str | Path) -> str:
    """The run id stored in the run directory (created on first use), so a resumed job continues its run."""
    path = Path(run_dir) / WANDB_ID_FILE
    if path.exists():
        return path.read_text().strip()
    alphabet = string.ascii_lowercase + string.digits  # what W&B's own ids use
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    atomic_write_text(path, run_id + "\n")
    return run_id


def _hydra_job() -> tuple[str | None, str | None, str | None]:
    """(sweep name, job name, sweep dir) of the running Hydra multirun job, or (None, None, None).

    The sweep's name is what it varies and when it started (`loss.type,world.seed 2026-11-28/04-03-43`),
    so its W&B group says what the sweep was; `sweep_name=...` names it instead."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):
        return None, None, None
    if hydra_cfg.mode.name != "MULTIRUN":
        return None, None, None
    excluded = set(hydra_cfg.job.config.override_dirname.exclude_keys or [])
    keys = [o.split("=", 1)[0].lstrip("+~") for o in hydra_cfg.overrides.task if "=" in o]
    varied = ",".join(k for k in keys if k not in excluded and not k.startswith("hydra.") and k != "sweep_name")
    sweep_dir = Path(hydra_cfg.sweep.dir)
    started = "/".join(sweep_dir.parts[-2:])
    name = f"{varied} {started}" if varied else started
    return name, hydra_cfg.job.override_dirname or str(hydra_cfg.job.num), str(sweep_dir)


def make_wandb_logger(
    save_dir: str,
    project: str = "lightning-dpo",
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    mode: str | None = None,
    entity: str | None = None,
    job_type: str | None = "train",
    extra_tags: list[str] | None = None,
) -> Any:
    """A Lightning `WandbLogger` that never blocks: offline without credentials or network.

    In a Hydra multirun each job gets its own run, grouped by the sweep and named after the job's
    overrides; the run id lives in the run directory, so `ckpt_path=last` continues the same run.
    """
    from lightning.pytorch.loggers import WandbLogger

    sweep, job, sweep_dir = _hydra_job()
    runs = f"{sweep_dir}/*/wandb/offline-run-*" if sweep_dir else f"{save_dir}/wandb/offline-run-*"
    mode = choose_wandb_mode(mode, sync_hint=f"wandb sync {runs}")
    logger = WandbLogger(
        save_dir=save_dir,
        project=project,
        name=name or job or Path(save_dir).name,
        id=wandb_run_id(save_dir),
        group=group or sweep,
        tags=[str(t) for t in [*(tags or []), *(extra_tags or [])]],
        entity=entity,
        job_type=job_type,
        mode=mode,
        settings=_wandb_settings(),
    )
    # Lightning passes `anonymous=None` to wandb.init, which recent wandb answers with a deprecation
    # warning although nothing was asked for; leave the key out
    getattr(logger, "_wandb_init", {}).pop("anonymous", None)
    return logger


# Panels: W&B files every metric under the section named by its first path component, so the
# dynamics land in one "dynamics" section where each group's delta_sum/count/share sort together.
# All series use trainer/global_step as x-axis (Lightning's binding); these set the summaries.
METRIC_SUMMARIES = {"val/loss": "min", "val/rewards/accuracies": "max", "dynamics/*": "last", "eval/*": "last"}


def setup_wandb_run(logger: Any, config: Mapping[str, Any]) -> None:
    """Log the resolved config and declare the metrics' axes and summaries."""
    run = logger.experiment
    if not hasattr(run, "define_metric"):
        return  # disabled mode
    for pattern, summary in METRIC_SUMMARIES.items():
        run.define_metric(pattern, step_metric="trainer/global_step", summary=summary)
    logger.log_hyperparams(dict(config))


def log_dynamics_charts(logger: Any, steps: list[int], shares: dict[str, list[float]], key: str = "dynamics/shares_chart") -> None:
    """One line chart of the four reducing groups' shares over steps (W&B custom chart)."""
    import wandb

    chart = wandb.plot.line_series(
        xs=steps,
        ys=[shares[g] for g in shares],
        keys=list(shares),
        title="share of the reduction per group",
        xname="step",
    )
    logger.experiment.log({key: chart})


def log_table(logger: Any, key: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A small W&B table (e.g. the attention heads that moved most)."""
    import wandb

    logger.experiment.log({key: wandb.Table(columns=list[str | int](columns), data=rows)})


def _wandb_settings() -> Any:
    import wandb

    # never wait long for a server: init fails over instead of hanging
    return wandb.Settings(init_timeout=30, silent=True)
