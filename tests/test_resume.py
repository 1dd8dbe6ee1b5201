"""Resume is exact: a signal at any step, then `ckpt_path=last`, gives byte-identical files to an
uninterrupted run; files damaged or deleted in between are rebuilt from the checkpoint, or named.

The signal is a real SIGTERM / SIGINT sent by this process to itself (tests/helpers/signals.py),
so the handlers under test are the ones a user's `kill` or Ctrl-C reaches; the run goes through
`train(cfg)` in-process. The subprocess versions (exit codes, the printed hint) are in
test_reliability.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from helpers.configs import SHORT_RUN, SMALL_WORLD, compose_train
from lightning_dpo.train import train
from lightning_dpo.utils.errors import RunInterrupted

# 8 steps; validation every 4, snapshots every 2, toxicity evaluations every 4 (SHORT_RUN), and an
# epoch of 3 batches, so the run crosses two epoch boundaries (steps 3 and 6).
RUN = SMALL_WORLD + SHORT_RUN + ["+trainer.limit_train_batches=3"]
FILES = ("metrics.csv", "dynamics/groups.csv", "dynamics/components.csv", "toxicity_eval.csv")


def _run(run_dir: Path, overrides: list[str], signal_at: dict | None = None) -> None:
    cfg = compose_train(RUN + overrides, run_dir)
    if signal_at is not None:  # first, so that a step-0 signal lands in the step-0 measurements
        callbacks = OmegaConf.to_container(cfg.callbacks)
        cfg.callbacks = {"signal_at": {"_target_": "helpers.signals.SignalAt", **signal_at}, **callbacks}
    train(cfg)


def _outputs(run_dir: Path) -> dict[str, bytes]:
    out = {name: (run_dir / name).read_bytes() for name in FILES}
    for path in sorted((run_dir / "dynamics").glob("step_*.safetensors")):
        out[f"dynamics/{path.name}"] = path.read_bytes()
    for path in sorted((run_dir / "eval").glob("generations_step_*.jsonl")):
        out[f"eval/{path.name}"] = path.read_bytes()
    return out


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, small_world):
    run_dir = tmp_path_factory.mktemp("straight")
    _run(run_dir, [])
    return run_dir


def _interrupt_and_resume(run_dir: Path, signal_at: dict, extra: list[str] = ()) -> int:
    with pytest.raises(RunInterrupted) as info:
        _run(run_dir, list(extra), signal_at)
    assert info.value.command.endswith(f"hydra.run.dir={run_dir} ckpt_path=last")
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted", status
    stopped = int(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"])
    _run(run_dir, list(extra) + ["ckpt_path=last"])
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    return stopped


def _assert_same(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    fa, fb = _outputs(a), _outputs(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        assert fa[name] == fb[name], name
    assert sorted(p.name for p in (a / "checkpoints").iterdir()) == sorted(p.name for p in (b / "checkpoints").iterdir())


@pytest.mark.parametrize("step", range(0, 8))
def test_sigterm_at_any_step_then_resume_is_byte_identical(tmp_path, straight, step):
    stopped = _interrupt_and_resume(tmp_path / "run", {"step": step})
    assert stopped == step
    _assert_same(straight, tmp_path / "run")


def test_sigterm_at_the_final_step_then_resume_completes_identically(tmp_path, straight):
    stopped = _interrupt_and_resume(tmp_path / "run", {"step": 8})
    assert stopped == 8
    _assert_same(straight, tmp_path / "run")


@pytest.mark.parametrize("step", [0, 3, 4])
def test_ctrl_c_then_resume_is_byte_identical(tmp_path, straight, step):
    assert _interrupt_and_resume(tmp_path / "run", {"step": step, "signal_name": "SIGINT"}) == step
    _assert_same(straight, tmp_path / "run")


# Gradient accumulation over 2 batches with 3-batch epochs: each epoch's second optimizer step has
# a single micro-batch, so epoch ends and step ends fall on different batches.
ACCUMULATE = ["trainer.accumulate_grad_batches=2", "trainer.val_check_interval=2"]


@pytest.fixture(scope="module")
def straight_accumulated(tmp_path_factory, small_world):
    run_dir = tmp_path_factory.mktemp("straight_accumulated")
    _run(run_dir, ACCUMULATE)
    return run_dir


@pytest.mark.parametrize("step", [1, 2, 3, 5])
def test_a_signal_during_gradient_accumulation_stops_at_the_next_step(tmp_path, straight_accumulated, step):
    # sent in the first micro-batch after optimizer step `step`: honoured at the end of step + 1
    stopped = _interrupt_and_resume(tmp_path / "run", {"step": step, "micro_batch": True}, ACCUMULATE)
    assert stopped == step + 1
    _assert_same(straight_accumulated, tmp_path / "run")


# -- files damaged or deleted between the stop and the resume ------------------------------------


def _stop_at_4(run_dir: Path) -> None:
    with pytest.raises(RunInterrupted):
        _run(run_dir, [], {"step": 4})


def test_deleted_groups_csv_and_truncated_metrics_csv_are_rebuilt_on_resume(tmp_path, straight, caplog):
    run_dir = tmp_path / "run"
    _stop_at_4(run_dir)
    (run_dir / "dynamics" / "groups.csv").unlink()
    metrics = (run_dir / "metrics.csv").read_bytes()
    (run_dir / "metrics.csv").write_bytes(metrics[: len(metrics) // 2])  # cut mid-row
    _run(run_dir, ["ckpt_path=last"])
    assert "rebuilt it from the checkpoint" in caplog.text
    _assert_same(straight, run_dir)


def test_a_damaged_step0_snapshot_is_rewritten_from_the_checkpoint(tmp_path, straight):
    run_dir = tmp_path / "run"
    _stop_at_4(run_dir)
    path = run_dir / "dynamics" / "step_0000000.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    _run(run_dir, ["ckpt_path=last"])
    _assert_same(straight, run_dir)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_later_snapshot_stops_the_resume_naming_the_file(tmp_path, small_world, damage):
    from lightning_dpo.utils.errors import DataError

    run_dir = tmp_path / "run"
    _stop_at_4(run_dir)
    path = run_dir / "dynamics" / "step_0000002.safetensors"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-10])
    else:
        path.unlink()
    with pytest.raises(DataError, match=rf"{path}: the snapshot of step 2 (is missing|does not match the checksum).*cannot be rebuilt"):
        _run(run_dir, ["ckpt_path=last"])


def test_deleted_generations_stop_the_resume_naming_the_file(tmp_path, small_world):
    from lightning_dpo.utils.errors import DataError

    run_dir = tmp_path / "run"
    _stop_at_4(run_dir)
    path = run_dir / "eval" / "generations_step_0000004.jsonl"
    path.unlink()
    with pytest.raises(DataError, match=rf"{path}: the generations file of step 4 is missing"):
        _run(run_dir, ["ckpt_path=last"])


def test_meta_json_records_each_snapshot_size_and_checksum(straight):
    import hashlib

    meta = json.loads((straight / "dynamics" / "meta.json").read_text())
    files = sorted((straight / "dynamics").glob("step_*.safetensors"))
    assert sorted(meta["snapshots"]) == [str(int(p.stem.split("_")[1])) for p in files]
    for path in files:
        entry = meta["snapshots"][str(int(path.stem.split("_")[1]))]
        assert entry == {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


@pytest.mark.parametrize("step", [1, 2, 3, 4])  # a plain step, a snapshot step, an epoch boundary, a validation step
def test_a_resume_at_its_own_final_step_takes_the_final_measurements(tmp_path, small_world, step):
    """Interrupted at step k, resumed with trainer.max_steps=k: Lightning skips its training loop, yet the
    run ends `completed` only with its final snapshot, evaluation and validation, as a straight k-step run."""
    from helpers.signals import SignalAt  # noqa: F401  (referenced by _target_)
    from lightning_dpo.training.metrics_csv import read_metrics_csv

    run_dir = tmp_path / "run"
    with pytest.raises(RunInterrupted):
        _run(run_dir, [], {"step": step})
    _run(run_dir, [f"trainer.max_steps={step}", "ckpt_path=last"])
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    straight_k = tmp_path / "straight"
    _run(straight_k, [f"trainer.max_steps={step}"])
    for name in (f"dynamics/step_{step:07d}.safetensors", f"eval/generations_step_{step:07d}.jsonl", "toxicity_eval.csv"):
        assert (run_dir / name).read_bytes() == (straight_k / name).read_bytes(), name
    val = {r["step"]: r["val/loss"] for r in read_metrics_csv(run_dir / "metrics.csv") if "val/loss" in r}
    val_straight = {r["step"]: r["val/loss"] for r in read_metrics_csv(straight_k / "metrics.csv") if "val/loss" in r}
    assert val[step] == val_straight[step]
    best = json.loads((run_dir / "hf_model_best" / "lightning_dpo.json").read_text())
    assert best["step"] == min(val, key=val.get)
    assert f"at step {step}" in (run_dir / "train.log").read_text().split("== lightning-dpo summary ==")[-1]
