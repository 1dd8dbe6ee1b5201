"""One run directory, one run: the lock, refusals that leave no trace, resume checks, the resume command."""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path

import pytest

from helpers.configs import SHORT_RUN, SMALL_WORLD, compose_train
from lightning_dpo.runs.directory import RunDirectory
from lightning_dpo.train import train
from lightning_dpo.training.plan import resume_command
from lightning_dpo.utils.errors import ConfigError, OutputError


def run(run_dir: Path, *overrides: str):
    return train(compose_train(SMALL_WORLD + SHORT_RUN + list(overrides), run_dir))


def files(run_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".lightning_dpo.lock"
    }


def test_a_second_run_into_a_directory_in_use_stops_at_once_naming_the_holder(tmp_path, small_world):
    run_dir = tmp_path / "run"
    with RunDirectory(run_dir).lock() as lock:  # the first run holds the directory
        lock.hold()
        with pytest.raises(OutputError, match=r"in use by another run \(pid \d+ on .* since .*\)"):
            run(run_dir)
        assert not (run_dir / ".hydra").exists() and not (run_dir / "status.json").exists()
    run(run_dir, "trainer.max_steps=2")  # released: the directory can be used
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"


def test_a_refused_fresh_run_changes_nothing_in_the_finished_run(tmp_path, small_world):
    run_dir = tmp_path / "run"
    run(run_dir, "trainer.max_steps=2")
    before = files(run_dir)
    with pytest.raises(OutputError, match="already holds a run"):
        run(run_dir, "trainer.max_steps=2", "loss.beta=0.7")
    assert files(run_dir) == before  # .hydra/config.yaml, overrides.yaml, status.json, train.log included


@pytest.mark.parametrize(
    "override, key",
    [
        ("loss.beta=0.5", "loss.beta"),
        ("optim.lr=0.002", "optim.lr"),
        ("data.batch_size=2", "data.batch_size"),
        ("seed=7", "seed"),
        ("trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches"),
    ],
)
def test_a_resume_with_changed_settings_is_refused_with_the_changed_keys(tmp_path, small_world, override, key):
    run_dir = tmp_path / "run"
    run(run_dir, "trainer.max_steps=2")
    before = files(run_dir)
    with pytest.raises(ConfigError) as info:
        run(run_dir, "trainer.max_steps=4", "ckpt_path=last", override)
    old_new = f"{key}: "
    assert old_new in str(info.value) and "->" in str(info.value) and f"allow_changes=[{key}]" in str(info.value)
    assert files(run_dir) == before


def test_a_model_swap_on_resume_is_refused(tmp_path, small_world):
    run_dir = tmp_path / "run"
    run(run_dir, "trainer.max_steps=2")
    with pytest.raises(ConfigError, match=r"model\.name_or_path: '.*base_model' -> '.*other'"):
        run(run_dir, "trainer.max_steps=4", "ckpt_path=last", f"model.name_or_path={tmp_path / 'other'}")


def test_an_allowed_change_is_applied_and_recorded_in_the_history(tmp_path, small_world):
    run_dir = tmp_path / "run"
    run(run_dir, "trainer.max_steps=2")
    run(run_dir, "trainer.max_steps=4", "ckpt_path=last", "optim.lr=0.002", "allow_changes=[optim.lr]")
    attempts = sorted(p.name for p in (run_dir / ".hydra" / "attempts").iterdir())
    assert len(attempts) == 2 and attempts[0].startswith("001-") and attempts[1].startswith("002-")
    changes = (run_dir / ".hydra" / "attempts" / attempts[1] / "changes.yaml").read_text()
    assert "optim.lr" in changes and "0.0001" in changes and "0.002" in changes
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    # the next resume compares with the settings of the last attempt (lr 0.002), which are in the checkpoint
    run(run_dir, "trainer.max_steps=6", "ckpt_path=last", "optim.lr=0.002")


def test_a_resume_below_the_checkpoint_step_says_why(tmp_path, small_world, caplog):
    run_dir = tmp_path / "run"
    run(run_dir, "trainer.max_steps=6")
    with pytest.raises(
        ConfigError, match=r"trainer.max_steps.*3 is below the checkpoint's step 6; the run was started with trainer.max_steps=6"
    ):
        run(run_dir, "trainer.max_steps=3", "ckpt_path=last")
    before = files(run_dir)
    with caplog.at_level(logging.INFO):
        assert run(run_dir, "trainer.max_steps=6", "ckpt_path=last") is not None  # complete: nothing to do, the stored objective
    assert "nothing to train" in caplog.text and files(run_dir) == before


def test_the_resume_command_repeats_every_override_and_quotes_them():
    overrides = [
        "trainer.max_steps=400",
        "loss.beta=0.5",
        "callbacks.toxicity_eval.scorer={name: profanity_check}",
        "ckpt_path=last",
        "hydra.run.dir=/old",
        "launcher=slurm",
        "hparams_search=optuna",
    ]
    command = resume_command(Path("/runs/my run"), overrides)
    args = shlex.split(command)
    assert args[:3] == ["python", "-m", "lightning_dpo.train"]
    assert args[3:] == [
        "trainer.max_steps=400",
        "loss.beta=0.5",
        "callbacks.toxicity_eval.scorer={name: profanity_check}",
        "hydra.run.dir='/runs/my run'",
        "ckpt_path=last",
    ]  # the directory in Hydra's quotes


def test_a_refused_single_run_leaves_nothing_but_a_refused_sweep_job_is_recorded(tmp_path, small_world, monkeypatch):
    run_dir = tmp_path / "job"
    with pytest.raises(ConfigError, match="optim.lr"):
        run(run_dir, "optim.lr=-1")
    assert not run_dir.exists()  # nothing left where nothing ran (no empty outputs/<date>/<time>/)
    monkeypatch.setattr("lightning_dpo.lifecycle.run.is_multirun", lambda: True)
    with pytest.raises(ConfigError, match="optim.lr"):
        run(run_dir, "optim.lr=-1")
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "optim.lr" in status["error"]  # the sweep's table lists the job as failed
    assert (run_dir / ".hydra" / "config.yaml").exists()
    monkeypatch.undo()
    run(run_dir, "trainer.max_steps=2")  # an attempt that produced nothing is replaced, not refused
    before = files(run_dir)
    with pytest.raises(ConfigError):
        run(run_dir, "trainer.max_steps=4", "ckpt_path=last", "optim.lr=inf", "allow_changes=[optim]")
    assert files(run_dir) == before


def test_a_refused_run_leaves_the_lock_file_of_a_finished_run_as_it_was(tmp_path, small_world):
    run_dir = tmp_path / "run"
    run(run_dir, "trainer.max_steps=2")
    lock = (run_dir / ".lightning_dpo.lock").read_bytes()
    for refused in (["trainer.max_steps=2", "loss.beta=0.7"], ["trainer.max_steps=4", "ckpt_path=last", "loss.beta=0.5"]):
        with pytest.raises((OutputError, ConfigError)):
            run(run_dir, *refused)
        assert (run_dir / ".lightning_dpo.lock").read_bytes() == lock


@pytest.mark.parametrize("path", ["/tmp/sweep/loss.beta=0.1,optim.lr=1e-06", "/tmp/my run/it's", '/tmp/a$b/c"d', "/tmp/plain-run_1"])
def test_printed_commands_give_hydra_the_exact_directory(path):
    """A sweep job's directory holds `=` and `,`: the resume command (and the analyze command of
    the summary) must hand Hydra exactly that path, through the shell."""
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from lightning_dpo.training.plan import resume_command
    from lightning_dpo.utils.config import override_arg

    parser = OverridesParser.create()
    argv = shlex.split(resume_command(Path(path), ["loss.beta=0.1", "optim.lr=1e-06"]))
    assert argv[:3] == ["python", "-m", "lightning_dpo.train"]
    parsed = {o.key_or_group: o.value() for o in parser.parse_overrides(argv[3:])}
    assert parsed == {"loss.beta": 0.1, "optim.lr": 1e-06, "hydra.run.dir": path, "ckpt_path": "last"}
    [override] = parser.parse_overrides(shlex.split(override_arg("dpo", path)))
    assert override.value() == path
