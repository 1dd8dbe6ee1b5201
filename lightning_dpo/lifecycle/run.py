"""A training run from start to end, around the objects `train.py` wires (`build_run`).

In order:
1. lock the run directory; plan fresh run / resume / refusal from its files (training/plan.py);
   check everything that needs no model (training/preflight.py); build the demo world if the run
   is the demo. A refusal changes nothing: a single run leaves no directory behind, a sweep job
   records its failure (so the sweep's table lists it).
2. record the attempt (.hydra/, the lock's holder, train.log, status `running`), install the
   signal handlers, fit.
3. after a signal: status `interrupted` with the command that finishes the run. Otherwise the
   end-of-run work: the final measurements if the training loop never ran (a run resumed at its
   final step), the final validation if fit did not take one, `hf_model/` and `hf_model_best/`,
   status `completed`, the summary and report.html.
A failure anywhere sets status `failed` with the error (also on a full disk: see RunDirectory).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from lightning_dpo.assets.config import assets_dir, ensure_assets
from lightning_dpo.callbacks.periodic import PeriodicMeasurement
from lightning_dpo.callbacks.stop_checkpoint import StopCheckpoint, stop_checkpoint_of
from lightning_dpo.lifecycle.summary import objective_value, print_summary
from lightning_dpo.model.wrappers import is_sharded
from lightning_dpo.runs.directory import RunDirectory, RunLock
from lightning_dpo.toy.config import ensure_toy_world, toy_world_dir
from lightning_dpo.training.checkpoints import check_checkpoint, resolve_ckpt_path
from lightning_dpo.training.plan import RunPlan, plan_run, resume_command, task_overrides
from lightning_dpo.training.preflight import preflight
from lightning_dpo.utils.errors import LightningDPOError, RunInterrupted

log = logging.getLogger("lightning_dpo.train")


@dataclass
class Run:
    """The wired objects of one training run (what `build_run` returns)."""

    tokenizer: Any
    datamodule: Any
    module: Any
    trainer: L.Trainer


BuildRun = Callable[[DictConfig, Path, list[L.Callback]], Run]


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get().mode.name == "MULTIRUN"
    except ValueError:
        return False


def run_training(cfg: DictConfig, build_run: BuildRun, build_callbacks: Callable[[DictConfig], list[L.Callback]]) -> float | None:
    """The whole run (module docstring); returns the objective. Raises `RunInterrupted` after a
    signal (with the checkpoint written and the command that finishes the run)."""
    run = RunDirectory(cfg.paths.output_dir)
    with run.lock() as lock:
        plan = _accept(cfg, run, lock)
        if plan is None:  # complete already: nothing to do
            return run.read_status().get("objective")
        return _attempt(cfg, run, plan, build_run, build_callbacks)


def _accept(cfg: DictConfig, run: RunDirectory, lock: RunLock) -> RunPlan | None:
    """Plan, check and build the demo world; on a refusal nothing of an earlier run changes."""
    rank_zero = rank_zero_only.rank == 0
    try:
        ckpt_path, checkpoint = resolve_ckpt_path(cfg.get("ckpt_path"), run.checkpoints)
        if rank_zero:  # every check before anything is written (other ranks follow rank 0's claim)
            plan = plan_run(run, cfg, ckpt_path, checkpoint)
        else:
            plan = RunPlan(ckpt_path, checkpoint_step=int((checkpoint or {}).get("global_step", 0)))
        del checkpoint
        if plan.already_complete:
            log.info(
                "%s is complete at trainer.max_steps=%d: nothing to train (pass a larger trainer.max_steps to extend it)",
                run.path,
                plan.checkpoint_step,
            )
            return None
        preflight(cfg, built_on_demand=[toy_world_dir(cfg), assets_dir(cfg)], overrides=task_overrides())
        ensure_toy_world(cfg, demo_keys=("model.name_or_path", "data.path"))  # the demo's world: built once, then cached
        ensure_assets(cfg)  # the real-model experiment's probe and pairs: built once, then cached
    except LightningDPOError as exc:
        if rank_zero and not run.outputs():
            if is_multirun():  # a sweep job: the sweep's table lists it as failed, with the reason
                lock.hold()
                start_attempt(run, cfg, RunPlan(None))
                run.write_status("failed", error=f"{type(exc).__name__}: {exc}")
            else:  # a single run refused before it started: nothing left where nothing ran
                lock.release_refused()
        raise
    if rank_zero:
        lock.hold()
    return plan


def start_attempt(run: RunDirectory, cfg: DictConfig, plan: RunPlan) -> None:
    from lightning_dpo.training.attempts import record_attempt

    if plan.archive:
        archive = run.archive(plan.archive)
        log.warning("no checkpoint to resume in %s: moved the earlier attempt's outputs to %s and started afresh", run.path, archive)
    record_attempt(run, cfg, plan)


def _attempt(
    cfg: DictConfig, run: RunDirectory, plan: RunPlan, build_run: BuildRun, build_callbacks: Callable[[DictConfig], list[L.Callback]]
) -> float | None:
    rank_zero = rank_zero_only.rank == 0
    if rank_zero:
        start_attempt(run, cfg, plan)
    log_file = _log_to_file(run.log_file) if rank_zero else None
    try:
        callbacks = build_callbacks(cfg)
        stop = next((cb for cb in callbacks if isinstance(cb, StopCheckpoint)), None)
        if stop is not None:  # before the status says "running": from here on a signal ends the run with a checkpoint
            stop.install_signal_handlers()
        _write_status(run, "running", **({"resumed_from_step": plan.checkpoint_step} if plan.resuming else {}))
        wired = build_run(cfg, run.path, callbacks)
        freeze_heap()
        wired.trainer.fit(wired.module, datamodule=wired.datamodule, ckpt_path=plan.ckpt_path, weights_only=True)
        return _finish(cfg, run, wired)
    except RunInterrupted as exc:
        _write_status(run, "interrupted", step=exc.step, signal=exc.signum, resume=exc.command)
        raise
    except (KeyboardInterrupt, SystemExit) as exc:  # a second Ctrl-C (Lightning turns it into SystemExit)
        _write_status(
            run,
            "interrupted",
            error=f"stopped at once ({type(exc).__name__}), without a checkpoint of this step",
            resume=resume_command(run.path, task_overrides()) if run.last_checkpoint.exists() else None,
        )
        raise
    except BaseException as exc:
        _record_failure(run, exc)
        raise
    finally:
        cleanup()
        if log_file is not None:
            logging.getLogger().removeHandler(log_file)
            log_file.close()


def _finish(cfg: DictConfig, run: RunDirectory, wired: Run) -> float | None:
    trainer, module, datamodule = wired.trainer, wired.module, wired.datamodule
    stopped = stop_checkpoint_of(trainer)
    if stopped is not None and stopped.interrupted:
        command = resume_command(run.path, task_overrides())
        log.warning("stopped at step %d on a signal; to finish this run: %s", trainer.global_step, command)
        raise RunInterrupted(int(stopped.requested), trainer.global_step, command)
    if module.last_val_step != trainer.global_step and datamodule.val_dataset is not None and len(datamodule.val_dataset) > 0:
        # fit validated at its final step unless the training loop never ran (resumed at its final step)
        trainer.validate(module, datamodule=datamodule, verbose=False)
        compete_for_best(trainer)
    if take_final_measurements(trainer, module) and stopped is not None:
        trainer.save_checkpoint(str(stopped.path), weights_only=False)  # last.ckpt holds them, as in a run that trained
    best = None
    state = module.full_policy_state() if is_sharded(module.policy) else None  # trainer=fsdp: gathered on every process
    if trainer.is_global_zero:
        export_policy(run, module, wired.tokenizer, "hf_model", state=state)
        best = export_best_model(trainer, module, wired.tokenizer, run)
    objective = objective_value(trainer, cfg.get("objective"))
    _write_status(run, "completed", step=trainer.global_step, objective=objective)
    if trainer.is_global_zero:  # after the status, so that the report shows the run as completed
        report = write_run_report(run.path) if cfg.get("report", True) else None
        print_summary(trainer, datamodule, run.path, best, report)
    return objective


def take_final_measurements(trainer: L.Trainer, module: L.LightningModule) -> bool:
    """The end-of-training measurements of a run whose training loop never ran (a resume at its
    final step skips Lightning's loop and its hooks): taken here, so `completed` always has them."""
    taken = False
    for callback in trainer.callbacks:
        if isinstance(callback, PeriodicMeasurement) and callback.missing_final(trainer):
            callback.measure_final(trainer, module)
            taken = True
    return taken


def compete_for_best(trainer: L.Trainer) -> None:
    """A validation outside fit (Lightning's ModelCheckpoint does not see it) still competes for the
    best checkpoint: saved as the best when its monitored value beats the best so far."""
    checkpoint = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor), None)
    if checkpoint is None or checkpoint.save_top_k == 0 or checkpoint.monitor not in trainer.callback_metrics:
        return
    score = trainer.callback_metrics[checkpoint.monitor].detach().float().cpu()
    best = checkpoint.best_model_score
    if best is not None and not (score < best if checkpoint.mode == "min" else score > best):
        return
    path = checkpoint.format_checkpoint_name({"step": torch.tensor(trainer.global_step), checkpoint.monitor: score})
    trainer.save_checkpoint(path, weights_only=False)
    previous = checkpoint.best_model_path
    if checkpoint.save_top_k == 1 and previous and previous != path and trainer.is_global_zero:
        Path(previous).unlink(missing_ok=True)
    checkpoint.best_model_path, checkpoint.best_model_score = path, score
    checkpoint.best_k_models = {path: score} if checkpoint.save_top_k == 1 else {**checkpoint.best_k_models, path: score}
    checkpoint.kth_best_model_path, checkpoint.kth_value = path, score


def export_policy(
    run: RunDirectory, module: Any, tokenizer: Any, name: str, record: dict[str, Any] | None = None, state: dict[str, Any] | None = None
) -> None:
    """`<name>/`: the policy as a plain model (a LoRA policy merged), and with LoRA the adapter itself
    in `adapter/`. `state`: the policy's weights as a full state dict (a sharded policy, a checkpoint)."""
    if state is None:
        run.export_model(module.plain_policy(), tokenizer, name, record)
        adapted = module.policy
    else:
        run.export_model(module.plain_policy(state), tokenizer, name, record)
        adapted = module.unsharded_policy(state) if module.lora else None
    if module.lora and name == "hf_model":
        run.export_model(adapted, tokenizer, "adapter")  # peft's save_pretrained writes the adapter only


def export_best_model(trainer: L.Trainer, module: Any, tokenizer: Any, run: RunDirectory) -> dict[str, Any] | None:
    """`hf_model_best/`: the policy of the best checkpoint by the monitored metric (val/loss), the
    model the analysis commands use for a run (with early stopping, the final one is a later,
    worse one). Loaded into the trained policy in place after `hf_model/` is written."""
    best = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor and cb.best_model_path), None)
    if best is None or not Path(best.best_model_path).is_file():
        return None
    state = check_checkpoint(best.best_model_path)
    weights = {k[len("policy.") :]: v for k, v in state["state_dict"].items() if k.startswith("policy.")}
    record = {
        "step": int(state["global_step"]),
        "checkpoint": str(best.best_model_path),
        "monitor": best.monitor,
        "value": float(best.best_model_score) if best.best_model_score is not None else None,
    }
    if is_sharded(module.policy):  # a new, unsharded copy from the checkpoint's full weights
        export_policy(run, module, tokenizer, "hf_model_best", record, state=weights)
    else:
        module.load_policy_weights(weights)
        export_policy(run, module, tokenizer, "hf_model_best", record)
    return record


def write_run_report(run_dir: Path) -> Path | None:
    """report.html (and plots/) at the end of a run; a problem there never fails the finished run."""
    from lightning_dpo.report import run_report

    try:
        return run_report(run_dir)
    except Exception as exc:
        log.warning(
            "the run's report.html could not be written (%s: %s); `python -m lightning_dpo.report %s` retries",
            type(exc).__name__,
            exc,
            run_dir,
        )
        return None


def _write_status(run: RunDirectory, status: str, **extra: Any) -> None:
    if rank_zero_only.rank == 0:  # one writer under DDP
        run.write_status(status, **extra)


def _record_failure(run: RunDirectory, exc: BaseException) -> None:
    """status.json = failed, without hiding the original error if the status cannot be written."""
    try:
        _write_status(run, "failed", error=f"{type(exc).__name__}: {exc}")
    except Exception as status_exc:  # the original error is what the user must see
        log.error("could not record the failure in %s: %s", run.status_file, status_exc)


def _log_to_file(path: Path) -> logging.Handler:
    """`train.log`: every log record of this attempt, appended (resumed attempts add to it)."""
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def freeze_heap() -> None:
    """Move the objects built before the fit (config, modules, tokenizer, datasets) out of the cyclic
    garbage collector's reach: a full collection walked all of them, 0.3-0.4 s on the demo, inside
    whatever step or callback allocated at that moment (benchmarks/RESULTS.md).
    Reference counting still frees them; `cleanup` unfreezes them for the next job of a sweep."""
    gc.collect()
    gc.freeze()


def cleanup() -> None:
    """Per-job cleanup so that multirun jobs do not leak into each other."""
    gc.unfreeze()  # what `freeze_heap` kept from the collector becomes collectable again
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except Exception as exc:  # a W&B problem must never hide the job's own result
        log.warning("wandb.finish failed: %s", exc)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
