"""The package as installed, and the configs as code reads them."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from hydra.utils import get_object
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def _yaml_nodes_with_targets():
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        for key, node in _walk(OmegaConf.to_container(OmegaConf.load(path), resolve=False), ""):
            if isinstance(node, dict) and "_target_" in node:
                yield f"{path.relative_to(ROOT)}:{key or '<root>'}", node


def _walk(value, prefix):
    yield prefix, value
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _walk(inner, f"{prefix}.{key}" if prefix else str(key))


@pytest.mark.parametrize("where, node", list(_yaml_nodes_with_targets()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_default_has_one_home_the_signature(where, node):
    """A YAML key whose value is the default of the class (or function) it builds says `${default:}`
    and gets it from the signature: no default is written twice. `${default:}` resolves to exactly
    that default, and only where the signature has one."""
    from lightning_dpo.utils.config import register_resolvers

    if node["_target_"] == "???" or not node["_target_"].startswith("lightning_dpo."):
        return  # the user's own class (conf/*/custom.yaml); third-party classes: their defaults are theirs
    register_resolvers()
    parameters = inspect.signature(get_object(node["_target_"])).parameters
    repeated, resolved = {}, OmegaConf.create(node)
    for key, value in node.items():
        if key.startswith("_") or key not in parameters:
            continue
        default = parameters[key].default
        default = list(default) if isinstance(default, tuple) else default
        if value == "${default:}":
            assert default is not inspect.Parameter.empty, f"{where}.{key}: ${{default:}} but no default in the signature"
            got = resolved[key]
            assert (OmegaConf.to_container(got) if OmegaConf.is_config(got) else got) == default, f"{where}.{key}"
        elif default is not inspect.Parameter.empty and value == default and type(value) is type(default) and value != {}:
            repeated[key] = value
    assert not repeated, f"{where}: the signature's defaults written again in YAML (write ${{default:}}): {repeated}"


def test_a_default_where_the_signature_has_none_names_the_key():
    from lightning_dpo.utils.config import register_resolvers

    register_resolvers()
    cfg = OmegaConf.create({"loss": {"_target_": "lightning_dpo.model.PreferenceLoss", "nonsense": "${default:}"}, "x": "${default:}"})
    with pytest.raises(Exception, match=r"config key 'loss.nonsense'.*PreferenceLoss has no default for 'nonsense'"):
        _ = cfg.loss.nonsense
    with pytest.raises(Exception, match=r"its node has no _target_"):
        _ = cfg.x


def test_the_package_list_names_every_package_of_the_tree():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = {"lightning_dpo.callbacks", "lightning_dpo.conf"}
    for init in (ROOT / "lightning_dpo").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(ROOT).parts))
    assert listed == found and mapping == {
        "lightning_dpo": "lightning_dpo",
        "lightning_dpo.callbacks": "callbacks",
        "lightning_dpo.conf": "conf",
    }


@pytest.mark.slow
def test_an_installed_wheel_has_no_top_level_callbacks_or_conf(tmp_path):
    """Built and installed like a user's `pip install`: the folders callbacks/ and conf/ are
    lightning_dpo.callbacks and lightning_dpo.conf, never top-level packages that would shadow a
    user's own `callbacks` or `conf` (or overwrite another distribution's files)."""
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheel_dir.glob("lightning_dpo-*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"lightning_dpo"}  # one top-level package
    assert "lightning_dpo/conf/train.yaml" in names and "lightning_dpo/conf/prompts/toy.yaml" in names
    assert "lightning_dpo/callbacks/neuron_dynamics.py" in names
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    check = (
        "import importlib.util as u, sys; assert u.find_spec('callbacks') is None and u.find_spec('conf') is None; "
        "import lightning_dpo.callbacks, lightning_dpo.conf; from importlib.resources import files; "
        "assert (files('lightning_dpo.conf') / 'train.yaml').is_file(); print(lightning_dpo.callbacks.__file__)"
    )
    env = dict(os.environ, PYTHONPATH=str(site))
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith(str(site))
