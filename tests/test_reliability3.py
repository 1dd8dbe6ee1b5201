"""Reliability III: no setting trains wrongly in silence, nothing written is lost, and the rough edges a new user hit."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.configs import SHORT_RUN, SMALL_WORLD, compose_train
from lightning_dpo.train import train
from lightning_dpo.training.preflight import check_added_keys, check_numbers
from lightning_dpo.utils.errors import ConfigError


def run(run_dir: Path, *overrides: str):
    return train(compose_train(SMALL_WORLD + SHORT_RUN + list(overrides), run_dir))


# -- every number the trainer, the data and the callbacks read ----------------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.accumulate_grad_batches=-1", "trainer.accumulate_grad_batches"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches"),
        ("trainer.accumulate_grad_batches=nan", "trainer.accumulate_grad_batches"),
        ("trainer.max_steps=2.5", "trainer.max_steps"),
        ("trainer.max_steps=-3", "trainer.max_steps"),
        ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val"),
        ("trainer.gradient_clip_val=nan", "trainer.gradient_clip_val"),
        ("trainer.val_check_interval=0", "trainer.val_check_interval"),
        ("trainer.val_check_interval=1.5", "trainer.val_check_interval"),
        ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps"),
        ("data.batch_size=four", "data.batch_size"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.val_size=-2", "data.val_size"),
        ("callbacks.neuron_dynamics.top_n=0", "callbacks.neuron_dynamics.top_n"),
        ("callbacks.neuron_dynamics.every_n_steps=0", "callbacks.neuron_dynamics.every_n_steps"),
        ("callbacks.toxicity_eval.max_prompts=-1", "callbacks.toxicity_eval.max_prompts"),
        ("callbacks.neuron_dynamics.num_positions=2.5", "callbacks.neuron_dynamics.num_positions"),
        ("probe_set.num_positions=2.5", "probe_set.num_positions"),  # the callback's value copies it: named where it is set
        ("generation.max_new_tokens=0", "generation.max_new_tokens"),
        ("optim.lr=0", "optim.lr"),
        ("loss.beta=-0.1", "loss.beta"),
    ],
)
def test_a_bad_number_fails_before_anything_loads_naming_the_key(tmp_path, override, key):
    cfg = compose_train(SMALL_WORLD + SHORT_RUN + [override], tmp_path / "run")
    with pytest.raises(ConfigError) as info:
        check_numbers(cfg)
    assert f"config key '{key}'" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override",
    [
        "trainer.val_check_interval=0.5",
        "trainer.max_steps=-1",
        "trainer.gradient_clip_val=null",
        "trainer.gradient_clip_val=0",
        "data.val_size=0.25",
        "callbacks.stop_checkpoint.every_n_steps=null",
        "callbacks.neuron_dynamics.max_prompts=null",
    ],
)
def test_good_numbers_pass(tmp_path, override):
    check_numbers(compose_train(SMALL_WORLD + SHORT_RUN + [override], tmp_path / "run"))


def test_top_n_above_the_number_of_neurons_is_refused_before_training(tmp_path, small_world):
    with pytest.raises(ConfigError, match="callbacks.neuron_dynamics.top_n.*more than the model's 256 MLP neurons"):
        run(tmp_path / "run", "callbacks.neuron_dynamics.top_n=1000")
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))


@pytest.mark.parametrize(
    "override, key",
    [
        ("+unknown.key=1", "unknown.key"),
        ("+optim.foo=1", "optim.foo"),
        ("+seedd=3", "seedd"),
        ("+world.sed=2", "world.sed"),
    ],
)
def test_an_added_key_that_nothing_reads_is_refused(tmp_path, override, key):
    cfg = compose_train(SMALL_WORLD + SHORT_RUN + [override], tmp_path / "run")
    with pytest.raises(ConfigError, match=f"config key '{key}': is not a setting of lightning-dpo"):
        check_added_keys(cfg, [override])


def test_a_misspelt_added_key_gets_a_suggestion(tmp_path):
    cfg = compose_train(SMALL_WORLD + SHORT_RUN + ["+world.sed=2"], tmp_path / "run")
    with pytest.raises(ConfigError, match="did you mean world.seed"):
        check_added_keys(cfg, ["+world.sed=2"])


@pytest.mark.parametrize(
    "override",
    [
        "+model.config.n_layer=2",
        "+data.fields.prompt=question",
        "+trainer.profiler=simple",
        "+callbacks.neuron_dynamics.probes.extra.source=raw",
    ],
)
def test_keys_added_where_something_reads_them_pass(tmp_path, override):
    cfg = compose_train(SMALL_WORLD + SHORT_RUN + [override], tmp_path / "run")
    check_added_keys(cfg, [override])


def test_no_validation_pairs_with_validation_prompts_names_data_val_size(tmp_path):
    (tmp_path / "pairs.jsonl").write_text("")
    (tmp_path / "probe.pt").write_text("")
    cfg = compose_train(
        [
            "experiment=none",
            "model=hf",
            "model.name_or_path=x",
            "data=jsonl",
            f"data.path={tmp_path / 'pairs.jsonl'}",
            f"probe.path={tmp_path / 'probe.pt'}",
            "data.val_size=0",
        ],
        tmp_path / "run",
    )
    from lightning_dpo.training.preflight import preflight

    with pytest.raises(
        ConfigError, match="config key 'data.val_size': 0 leaves no validation pairs.*(probe_set|eval_prompts).source=<file>"
    ):
        preflight(cfg)


# -- the best model: every validation competes, the final one included ---------------------------


def _val_losses(run_dir: Path) -> dict[int, float]:
    from lightning_dpo.training.metrics_csv import read_metrics_csv

    return {r["step"]: r["val/loss"] for r in read_metrics_csv(run_dir / "metrics.csv") if "val/loss" in r}


@pytest.mark.parametrize("steps, interval", [(6, 4), (3, 25)])
def test_the_final_validation_competes_for_the_best_model(tmp_path, small_world, steps, interval):
    import json

    run_dir = tmp_path / "run"
    run(run_dir, f"trainer.max_steps={steps}", f"trainer.val_check_interval={interval}", "optim.lr=3e-3")
    losses = _val_losses(run_dir)
    assert steps in losses  # the final step was validated inside the run
    best = json.loads((run_dir / "hf_model_best" / "lightning_dpo.json").read_text())
    assert best["step"] == min(losses, key=losses.get) and best["value"] == pytest.approx(min(losses.values()))
    assert [p.name for p in (run_dir / "checkpoints").glob("best-*.ckpt")] == [f"best-step_{best['step']:07d}.ckpt"]


def test_every_output_of_a_run_gets_the_permissions_of_a_plain_write(tmp_path, small_world):
    """safetensors and save_pretrained create files 0600; a colleague must read the run as the umask allows."""
    import os

    old = os.umask(0o022)
    try:
        run(tmp_path / "run", "trainer.max_steps=2", "trainer.val_check_interval=2")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files) and any(p.parent.name == "hf_model" for p in files)
    wrong = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files if p.stat().st_mode & 0o777 != 0o644}
    assert not wrong
    folders = [p for p in (tmp_path / "run").rglob("*") if p.is_dir()]
    assert all(p.stat().st_mode & 0o777 == 0o755 for p in folders)


def test_a_normal_resume_raises_no_false_alarm(tmp_path, small_world, caplog, recwarn):
    """No 'metrics.csv did not hold every row' (a NaN compared with !=), no Lightning note on checkpoints/."""
    import logging

    from lightning_dpo.utils.quiet import quiet_libraries

    quiet_libraries()  # as every command does at its start (pytest drops filters set while it collects)
    run_dir = tmp_path / "run"
    run(run_dir, "trainer.max_steps=4")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run(run_dir, "trainer.max_steps=8", "ckpt_path=last")
    assert "did not hold every row" not in caplog.text
    assert not [w for w in recwarn if "exists and is not empty" in str(w.message)]


# -- damage: a restart never overwrites a run's outputs, nor changes its settings silently ------------


def test_a_restart_without_checkpoints_archives_every_output_and_checks_the_settings(tmp_path, small_world):
    import json
    import shutil

    run_dir = tmp_path / "run"
    run(run_dir, "trainer.max_steps=2", "trainer.val_check_interval=2")
    shutil.rmtree(run_dir / "checkpoints")
    before = {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"loss.beta: 0.1 -> 0.5.*allow_changes=\[loss.beta\]"):
        run(run_dir, "trainer.max_steps=2", "trainer.val_check_interval=2", "ckpt_path=last", "loss.beta=0.5")
    after = {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before  # refused: nothing changed
    run(run_dir, "trainer.max_steps=2", "trainer.val_check_interval=2", "ckpt_path=last")  # same settings: restarts
    [archive] = list((run_dir / "previous").iterdir())
    for name in (
        "hf_model_best",
        "hf_model",
        "probes",
        "probe.safetensors",
        ".hydra",
        "dynamics",
        "metrics.csv",
        "status.json",
        "train.log",
    ):
        assert (archive / name).exists(), name
    assert (archive / ".hydra" / "config.yaml").read_bytes() == before[".hydra/config.yaml"]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"


# -- disk full, unusable directories -------------------------------------------------------------------


def test_a_checkpoint_that_hits_a_full_disk_fails_in_one_line_and_the_status_says_failed(tmp_path, small_world, monkeypatch):
    import json

    import torch

    from lightning_dpo.utils.errors import OutputError

    run_dir = tmp_path / "run"

    def full_disk(obj, target, *args, **kwargs):  # what torch.save raises when the disk fills up
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr("lightning_dpo.utils.io._no_space", lambda folder, margin=0: True)
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OutputError) as info:
        run(run_dir, "trainer.max_steps=2", "trainer.val_check_interval=2")
    assert "no space left on device" in str(info.value) and "last.ckpt" in str(info.value) and "\n" not in str(info.value)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "no space left" in status["error"]


def _mount_tmpfs(path: Path, size: str) -> bool:
    import subprocess

    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode == 0


def test_a_really_full_disk_still_records_the_failure(tmp_path, small_world):
    """On a tmpfs of 600 kB the run fills the disk; status.json must still say failed (its reserved bytes)."""
    import json
    import subprocess

    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "600k"):
        pytest.skip("cannot mount a small tmpfs here (needs root); the full-disk path is also tested with a simulated disk")
    try:
        from lightning_dpo.utils.errors import OutputError

        with pytest.raises(OutputError, match="no space left on device"):
            run(disk / "run", "trainer.max_steps=4", "trainer.val_check_interval=2")
        status = json.loads((disk / "run" / "status.json").read_text())
        assert status["status"] == "failed" and "no space left" in status["error"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.parametrize("make", ["inside a file", "under /proc"])
def test_an_unusable_run_directory_is_one_line_and_creates_nothing(tmp_path, make):
    from lightning_dpo.cli import directory_problem

    if make == "inside a file":
        (tmp_path / "afile").write_text("x")
        target = tmp_path / "afile" / "run"
    else:
        target = Path("/proc/lightning_dpo_test/run")
    problem = directory_problem(target)
    assert problem and "\n" not in problem
    assert not target.exists() and set(tmp_path.iterdir()) <= {tmp_path / "afile"}
    assert directory_problem(tmp_path / "new" / "deep") is None and not (tmp_path / "new").exists()


def test_the_command_line_refuses_an_unusable_run_directory_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "afile").write_text("x")
    result = subprocess.run(
        [sys.executable, "-m", "lightning_dpo.train", f"hydra.run.dir={tmp_path / 'afile' / 'run'}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=dict(os.environ),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: config key 'hydra.run.dir': cannot use")
    assert "Traceback" not in result.stderr and "is a file" in result.stderr


# -- errors that name the right thing ------------------------------------------------------------------


def test_a_truncated_weights_file_is_named(tmp_path):
    from helpers.models import build_tiny, tiny_gpt2_config
    from lightning_dpo.model.loading import ModelLoadError, load_causal_lm

    build_tiny(tiny_gpt2_config()).save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError) as info:
        load_causal_lm(str(tmp_path / "model"))
    assert f"{weights} is damaged or truncated" in str(info.value) and "\n" not in str(info.value)


def test_a_config_override_that_changes_the_weights_shapes_is_one_line(tmp_path):
    from helpers.models import build_tiny, tiny_gpt2_config
    from lightning_dpo.model.loading import load_causal_lm

    build_tiny(tiny_gpt2_config()).save_pretrained(tmp_path / "model")
    with pytest.raises(ConfigError, match=r"config key 'model.config.n_embd': 32 -> 64 changes the shape") as info:
        load_causal_lm(str(tmp_path / "model"), config={"n_embd": 64})
    assert "\n" not in str(info.value)
    assert load_causal_lm(str(tmp_path / "model"), config={"n_embd": 32}) is not None  # an unchanged value is fine


def test_a_prompt_file_without_the_field_names_prompts_field(tmp_path):
    from lightning_dpo.data.texts import load_texts
    from lightning_dpo.utils.errors import DataError

    (tmp_path / "prompts.jsonl").write_text('{"prompt": "Hello there"}\n')
    with pytest.raises(
        DataError, match=r"prompts.jsonl:1: has no text field 'text' \(config key 'prompts.field'; the row's keys: \['prompt'\]\)"
    ):
        load_texts(str(tmp_path / "prompts.jsonl"), field="text", key="prompts.source")


def test_loss_type_dpo_is_sigmoid_and_a_typo_gets_a_hint():
    from lightning_dpo.model import PreferenceLoss

    assert PreferenceLoss(type="dpo").types == ["sigmoid"]
    with pytest.raises(ConfigError, match="unknown loss 'sigmod'; did you mean 'sigmoid'"):
        PreferenceLoss(type="sigmod")


# -- compare -------------------------------------------------------------------------------------------


def test_compare_on_one_run_or_a_missing_path_says_so_and_writes_nothing(tmp_path, small_world):
    from lightning_dpo.compare import main

    run_dir = tmp_path / "run"
    run(run_dir, "trainer.max_steps=2", "trainer.val_check_interval=2")
    before = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*"))
    assert main([str(run_dir)]) == 2 and main([str(tmp_path / "nowhere")]) == 2
    assert sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")) == before


def test_compare_lists_a_job_that_multirun_yaml_planned_but_is_gone(tmp_path):
    from omegaconf import OmegaConf

    from lightning_dpo.compare import compare

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    OmegaConf.save(
        {
            "hydra": {
                "sweep": {"dir": str(sweep), "subdir": "${safe_dirname:${hydra.job.override_dirname}}"},
                "overrides": {"task": ["loss.beta=0.1,0.5", "trainer.max_steps=4"]},
                "job": {"config": {"override_dirname": {"kv_sep": "=", "item_sep": ",", "exclude_keys": ["trainer.max_steps"]}}},
            }
        },
        sweep / "multirun.yaml",
    )
    job = sweep / "loss.beta=0.1"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("loss:\n  beta: 0.1\n  type: sigmoid\noptim:\n  lr: 1e-6\n")
    (job / "status.json").write_text('{"status": "completed"}')
    table = {t["job"]: t for t in compare(sweep)}
    assert table["loss.beta=0.1"]["status"] == "completed"
    assert table["loss.beta=0.5"]["status"] == "missing" and "multirun.yaml" in table["loss.beta=0.5"]["error"]


# -- the resume command ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/tmp/a\\b", "/tmp/back\\slash\\", "/tmp/x\\'y"])
def test_the_resume_command_gives_hydra_a_directory_with_backslashes_exactly(path):
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from lightning_dpo.training.plan import resume_command

    argv = shlex.split(resume_command(Path(path), ["loss.beta=0.1"], options=[]))
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(argv[3:])}
    assert parsed["hydra.run.dir"] == path


def test_the_resume_command_keeps_the_config_dir(tmp_path):
    import shlex

    from lightning_dpo.training.plan import resume_command

    command = resume_command(tmp_path / "run", ["loss.beta=0.1"], options=["--config-dir", shlex.quote("/my configs")])
    assert shlex.split(command)[3:5] == ["--config-dir", "/my configs"]


def test_an_explicit_offline_wandb_still_says_how_to_upload(caplog, monkeypatch):
    import logging

    from lightning_dpo.training import wandb_logger

    monkeypatch.setattr(wandb_logger, "_warned", False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with caplog.at_level(logging.WARNING):
        assert wandb_logger.choose_wandb_mode(None, sync_hint="wandb sync /runs/x/wandb/offline-run-*") == "offline"
    assert "Upload later with: wandb sync /runs/x/wandb/offline-run-*" in caplog.text


# -- analyze and evaluate write under the run they read ---------------------------------------------------


def test_evaluate_on_a_run_writes_under_it_and_the_report_links_it(tmp_path, small_world):
    from helpers.configs import compose_command
    from lightning_dpo.evaluate import run as evaluate

    run_dir = tmp_path / "run"
    run(run_dir, "trainer.max_steps=2", "trainer.val_check_interval=2", "report=true")
    evaluate(compose_command("evaluate", [f"model.name_or_path={run_dir}", "generation.batch_size=8"]))
    [folder] = list((run_dir / "evaluation").iterdir())
    assert (folder / "eval.json").is_file() and (folder / "config.yaml").is_file()
    assert f"evaluation/{folder.name}/eval.json" in (run_dir / "report.html").read_text()
