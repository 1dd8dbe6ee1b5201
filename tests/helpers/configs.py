"""Composing the project's configs in tests, as the command line would: the small toy world and a short run."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"

# A small world for fast tests (the default world is used by the slow demo test).
SMALL_WORLD = [
    "world.corpus_size=1500",
    "world.num_pairs=240",
    "world.num_eval_prompts=32",
    "world.vocab_size=600",
    "world.n_layer=2",
    "world.n_embd=64",
    "world.n_head=4",
    "world.n_inner=128",
    "world.pretrain_steps=150",
]
# A short, fully logged run on that world.
SHORT_RUN = [
    "trainer.accelerator=cpu",
    "trainer.max_steps=8",
    "trainer.val_check_interval=4",
    "trainer.log_every_n_steps=1",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "data.val_size=16",
    "callbacks.neuron_dynamics.every_n_steps=2",
    "callbacks.toxicity_eval.every_n_steps=4",
    "callbacks.toxicity_eval.max_prompts=16",
    "optim.warmup_steps=2",
    "report=false",  # report.html has its own tests (test_report.py, test_terminal.py)
]


def compose_train(overrides: list[str], run_dir: Path | None = None):
    """The train config as `python -m lightning_dpo.train <overrides>` would see it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        extra = [f"paths.output_dir={run_dir}"] if run_dir is not None else ["paths.output_dir=/tmp/unused"]
        cfg = compose(config_name="train", overrides=list(overrides) + extra)
    GlobalHydra.instance().clear()
    return cfg


def compose_command(name: str, overrides: list[str]):
    """A command's config (conf/<name>.yaml) as `python -m lightning_dpo.<name> <overrides>` sees it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides))
    GlobalHydra.instance().clear()
    return cfg
