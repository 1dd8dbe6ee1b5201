"""Hydra/OmegaConf glue: custom resolvers and instantiation with errors that name the config key."""

from __future__ import annotations

import difflib
import inspect
import re
from typing import Any, Callable

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_dpo.utils.errors import ConfigError, LightningDPOError

_WORLDS: dict[str, Any] = {}


def _toy_world_path(attribute: str, *, _root_: DictConfig) -> str:
    """`${toy_world:pairs}` -> the path of that file in the (lazily built, cached) toy world.

    The world is built only when a config value that points into it is actually used, so a run
    on your own data never builds it.
    """
    from lightning_dpo.toy import ToyWorld

    if _root_.get("world") is None:
        raise ConfigError("world", f"${{toy_world:{attribute}}} is used but the config has no `world` (set world=toy)")
    params = OmegaConf.to_container(_root_.world, resolve=True)
    key = repr(sorted(params.items()))
    if key not in _WORLDS:
        _WORLDS[key] = ToyWorld(**params).build()
    world = _WORLDS[key]
    if not hasattr(world, attribute):
        raise ConfigError("world", f"the toy world has no {attribute!r}")
    return str(getattr(world, attribute))


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("toy_world"):
        OmegaConf.register_new_resolver("toy_world", _toy_world_path)


def _unknown_key_error(key: str, node: DictConfig, exc: TypeError) -> ConfigError | None:
    match = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
    if not match or "_target_" not in node:
        return None
    bad = match.group(1)
    try:
        target: Callable = get_object(node._target_)
        accepted = [p for p in inspect.signature(target).parameters if p not in ("self", "args", "kwargs")]
    except Exception:
        accepted = []
    hint = difflib.get_close_matches(bad, accepted, n=1)
    suggestion = f"; did you mean {key}.{hint[0]}?" if hint else ""
    return ConfigError(f"{key}.{bad}", f"unknown key{suggestion} accepted keys: {accepted}")


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, but a user error surfaces as itself, naming `key`."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, LightningDPOError):
            raise cause from None
        if isinstance(cause, TypeError):
            unknown = _unknown_key_error(key, node, cause)
            if unknown is not None:
                raise unknown from None
        raise ConfigError(key, f"could not build it: {cause or exc}") from exc
