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

@pytest.mark.parametrize("override, key", [
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
    ("optim.lr=0", "optim.lr"),
    ("loss.beta=-0.1", "loss.beta"),
])
def test_a_bad_number_fails_before_anything_loads_naming_the_key(tmp_path, override, key):
    cfg = compose_train(SMALL_WORLD + SHORT_RUN + [override], tmp_path / "run")
    with pytest.raises(ConfigError) as info:
        check_numbers(cfg)
    assert f"config key '{key}'" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("override", [
    "trainer.val_check_interval=0.5", "trainer.max_steps=-1", "trainer.gradient_clip_val=null", "trainer.gradient_clip_val=0",
    "data.val_size=0.25", "callbacks.stop_checkpoint.every_n_steps=null", "callbacks.neuron_dynamics.max_prompts=null",
])
def test_good_numbers_pass(tmp_path, override):
    check_numbers(compose_train(SMALL_WORLD + SHORT_RUN + [override], tmp_path / "run"))


def test_top_n_above_the_number_of_neurons_is_refused_before_training(tmp_path, small_world):
    with pytest.raises(ConfigError, match="callbacks.neuron_dynamics.top_n.*more than the model's 256 MLP neurons"):
        run(tmp_path / "run", "callbacks.neuron_dynamics.top_n=1000")
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))


@pytest.mark.parametrize("override, key", [
    ("+unknown.key=1", "unknown.key"), ("+optim.foo=1", "optim.foo"), ("+seedd=3", "seedd"), ("+world.sed=2", "world.sed"),
])
def test_an_added_key_that_nothing_reads_is_refused(tmp_path, override, key):
    cfg = compose_train(SMALL_WORLD + SHORT_RUN + [override], tmp_path / "run")
    with pytest.raises(ConfigError, match=f"config key '{key}': is not a setting of lightning-dpo"):
        check_added_keys(cfg, [override])


def test_a_misspelt_added_key_gets_a_suggestion(tmp_path):
    cfg = compose_train(SMALL_WORLD + SHORT_RUN + ["+world.sed=2"], tmp_path / "run")
    with pytest.raises(ConfigError, match="did you mean world.seed"):
        check_added_keys(cfg, ["+world.sed=2"])


@pytest.mark.parametrize("override", [
    "+model.config.n_layer=2", "+data.fields.prompt=question", "+trainer.profiler=simple",
    "+callbacks.neuron_dynamics.probes.extra.source=raw",
])
def test_keys_added_where_something_reads_them_pass(tmp_path, override):
    cfg = compose_train(SMALL_WORLD + SHORT_RUN + [override], tmp_path / "run")
    check_added_keys(cfg, [override])


def test_no_validation_pairs_with_validation_prompts_names_data_val_size(tmp_path):
    (tmp_path / "pairs.jsonl").write_text("")
    (tmp_path / "probe.pt").write_text("")
    cfg = compose_train(["model=hf", "model.name_or_path=x", "data=jsonl", f"data.path={tmp_path / 'pairs.jsonl'}",
                         f"probe.path={tmp_path / 'probe.pt'}", "data.val_size=0"], tmp_path / "run")
    from lightning_dpo.training.preflight import preflight

    with pytest.raises(ConfigError, match="config key 'data.val_size': 0 leaves no validation pairs.*prompts.source=<file>"):
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
