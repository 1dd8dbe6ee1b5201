"""The training entry point: `python -m lightning_dpo.train [overrides]`.

With no arguments it runs the embedded demo (the toy toxicity world, offline, on CPU). Every object
is built from `conf/` with `hydra.utils.instantiate`; `build_run` wires them (tests and notebooks
call it), and the run's life around them (lock, plan, checks, the attempt's record, status, the
end-of-run work) is lightning_dpo/lifecycle/run.py. The run directory's contents:
lightning_dpo/runs/directory.py.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from lightning_dpo.callbacks.checkpoint_state import MetricsInCheckpoint, RunConfigInCheckpoint
from lightning_dpo.cli import register_all_resolvers
from lightning_dpo.lifecycle.run import Run, is_multirun, run_training
from lightning_dpo.model.loading import load_tokenizer, max_positions
from lightning_dpo.training.checkpoints import AtomicCheckpointIO
from lightning_dpo.training.metrics_csv import MetricsCSVLogger
from lightning_dpo.training.plan import run_config
from lightning_dpo.training.preflight import check_lengths
from lightning_dpo.training.wandb_logger import is_wandb_logger, setup_wandb_run
from lightning_dpo.utils.config import build, plain
from lightning_dpo.utils.errors import LightningDPOError, RunInterrupted
from lightning_dpo.utils.quiet import quiet_libraries

log = logging.getLogger("lightning_dpo.train")


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """Every `callbacks.<name>` node with a `_target_` (conf/callbacks/)."""
    return [
        build(node, f"callbacks.{name}") for name, node in (cfg.get("callbacks") or {}).items() if node is not None and "_target_" in node
    ]


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Any]:
    """metrics.csv (always), then every `logger.<name>` node (W&B: one run per job, its config logged)."""
    loggers: list[Any] = [MetricsCSVLogger(str(run_dir))]
    for name, node in (cfg.get("logger") or {}).items():
        if node is not None and "_target_" in node:
            logger = build(node, f"logger.{name}")
            if is_wandb_logger(logger):
                setup_wandb_run(logger, plain(cfg))
            loggers.append(logger)
    return loggers


def build_run(cfg: DictConfig, run_dir: Path, callbacks: list[L.Callback]) -> Run:
    """The wired objects of a run: tokenizer, data, DPOModule (policy + frozen reference), loggers
    and the Trainer with `callbacks` (built earlier, so that a signal during loading is honoured)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the seed is in .hydra/config.yaml
    loss = build(cfg.loss, "loss")  # cheap checks first: a bad value fails before anything loads
    tokenizer = load_tokenizer(
        cfg.model.get("tokenizer") or cfg.model.get("name_or_path"),
        trust_remote_code=cfg.model.get("trust_remote_code", False),
        gguf_file=cfg.model.get("gguf_file"),
    )
    datamodule = build(cfg.data, "data", tokenizer=tokenizer)
    datamodule.setup("fit")
    log.info("data: %s", datamodule.summary())
    module = build(
        cfg.model,
        "model",
        loss=loss,
        optimizer=build(cfg.optim.optimizer, "optim.optimizer"),
        scheduler=build(cfg.optim.scheduler, "optim.scheduler"),
    )
    check_lengths(cfg, max_positions(module.policy))
    loggers = build_loggers(cfg, run_dir)
    callbacks = callbacks + [MetricsInCheckpoint(loggers[0]), RunConfigInCheckpoint(run_config(cfg))]
    trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()])
    return Run(tokenizer, datamodule, module, trainer)


def train(cfg: DictConfig) -> float | None:
    """Train as configured (lightning_dpo/lifecycle/run.py) and return the objective. Raises
    `RunInterrupted` after a signal, with the checkpoint written and the command that finishes the run.
    With `analyze` set, the papers' interventions run on the completed run (python -m lightning_dpo.analyze)."""
    register_all_resolvers()
    objective = run_training(cfg, build_run, build_callbacks)
    if cfg.get("analyze") and rank_zero_only.rank == 0:
        analyze_run(Path(cfg.paths.output_dir), cfg.analyze)
    return objective


def analyze_run(run_dir: Path, setting: Any) -> dict[str, Any]:
    """`analyze=true` (or a list of analyze's overrides): its table under <run>/analysis/<time>/."""
    from lightning_dpo.analyze import analyze
    from lightning_dpo.cli import compose_config
    from lightning_dpo.utils.config import override_arg
    from lightning_dpo.utils.processes import Processes
    from lightning_dpo.utils.torch_utils import resolve_device

    overrides = [] if setting is True else [str(o) for o in setting]
    log.info("analyzing %s (python -m lightning_dpo.analyze %s)", run_dir, " ".join([override_arg("dpo", run_dir), *overrides]))
    cfg = compose_config("analyze", [f"dpo={run_dir}", *overrides])
    # the main process alone, on the exported model (a DDP or FSDP run's other processes have finished)
    return analyze(cfg, Processes(device=resolve_device(cfg.device)))


@hydra.main(version_base="1.3", config_path="pkg://lightning_dpo.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        return train(cfg)
    except RunInterrupted as exc:
        sys.exit(exc.exit_code)  # also ends a sweep: its other jobs resume with the same command and ckpt_path=last
    except LightningDPOError as exc:
        log.error("%s", exc)
        if is_multirun():  # the job's status.json says failed; the sweep goes on and its report lists it
            return None
        sys.exit(2)
    except Exception:
        if not is_multirun():
            raise
        log.exception("the job failed; the sweep goes on (its status.json and the sweep's report list it)")
        return None


def cli() -> None:
    """`python -m lightning_dpo.train` and the `lightning-dpo-train` script: set up, then Hydra's main."""
    from lightning_dpo.cli import check_output_dir_arguments, without_demo_bundle

    quiet_libraries()
    register_all_resolvers()  # Hydra resolves the configs before `main` runs
    sys.argv[1:] = without_demo_bundle(sys.argv[1:])
    check_output_dir_arguments(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
