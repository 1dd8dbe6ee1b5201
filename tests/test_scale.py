"""Scale: two-process DDP (Lightning's launcher and torchrun) equals one process with the same global batch."""

import csv
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers.configs import SHORT_RUN, SMALL_WORLD, compose_train

# no toxicity evaluation (not compared here); snapshots every 2 steps; 6 steps
RUN = SMALL_WORLD + SHORT_RUN + ["trainer.max_steps=6", "callbacks.toxicity_eval.every_n_steps=1000", "trainer.val_check_interval=3"]


def _train(run_dir, extra, launcher=()):
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    cmd = (
        [*launcher, "-m", "lightning_dpo.train", *RUN, f"hydra.run.dir={run_dir}", *extra]
        if launcher
        else [sys.executable, "-m", "lightning_dpo.train", *RUN, f"hydra.run.dir={run_dir}", *extra]
    )
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def _losses(run_dir):
    with open(run_dir / "metrics.csv") as handle:
        return [float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")]


def _close(a, b, atol):
    return all(torch.allclose(a["state_dict"][k], b["state_dict"][k], atol=atol) for k in a["state_dict"])


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path, small_world):
    single = _train(tmp_path / "single", ["data.batch_size=8"])
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=4"]
    spawned = _train(tmp_path / "ddp", ddp)
    torchrun = _train(tmp_path / "torchrun", ddp, launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"))
    assert single["global_step"] == spawned["global_step"] == torchrun["global_step"] == 6
    # fp32 all-reduce sums in another order; Adam's normalised updates carry that into ~1e-5 differences
    assert _close(single, spawned, 5e-5) and _close(single, torchrun, 5e-5)
    assert _losses(tmp_path / "single") == pytest.approx(_losses(tmp_path / "ddp"), abs=1e-5)
    for step in ("0000000", "0000006"):  # the sharded, all-reduced snapshot equals the single-process one
        a = load_file(tmp_path / "single" / "dynamics" / f"step_{step}.safetensors")
        b = load_file(tmp_path / "ddp" / "dynamics" / f"step_{step}.safetensors")
        assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_ddp_preset_composes():
    cfg = compose_train(["trainer=ddp"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.use_distributed_sampler is False
