"""Files a user hands us never run code, and config values used as file names stay where they belong."""

import os
from pathlib import Path

import pytest
import torch

from helpers.configs import SHORT_RUN, SMALL_WORLD, compose_command, compose_train
from lightning_dpo.training.checkpoints import AtomicCheckpointIO, check_checkpoint, safe_load
from lightning_dpo.utils.config import safe_dirname
from lightning_dpo.utils.errors import CheckpointError, ConfigError
from lightning_dpo.utils.io import check_file_name

pytestmark = pytest.mark.unit  # the unit tier: `pytest -m unit`, under a minute


class _Payload:
    """Unpickling this object would run `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _planted_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "global_step": 3, "hyper_parameters": {"x": _Payload(marker)}}, path)
    return path


def test_a_pickled_payload_is_refused_by_every_reader_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = _planted_checkpoint(tmp_path / "evil.ckpt", marker)
    for read in (safe_load, check_checkpoint, lambda p: AtomicCheckpointIO().load_checkpoint(p, weights_only=False)):
        with pytest.raises(CheckpointError) as info:
            read(ckpt)
        message = str(info.value)
        assert str(ckpt) in message and "posix.system" in message and "\n" not in message
    assert not marker.exists()


def test_training_refuses_a_planted_last_checkpoint_and_a_checkpoint_file(tmp_path, small_world):
    from lightning_dpo.train import train

    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    _planted_checkpoint(run_dir / "checkpoints" / "last.ckpt", marker)
    with pytest.raises(CheckpointError, match="refused"):
        train(compose_train(SMALL_WORLD + SHORT_RUN + ["ckpt_path=last"], run_dir))
    evil = _planted_checkpoint(tmp_path / "elsewhere" / "model.ckpt", marker)
    with pytest.raises(CheckpointError, match="refused"):
        train(compose_train(SMALL_WORLD + SHORT_RUN + [f"ckpt_path={evil}"], tmp_path / "run2"))
    assert not marker.exists()


def test_evaluate_refuses_a_pickled_checkpoint(tmp_path):
    from lightning_dpo.evaluation.model_source import load_model_and_tokenizer

    marker = tmp_path / "pwned"
    evil = _planted_checkpoint(tmp_path / "model.ckpt", marker)
    with pytest.raises(CheckpointError, match="refused"):
        load_model_and_tokenizer(str(evil))
    assert not marker.exists()


def test_a_checkpoint_of_a_config_built_model_holds_only_plain_values(tmp_path):
    """What the project writes, a safe load reads: hyper-parameters are plain containers, not OmegaConf objects."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lightning_dpo.model import DPOModule

    module = instantiate(
        OmegaConf.create(
            {
                "_target_": "lightning_dpo.model.DPOModule",
                "config": {
                    "model_type": "gpt2",
                    "vocab_size": 96,
                    "n_positions": 64,
                    "n_embd": 32,
                    "n_layer": 2,
                    "n_head": 4,
                    "n_inner": 64,
                    "bos_token_id": 0,
                    "eos_token_id": 0,
                },
            }
        )
    )
    assert isinstance(module, DPOModule) and type(module.hparams["config"]) is dict
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, tmp_path / "m.ckpt")
    assert safe_load(tmp_path / "m.ckpt")["hyper_parameters"]["config"]["n_embd"] == 32


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "a/b", ".hidden", "", "a b", "x" * 101])
def test_a_name_used_as_a_file_name_is_refused_naming_the_key(name):
    with pytest.raises(ConfigError, match="callbacks.neuron_dynamics.probes"):
        check_file_name(name, "callbacks.neuron_dynamics.probes")


@pytest.mark.parametrize("name", ["toxicity", "workplace-2", "sentiment_v1.2", "A9"])
def test_plain_names_are_accepted(name):
    assert check_file_name(name, "probe.name") == name


def test_probe_names_from_the_config_cannot_write_outside_the_run(tmp_path, small_world):
    from omegaconf import open_dict

    from lightning_dpo.train import train

    for bad in ("../../escaped", "/tmp/abs_escape", "nested/name"):  # as a YAML experiment file can name them
        cfg = compose_train(SMALL_WORLD + SHORT_RUN, tmp_path / "run")
        with open_dict(cfg):
            cfg.callbacks.neuron_dynamics.probes = {bad: {"source": "raw", "path": small_world.probe}}
        with pytest.raises(ConfigError, match="used as a file name"):
            train(cfg)
    assert not (tmp_path.parent / "escaped.safetensors").exists() and not Path("/tmp/abs_escape.safetensors").exists()
    assert not list(tmp_path.rglob("*.safetensors"))


def test_a_snapshot_file_with_a_crafted_probe_name_is_refused_by_plot(tmp_path):
    from safetensors.torch import save_file

    from lightning_dpo.dynamics.figures import make_plots

    run = tmp_path / "run" / "dynamics"
    run.mkdir(parents=True)
    z = torch.zeros(2, 3)
    for step in (0, 1):
        save_file(
            {"mean_activation": z.clone(), "value_norm": z + 1, "value_projection": z.clone(), "value_projection.../../../evil": z.clone()},
            str(run / f"step_{step:07d}.safetensors"),
            metadata={"step": str(step)},
        )
    with pytest.raises(ConfigError, match="used as a file name"):
        make_plots(tmp_path / "run")
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("value", ["data.path=../../x", "data.path=/abs/pairs.jsonl,loss.beta=0.1"])
def test_sweep_job_names_never_make_or_climb_folders(value):
    name = safe_dirname(value)
    assert "/" not in name and name not in (".", "..")
    assert safe_dirname(value) == name  # stable: the same sweep command finds the same folder


def test_commands_that_take_a_checkpoint_compose(tmp_path):
    cfg = compose_command("evaluate", [f"model.name_or_path={tmp_path / 'x.ckpt'}"])
    assert str(cfg.model.name_or_path).endswith("x.ckpt")
