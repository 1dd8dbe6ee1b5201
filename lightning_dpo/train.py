"""The training entry point: `python -m lightning_dpo.train [overrides]`.

With no arguments it runs the embedded demo (the toy toxicity world, offline, on CPU). Every
object is built from `conf/` with `hydra.utils.instantiate`; this file only wires them together.
The run directory (Hydra's run dir; `hydra.run.dir=...` sets it) holds `.hydra/`, `metrics.csv`,
`checkpoints/`, `status.json`, `train.log`, the callbacks' outputs, and at the end `hf_model/`.
Claiming the directory, checking a resume and recording attempts: lightning_dpo/training/run_dir.py.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lightning_dpo.callbacks.periodic import PeriodicMeasurement
from lightning_dpo.callbacks.stop_checkpoint import StopCheckpoint, stop_checkpoint_of
from lightning_dpo.model.loading import load_tokenizer, max_positions
from lightning_dpo.toy.config import (
    ensure_toy_world,
    register_toy_resolver,
    toy_world_dir,
)
from lightning_dpo.training.checkpoints import AtomicCheckpointIO, check_checkpoint, resolve_ckpt_path
from lightning_dpo.training.metrics_csv import MetricsCSVLogger
from lightning_dpo.training.preflight import check_lengths, preflight
from lightning_dpo.training.run_dir import (
    RunConfigInCheckpoint,
    RunDirectory,
    RunPlan,
    claim,
    resume_command,
    run_config,
    task_overrides,
)
from lightning_dpo.training.wandb_logger import setup_wandb_run
from lightning_dpo.utils.config import build, override_arg, register_resolvers
from lightning_dpo.utils.errors import (
    LightningDPOError,
    RunInterrupted,
)
from lightning_dpo.utils.io import atomic_directory, atomic_write_json
from lightning_dpo.utils.quiet import quiet_libraries

log = logging.getLogger("lightning_dpo.train")
register_resolvers()
register_toy_resolver()
quiet_libraries()


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


def save_hf_model(policy: Any, tokenizer: Any, target: Path, record: dict[str, Any] | None = None) -> Path:
    """A policy and its tokenizer via `save_pretrained` (+ `lightning_dpo.json`, where it came from), swapped in atomically."""

    def fill(tmp: Path) -> None:
        policy.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if record is not None:
            (tmp / "lightning_dpo.json").write_text(json.dumps(record, indent=2) + "\n")

    atomic_directory(target, fill)
    return target


def save_best_model(trainer: L.Trainer, module: Any, tokenizer: Any, run_dir: Path) -> dict[str, Any] | None:
    """`hf_model_best/`: the policy of the best checkpoint by the monitored metric (val/loss), the
    model the analysis commands use for a run (with early stopping, the final one is a later,
    worse one). Loaded into the trained policy in place after `hf_model/` is written."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    best = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor and cb.best_model_path), None)
    if best is None or not Path(best.best_model_path).is_file():
        return None
    state = check_checkpoint(best.best_model_path)
    weights = {k[len("policy."):]: v for k, v in state["state_dict"].items() if k.startswith("policy.")}
    module.policy.load_state_dict(weights, strict=False)
    record = {"step": int(state["global_step"]), "checkpoint": str(best.best_model_path), "monitor": best.monitor,
              "value": float(best.best_model_score) if best.best_model_score is not None else None}
    save_hf_model(module.policy, tokenizer, run_dir / "hf_model_best", record)
    return record


def print_summary(trainer: L.Trainer, datamodule: Any, run_dir: Path, best: dict[str, Any] | None = None,
                  report: Path | None = None) -> None:
    """The end-of-run summary, printed and appended to the run's train.log."""
    lines = [f"run directory: {run_dir}", f"data: {datamodule.summary()}"]
    if best is not None:
        lines.append(f"best checkpoint by {best['monitor']}: step {best['step']} ({best['value']:.4f}) -> hf_model_best/; final -> hf_model/")
    metrics = trainer.callback_metrics
    for key in ("val/loss", "val/rewards/accuracies", "val/rewards/margins"):
        if key in metrics:
            lines.append(f"{key}: {float(metrics[key]):.4f}")
    for callback in trainer.callbacks:
        if isinstance(callback, PeriodicMeasurement) and callback.summary():
            lines.append(callback.summary())
    if report is not None:
        figures = run_dir / "plots"
        lines.append(f"report: {report}" + (f"   figures: {figures}/" if figures.is_dir() else ""))
    lines += ["next:", f"  python -m lightning_dpo.analyze {override_arg('dpo', run_dir)}    # the papers' interventions on the best model",
              f"  python -m lightning_dpo.plot {shlex.quote(str(run_dir))}    # redraw the figures",
              f"  {_train_on_command(trainer, run_dir)}    # train on from last.ckpt"]
    text = "\n".join(["", "== lightning-dpo summary =="] + lines)
    print(text, flush=True)
    try:
        with open(run_dir / "train.log", "a", encoding="utf-8") as handle:
            handle.write(text + "\n")
    except OSError as exc:  # the summary was printed; the log is a copy
        log.warning("could not append the summary to %s: %s", run_dir / "train.log", exc)


def _train_on_command(trainer: L.Trainer, run_dir: Path) -> str:
    """The resume command with twice the steps (the run is complete at its own trainer.max_steps)."""
    overrides = [o for o in task_overrides() if not o.lstrip("+").startswith("trainer.max_steps=")]
    return resume_command(run_dir, overrides + [f"trainer.max_steps={2 * max(trainer.global_step, 1)}"])


def write_run_report(run_dir: Path) -> Path | None:
    """report.html (and plots/) at the end of a run; a problem there never fails the finished run."""
    from lightning_dpo.report import run_report

    try:
        return run_report(run_dir)
    except Exception as exc:
        log.warning("the run's report.html could not be written (%s: %s); `python -m lightning_dpo.report %s` retries",
                    type(exc).__name__, exc, run_dir)
        return None


def objective_value(trainer: L.Trainer, key: str | None) -> float | None:
    """The value a hyper-parameter search minimises (default `val/loss`); NaN when it was never logged."""
    if not key:
        return None
    value = trainer.callback_metrics.get(key)
    if value is None:
        measured = [cb.latest(key) for cb in trainer.callbacks if isinstance(cb, PeriodicMeasurement)]
        value = next((v for v in measured if v is not None), None)
    return float(value) if value is not None else math.nan


def train(cfg: DictConfig) -> float | None:
    """Claim the run directory, check the run, then build everything from `cfg`, fit, save
    `hf_model/`, and return the objective. Raises `RunInterrupted` after a signal (with the
    checkpoint written and the command to resume)."""
    with claim(cfg.paths.output_dir) as run_dir:
        return _claimed(cfg, run_dir)


def _claimed(cfg: DictConfig, run_dir: Path) -> float | None:
    run = RunDirectory(run_dir)
    ckpt_path, checkpoint = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir / "checkpoints")
    rank_zero = rank_zero_only.rank == 0
    if rank_zero:  # every check before anything is written (other ranks follow rank 0's claim)
        plan = run.plan(cfg, ckpt_path, checkpoint)
    else:
        plan = RunPlan(ckpt_path, checkpoint_step=int((checkpoint or {}).get("global_step", 0)))
    del checkpoint
    if plan.already_complete:
        previous = json.loads((run_dir / "status.json").read_text())
        log.info("%s is complete at trainer.max_steps=%d: nothing to train (pass a larger trainer.max_steps to extend it)",
                 run_dir, plan.checkpoint_step)
        return previous.get("objective")
    try:
        preflight(cfg, built_on_demand=toy_world_dir(cfg), overrides=task_overrides())
        ensure_toy_world(cfg, demo_keys=("model.name_or_path", "data.path"))  # the demo's world: built once, then cached
    except LightningDPOError as exc:
        if rank_zero and not plan.resuming and not plan.archive:  # our own, empty directory: record the failure
            run.start_attempt(cfg, plan)
            write_status(run_dir, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    if rank_zero:
        run.start_attempt(cfg, plan)
    log_file = _log_to_file(run_dir / "train.log") if rank_zero else None
    try:
        callbacks = build_callbacks(cfg)
        stop = next((cb for cb in callbacks if isinstance(cb, StopCheckpoint)), None)
        if stop is not None:  # before the status says "running": from here on a signal ends the run with a checkpoint
            stop.install_signal_handlers()
        write_status(run_dir, "running", **({"resumed_from_step": plan.checkpoint_step} if plan.resuming else {}))
        return _train(cfg, run_dir, plan, callbacks)
    except RunInterrupted as exc:
        write_status(run_dir, "interrupted", step=exc.step, signal=exc.signum, resume=exc.command)
        raise
    except (KeyboardInterrupt, SystemExit) as exc:  # a second Ctrl-C (Lightning turns it into SystemExit)
        last = run_dir / "checkpoints" / "last.ckpt"
        write_status(run_dir, "interrupted", error=f"stopped at once ({type(exc).__name__}), without a checkpoint of this step",
                     resume=resume_command(run_dir, task_overrides()) if last.exists() else None)
        raise
    except BaseException as exc:
        _record_failure(run_dir, exc)
        raise
    finally:
        _cleanup()
        if log_file is not None:
            logging.getLogger().removeHandler(log_file)
            log_file.close()


def _train(cfg: DictConfig, run_dir: Path, plan: RunPlan, callbacks: list[L.Callback]) -> float | None:
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the seed is in .hydra/config.yaml
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
    check_lengths(cfg, max_positions(module.policy))
    loggers = build_loggers(cfg, run_dir)
    callbacks += [loggers[0].checkpoint_callback(), RunConfigInCheckpoint(run_config(cfg))]
    trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()])
    trainer.fit(module, datamodule=datamodule, ckpt_path=plan.ckpt_path, weights_only=True)

    stopped = stop_checkpoint_of(trainer)
    if stopped is not None and stopped.interrupted:
        command = resume_command(run_dir, task_overrides())
        log.warning("stopped at step %d on a signal; to finish this run: %s", trainer.global_step, command)
        raise RunInterrupted(int(stopped.requested), trainer.global_step, command)
    if module.last_val_step != trainer.global_step and len(datamodule.val_dataset) > 0:
        trainer.validate(module, datamodule=datamodule, verbose=False)  # the final val/* for summaries and searches
    if trainer.is_global_zero:
        save_hf_model(module.policy, tokenizer, run_dir / "hf_model")
        best = save_best_model(trainer, module, tokenizer, run_dir)
    objective = objective_value(trainer, cfg.get("objective"))
    write_status(run_dir, "completed", step=trainer.global_step, objective=objective)
    if trainer.is_global_zero:  # after the status, so that the report shows the run as completed
        print_summary(trainer, datamodule, run_dir, best, write_run_report(run_dir) if cfg.get("report", True) else None)
    return objective


def _record_failure(run_dir: Path, exc: BaseException) -> None:
    """status.json = failed, without hiding the original error if the status cannot be written (a full disk)."""
    try:
        write_status(run_dir, "failed", error=f"{type(exc).__name__}: {exc}")
    except Exception as status_exc:  # the original error is what the user must see
        log.error("could not record the failure in %s: %s", run_dir / "status.json", status_exc)


def _log_to_file(path: Path) -> logging.Handler:
    """`train.log`: every log record of this attempt, appended (resumed attempts add to it)."""
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


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


@hydra.main(version_base="1.3", config_path="pkg://lightning_dpo.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        return train(cfg)
    except RunInterrupted as exc:
        sys.exit(exc.exit_code)  # also ends a sweep: its other jobs resume with the same command and ckpt_path=last
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
