"""The training entry point: `python -m lightning_dpo.train [overrides]`.

With no arguments it runs the embedded demo (the toy toxicity world, offline, on CPU). Every
object is built from `conf/` with `hydra.utils.instantiate`; this file only wires them together.
Run directory (Hydra's run dir; `hydra.run.dir=...` sets it) holds `.hydra/`, `metrics.csv`,
`checkpoints/`, `status.json`, the callbacks' outputs, and at the end `hf_model/`.
"""

from __future__ import annotations

import gc
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lightning_dpo.checkpointing import AtomicCheckpointIO, resolve_ckpt_path
from lightning_dpo.config import build, ensure_toy_world, register_resolvers
from lightning_dpo.loggers import MetricsCSVLogger, setup_wandb_run
from lightning_dpo.model.loading import load_tokenizer
from lightning_dpo.utils.errors import ConfigError, DataError, LightningDPOError, OutputError
from lightning_dpo.utils.io import atomic_directory, atomic_write_json, ensure_writable_dir

log = logging.getLogger("lightning_dpo.train")
register_resolvers()


def write_status(run_dir: Path, status: str, **extra: Any) -> None:
    if rank_zero_only.rank == 0:  # one writer under DDP
        atomic_write_json(run_dir / "status.json", {"status": status, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **extra})


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is not None and "_target_" in node:
            callbacks.append(build(node, f"callbacks.{name}"))
    return callbacks


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Any]:
    loggers: list[Any] = [MetricsCSVLogger(str(run_dir))]  # metrics.csv is always written
    for name, node in (cfg.get("logger") or {}).items():
        if node is not None and "_target_" in node:
            logger = build(node, f"logger.{name}")
            if type(logger).__name__ == "WandbLogger":
                setup_wandb_run(logger, OmegaConf.to_container(cfg, resolve=True))
            loggers.append(logger)
    return loggers


def save_hf_model(module: Any, tokenizer: Any, run_dir: Path) -> Path:
    """The trained policy and tokenizer via `save_pretrained`, swapped in atomically."""
    target = run_dir / "hf_model"

    def fill(tmp: Path) -> None:
        module.policy.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    atomic_directory(target, fill)
    return target


def print_summary(trainer: L.Trainer, datamodule: Any, run_dir: Path) -> None:
    lines = [f"run directory: {run_dir}", f"data: {datamodule.summary()}"]
    metrics = trainer.callback_metrics
    for key in ("val/loss", "val/rewards/accuracies", "val/rewards/margins"):
        if key in metrics:
            lines.append(f"{key}: {float(metrics[key]):.4f}")
    for callback in trainer.callbacks:
        if hasattr(callback, "summary"):
            lines.append(callback.summary())
    print("\n".join(["", "== lightning-dpo summary =="] + lines), flush=True)


def objective_value(trainer: L.Trainer, key: str | None) -> float | None:
    """The value a hyper-parameter search minimises (default `val/loss`); NaN when it was never logged."""
    if not key:
        return None
    value = trainer.callback_metrics.get(key)
    if value is None:
        for callback in trainer.callbacks:
            history = getattr(callback, "history", None)
            if history and key in history[-1]:
                value = history[-1][key]
    return float(value) if value is not None else math.nan


def train(cfg: DictConfig) -> float | None:
    """Build everything from `cfg`, fit, save `hf_model/`, and return the objective."""
    run_dir = ensure_writable_dir(cfg.paths.output_dir, "run directory (paths.output_dir)")
    write_status(run_dir, "running")
    try:
        result = _train(cfg, run_dir)
    except BaseException as exc:
        write_status(run_dir, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        _cleanup()
    return result


def preflight(cfg: DictConfig) -> None:
    """Checks that need no model: every `???` value is set and the data file exists."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(missing[0], f"is required but not set (all missing: {', '.join(missing)})")
    lr = cfg.get("optim", {}).get("lr")
    if lr is not None and not float(lr) > 0:
        raise ConfigError("optim.lr", f"must be > 0, got {lr}")
    path = cfg.data.get("path")
    if path and not Path(path).expanduser().is_file():
        raise DataError(str(path), "file not found (config key 'data.path')")
    for name, node in (cfg.get("callbacks") or {}).items():
        probe = node.get("probe") if node is not None else None
        if probe is None or probe.get("source") != "raw":
            continue
        if not probe.get("path"):
            raise ConfigError(f"callbacks.{name}.probe.path", "probe.source=raw needs a probe file (e.g. Lee et al.'s probe.pt)")
        if not Path(probe.path).expanduser().is_file():
            raise DataError(str(probe.path), f"probe file not found (config key 'callbacks.{name}.probe.path')")


RUN_OUTPUTS = ("metrics.csv", "checkpoints", "dynamics", "probe.safetensors", "toxicity_eval.csv", "eval", "hf_model", "plots", "wandb", "wandb_run_id.txt")


def prepare_run_dir(run_dir: Path, resuming: bool, requested: str | None) -> None:
    """Never mix two runs in one directory, never overwrite one silently.

    A fresh run in a directory that already holds a run's outputs is refused, unless
    `ckpt_path=last` was asked for and there is no checkpoint to resume (an earlier attempt died
    before its first checkpoint): then the earlier outputs move to `previous/<time>/`.
    """
    if resuming:
        return
    found = [name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if not found:
        return
    if requested != "last":
        raise OutputError(
            f"{run_dir} already holds a run ({', '.join(found)}): resume it with ckpt_path=last, "
            "or start a new one in another directory (hydra.run.dir=...)"
        )
    archive = run_dir / "previous" / time.strftime("%Y%m%d-%H%M%S")
    archive.mkdir(parents=True)
    for name in found:
        (run_dir / name).rename(archive / name)
    log.warning("no checkpoint to resume in %s: moved the earlier attempt's outputs to %s and started afresh", run_dir, archive)


def _train(cfg: DictConfig, run_dir: Path) -> float | None:
    ensure_toy_world(cfg)  # only if the config uses it (the demo); built once, then cached
    preflight(cfg)
    L.seed_everything(cfg.seed, workers=True)
    loss = build(cfg.loss, "loss")  # cheap checks first: a bad value fails before anything loads
    tokenizer_source = cfg.model.get("tokenizer") or cfg.model.get("name_or_path")
    tokenizer = load_tokenizer(tokenizer_source, trust_remote_code=cfg.model.get("trust_remote_code", False))
    datamodule = build(cfg.data, "data", tokenizer=tokenizer)
    datamodule.setup("fit")
    log.info("data: %s", datamodule.summary())
    module = build(
        cfg.model, "model", loss=loss,
        optimizer=build(cfg.optim.optimizer, "optim.optimizer"),
        scheduler=build(cfg.optim.scheduler, "optim.scheduler"),
    )
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir / "checkpoints")
    prepare_run_dir(run_dir, resuming=ckpt_path is not None, requested=cfg.get("ckpt_path"))
    callbacks = build_callbacks(cfg)
    loggers = build_loggers(cfg, run_dir)
    trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()])
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    if getattr(trainer, "_lightning_dpo_interrupted", False):
        write_status(run_dir, "interrupted", step=trainer.global_step)
        log.warning("stopped at step %d on a signal; resume with ckpt_path=last hydra.run.dir=%s", trainer.global_step, run_dir)
        return None
    if module.last_val_step != trainer.global_step and len(datamodule.val_dataset) > 0:
        trainer.validate(module, datamodule=datamodule, verbose=False)  # the final val/* for summaries and searches
    if trainer.is_global_zero:
        save_hf_model(module, tokenizer, run_dir)
        print_summary(trainer, datamodule, run_dir)
    objective = objective_value(trainer, cfg.get("objective"))
    write_status(run_dir, "completed", step=trainer.global_step, objective=objective)
    return objective


def _cleanup() -> None:
    """Per-job cleanup so that multirun jobs do not leak into each other."""
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except Exception as exc:  # a W&B problem must never hide the job's own result
        log.warning("wandb.finish failed: %s", exc)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        return train(cfg)
    except LightningDPOError as exc:
        if _is_multirun():
            raise  # Hydra records the failed job and runs the others
        log.error("%s", exc)
        sys.exit(2)


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get().mode.name == "MULTIRUN"
    except ValueError:
        return False


if __name__ == "__main__":
    main()
