"""Reliability: bad input, bad numbers, interruptions, damaged files, full disks, no network."""

import csv
import errno
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from helpers.configs import SHORT_RUN, SMALL_WORLD, compose_train
from helpers.data import write_pairs
from helpers.models import build_tiny, tiny_gpt2_config
from lightning_dpo.data import PreferenceDataModule, read_preference_rows
from lightning_dpo.model import DPOModule, PreferenceLoss
from lightning_dpo.model.schedules import warmup_schedule
from lightning_dpo.training.checkpoints import check_checkpoint
from lightning_dpo.utils.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    NonFiniteError,
    OutputError,
)
from lightning_dpo.utils.io import atomic_write_text

GOOD = {"prompt": "p", "chosen": " c", "rejected": " r"}


# -- data --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_line, reason",
    [
        (b'{"prompt": "p", "chosen": " c"', "not valid JSON"),
        (b'{"prompt": "p", "chosen": " c"}', "missing field 'rejected'"),
        (b'{"prompt": "", "chosen": " c", "rejected": " r"}', "field 'prompt' (the prompt) is empty"),
        (b'{"prompt": "p", "chosen": "   ", "rejected": " r"}', "field 'chosen' (the chosen) is empty"),
        (b'{"prompt": "p", "chosen": " c", "rejected": "\xff\xfe r"}', "not valid UTF-8"),
        (b'{"prompt": 3, "chosen": " c", "rejected": " r"}', "must be a string"),
        (b'["p", "c", "r"]', "expected a JSON object"),
    ],
)
def test_a_bad_row_names_file_and_line_or_is_skipped_and_counted(tmp_path, bad_line, reason):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + bad_line + b"\n" + json.dumps(GOOD).encode() + b"\n")
    with pytest.raises(DataError) as info:
        read_preference_rows(str(path))
    assert f"{path}:2" in str(info.value) and reason in str(info.value) and "data.on_bad_row=skip" in str(info.value)
    records, report = read_preference_rows(str(path), on_bad_row="skip")
    assert [r.line for r in records] == [1, 3]
    assert report.rows_read == 3 and report.kept == 2 and sum(report.skipped.values()) == 1
    assert "2 of 3 rows kept" in report.summary() and "skipped: 1" in report.summary()


def test_lee_format_and_field_overrides(tmp_path):
    path = tmp_path / "lee.jsonl"
    path.write_text(json.dumps({"prompt_text": "p", "unpert_gen_text": " good", "pert_gen_text": " bad"}) + "\n")
    records, _ = read_preference_rows(str(path), format="lee")
    assert (records[0].chosen, records[0].rejected) == (" good", " bad")
    path.write_text(json.dumps({"question": "q", "chosen": " a", "rejected": " b"}) + "\n")
    records, _ = read_preference_rows(str(path), fields={"prompt": "question"})
    assert records[0].prompt == "q"
    with pytest.raises(ConfigError, match="data.format"):
        read_preference_rows(str(path), format="dpo")


def test_empty_after_filtering_and_missing_file_fail_before_training(tmp_path, char_tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text("not json\n")
    dm = PreferenceDataModule(tokenizer=char_tokenizer, path=str(path), on_bad_row="skip")
    with pytest.raises(DataError, match="no usable preference pairs"):
        dm.setup("fit")
    with pytest.raises(DataError, match="file not found"):
        PreferenceDataModule(tokenizer=char_tokenizer, path=str(tmp_path / "none.jsonl")).setup("fit")
    with pytest.raises(ConfigError, match="data.val_size"):
        PreferenceDataModule(tokenizer=char_tokenizer, path=str(write_pairs(tmp_path / "p.jsonl", 4)), val_size=4).setup("fit")


# -- configuration ---------------------------------------------------------------------------


def test_probe_of_the_wrong_size_and_an_unknown_mlp_fail_before_training(tmp_path, small_world):
    from lightning_dpo.train import train

    torch.save(torch.randn(1, 999), tmp_path / "probe.pt")
    cfg = compose_train(SMALL_WORLD + SHORT_RUN + ["probe=file", f"probe.path={tmp_path / 'probe.pt'}"], tmp_path / "run")
    with pytest.raises(ConfigError, match="999 dimensions but the model's d_model is 64"):
        train(cfg)
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))

    from lightning_dpo.neurons.hooks import find_output_projections

    with pytest.raises(ConfigError, match="cannot find the decoder layers"):
        find_output_projections(torch.nn.Sequential(torch.nn.Linear(2, 2)))


# -- numerics ------------------------------------------------------------------------------------


def _module(on_nonfinite="raise"):
    return DPOModule(
        policy=build_tiny(tiny_gpt2_config()),
        loss=PreferenceLoss(),
        on_nonfinite=on_nonfinite,
        optimizer=partial(torch.optim.SGD, lr=0.1),
        scheduler=partial(warmup_schedule, warmup_steps=0),
    )


def _fit(module, tmp_path, char_tokenizer, steps, callbacks=(), **kwargs):
    dm = PreferenceDataModule(tokenizer=char_tokenizer, path=str(write_pairs(tmp_path / "pairs.jsonl", 40)), val_size=8, batch_size=4)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        **kwargs,
    )
    trainer.fit(module, datamodule=dm)
    return trainer


class NanLossAt(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        original = type(pl_module).compute

        def compute(module, b, diagnostics):
            loss, values = original(module, b, diagnostics)
            return (loss * float("nan") if module.global_step == self.step else loss), values

        pl_module.compute = compute.__get__(pl_module)


def test_a_nonfinite_loss_stops_the_run_naming_step_and_batch(tmp_path, char_tokenizer):
    with pytest.raises(NonFiniteError, match=r"non-finite loss at optimizer step 2 \(batch 2 of epoch 0; pair indices"):
        _fit(_module(), tmp_path, char_tokenizer, 5, [NanLossAt(2)], enable_checkpointing=False)


def test_a_nonfinite_step_is_skipped_when_asked(tmp_path, char_tokenizer, caplog):
    weights = {}

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            weights[trainer.global_step] = pl_module.policy.transformer.wte.weight.detach().clone()

    module = _module("skip")
    with caplog.at_level(logging.WARNING):
        _fit(module, tmp_path, char_tokenizer, 5, [NanLossAt(2), Watch()], enable_checkpointing=False)
    assert "non-finite loss at optimizer step 2" in caplog.text and "skipping" in caplog.text
    assert torch.equal(weights[2], weights[3])  # the NaN step changed nothing
    assert not torch.equal(weights[3], weights[4]) and all(torch.isfinite(w).all() for w in weights.values())


def test_a_bad_state_never_replaces_the_last_good_checkpoint(tmp_path, char_tokenizer):
    module = _module()
    trainer = _fit(module, tmp_path, char_tokenizer, 2, enable_checkpointing=False, default_root_dir=str(tmp_path))
    good = tmp_path / "last.ckpt"
    from lightning_dpo.training.checkpoints import AtomicCheckpointIO

    trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    trainer.save_checkpoint(str(good))
    before = good.read_bytes()
    with torch.no_grad():
        module.policy.transformer.wte.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="refusing to save"):
        trainer.save_checkpoint(str(good))
    assert good.read_bytes() == before and not list(tmp_path.glob(".last.ckpt.*"))


# -- damaged files, full disks ---------------------------------------------------------------


def test_a_truncated_checkpoint_names_the_file_and_the_previous_one(tmp_path):
    older = tmp_path / "best-step_0000010.ckpt"
    torch.save({"state_dict": {}}, older)
    last = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, last)
    last.write_bytes(last.read_bytes()[:300])
    with pytest.raises(CheckpointError) as info:
        check_checkpoint(last)
    assert str(last) in str(info.value) and str(older) in str(info.value)
    last.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot be read"):
        check_checkpoint(last)


def test_a_full_disk_keeps_the_old_file_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "groups.csv"
    atomic_write_text(path, "old content\n")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("lightning_dpo.utils.io._fsync_file", full)
    with pytest.raises(OutputError, match="no space left on device"):
        atomic_write_text(path, "new content that does not fit\n")
    assert path.read_text() == "old content\n" and [p.name for p in tmp_path.iterdir()] == ["groups.csv"]


def test_an_unusable_output_directory_fails_clearly(tmp_path, small_world):
    from lightning_dpo.train import train

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="run directory .* is not usable"):
        train(compose_train(SMALL_WORLD + SHORT_RUN, blocker / "run"))


# -- network ---------------------------------------------------------------------------------


def test_wandb_without_credentials_or_server_goes_offline_with_one_warning(monkeypatch, tmp_path, caplog):
    from lightning_dpo.training import wandb_logger
    from lightning_dpo.training.wandb_logger import choose_wandb_mode

    monkeypatch.setattr(wandb_logger, "_warned", False)
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with caplog.at_level(logging.WARNING):
        assert choose_wandb_mode(sync_hint="wandb sync /runs/x/wandb/offline-run-*") == "offline"
        assert choose_wandb_mode() == "offline"  # a sweep's next job: no second warning
    assert caplog.text.count("W&B") == 1 and "no credentials" in caplog.text
    assert "Upload later with: wandb sync /runs/x/wandb/offline-run-*" in caplog.text
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "https://127.0.0.1:9")  # nothing listens there
    assert choose_wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert choose_wandb_mode() == "disabled"


def test_wandb_logger_in_a_sweep_is_grouped_by_what_the_sweep_varies(monkeypatch, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    from helpers.configs import CONF
    from lightning_dpo.training.wandb_logger import make_wandb_logger

    monkeypatch.setenv("WANDB_MODE", "disabled")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["loss.type=ipo", "world.seed=1", "ckpt_path=last", f"hydra.sweep.dir={tmp_path}/2026-11-28/04-03-43"],
            return_hydra_config=True,
        )
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.job.override_dirname = "loss.type=ipo,world.seed=1"
    HydraConfig.instance().set_config(cfg)
    try:
        logger = make_wandb_logger(save_dir=str(tmp_path / "job"))
        assert logger._wandb_init["group"] == "loss.type,world.seed 2026-11-28/04-03-43"  # ckpt_path is not what it varies
        assert logger._wandb_init["name"] == "loss.type=ipo,world.seed=1"
        assert "anonymous" not in logger._wandb_init
        named = make_wandb_logger(save_dir=str(tmp_path / "job"), group="beta-scan")
        assert named._wandb_init["group"] == "beta-scan"
    finally:
        HydraConfig.instance().cfg = None


# -- interruptions (subprocesses) -------------------------------------------------------------


def _start(run_dir: Path, extra: list[str]) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    args = SMALL_WORLD + SHORT_RUN + [f"hydra.run.dir={run_dir}", "callbacks.toxicity_eval.every_n_steps=1000"] + extra
    return subprocess.Popen(
        [sys.executable, "-m", "lightning_dpo.train", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_saves_a_checkpoint_and_the_printed_command_finishes_the_run(tmp_path, small_world, sig):
    run_dir = tmp_path / "run"
    process = _start(run_dir, ["trainer.max_steps=40", "loss.beta=0.2"])  # both differ from the defaults
    _wait_for(run_dir / "dynamics" / "step_0000004.safetensors", process)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 128 + sig, output[-3000:]  # interrupted: not a success, and says by what
    status = _status(run_dir)
    step = _ckpt_step(run_dir / "checkpoints" / "last.ckpt")
    assert status["status"] == "interrupted" and status["step"] == step and 4 <= step < 40
    command = status["resume"]
    assert command in output and "trainer.max_steps=40" in command and "loss.beta=0.2" in command
    args = shlex.split(command)
    assert args[:3] == ["python", "-m", "lightning_dpo.train"]
    resumed = subprocess.run(
        [sys.executable, *args[1:]],
        env=dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert _status(run_dir)["status"] == "completed" and _ckpt_step(run_dir / "checkpoints" / "last.ckpt") == 40


@pytest.mark.slow
def test_sigterm_as_soon_as_the_run_starts_leaves_a_checkpoint_or_fails_loudly(tmp_path, small_world):
    run_dir = tmp_path / "run"
    process = _start(run_dir, [])
    deadline = time.monotonic() + 300
    while not ((run_dir / "status.json").exists() and '"running"' in (run_dir / "status.json").read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()[-3000:]
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)  # while the model loads or the step-0 measurements run
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert _status(run_dir)["status"] == "interrupted"
    assert _ckpt_step(run_dir / "checkpoints" / "last.ckpt") == _status(run_dir)["step"]


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_equals_the_uninterrupted_run(tmp_path, small_world):
    # warmup_cap=null: the capped warm-up depends on trainer.max_steps, which differs between the killed run and the others
    every = ["callbacks.stop_checkpoint.every_n_steps=3", "trainer.val_check_interval=5", "optim.warmup_cap=null"]
    killed = tmp_path / "killed"
    process = _start(killed, every + ["trainer.max_steps=100000"])
    _wait_for(killed / "dynamics" / "step_0000010.safetensors", process)
    process.kill()  # SIGKILL: no handler runs
    process.communicate(timeout=60)
    step = _ckpt_step(killed / "checkpoints" / "last.ckpt")
    target = step + 7
    for run_dir, extra in ((killed, ["ckpt_path=last"]), (tmp_path / "straight", [])):
        p = _start(run_dir, every + [f"trainer.max_steps={target}", *extra])
        output, _ = p.communicate(timeout=300)
        assert p.returncode == 0, output[-3000:]
    a = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == target
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in b["state_dict"])

    def rows(path):
        with open(path) as handle:
            return list(csv.DictReader(handle))

    assert rows(killed / "metrics.csv") == rows(tmp_path / "straight" / "metrics.csv")
    assert rows(killed / "dynamics" / "groups.csv") == rows(tmp_path / "straight" / "dynamics" / "groups.csv")


def test_atomic_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    """Temporary files are created private (0600/0700); what replaces the target must not stay so
    (a colleague on a shared cluster reads the run as the user's umask allows)."""
    from lightning_dpo.utils.io import atomic_directory

    old = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        (tmp_path / "plain_dir").mkdir()
        atomic_write_text(tmp_path / "atomic.txt", "x")
        atomic_directory(tmp_path / "atomic_dir", lambda d: (d / "f").write_text("x"))
    finally:
        os.umask(old)
    assert (tmp_path / "atomic.txt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "atomic_dir").stat().st_mode & 0o777 == (tmp_path / "plain_dir").stat().st_mode & 0o777 == 0o755
