"""The demo world's place in the configs: the `${toy_world:<file>}` resolver and building the world on demand.

Only the demo's bundle (experiment=demo, the default: model=toy, data=toy, and the demo's prompts,
probe and scorer) points into the toy world. Commands register the resolver (`register_toy_resolver`)
and call `ensure_toy_world(cfg)`, which builds the world only when the run is the demo, and refuses a
run whose own model or data would silently pick up the demo's assets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_dpo.toy.world import ToyWorld
from lightning_dpo.utils.cache import default_cache_dir
from lightning_dpo.utils.config import PLAIN_COPY, plain
from lightning_dpo.utils.errors import ConfigError


def _world_params(root: DictConfig) -> dict[str, Any]:
    if "world" in root and root.world is not None:
        return plain(root.world)
    # the commands' configs have no `world`: the default world, where training builds it
    return {"dir": str(Path(default_cache_dir()) / "toy_world" / "seed0")}


def _toy_world_path(attribute: str, *, _root_: DictConfig) -> str:
    """`${toy_world:pairs}` -> the path of that file in the toy world.

    Pure (no side effect: OmegaConf also resolves values that an override replaces); the world
    itself is built by `ensure_toy_world` only when the final config uses one of its files.
    """
    world = ToyWorld(**_world_params(_root_))
    if not isinstance(getattr(type(world), attribute, None), property):
        raise ConfigError("world", f"the toy world has no file {attribute!r}")
    return str(getattr(world, attribute))


def toy_world_dir(cfg: DictConfig) -> Path:
    """Where the toy world of `cfg` lives (built there on demand)."""
    return ToyWorld(**_world_params(cfg)).path


def toy_world_keys(cfg: DictConfig) -> list[str]:
    """The keys of `cfg` whose value points into the toy world (its own parameters `world.*` aside)."""
    world = ToyWorld(**_world_params(cfg))
    values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    raw = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    inside = str(world.path)
    found = []

    def walk(prefix: str, value: Any, written: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner, written.get(key) if isinstance(written, dict) else None)
        elif isinstance(value, (list, tuple)):
            for i, inner in enumerate(value):
                walk(f"{prefix}[{i}]", inner, written[i] if isinstance(written, list) and i < len(written) else None)
        elif isinstance(value, str) and (value == inside or value.startswith(inside + os.sep)):
            copy = isinstance(written, str) and PLAIN_COPY.fullmatch(written)  # another key's value (probe_set: same): named there
            if not copy:
                found.append(prefix)

    walk("", {k: v for k, v in values.items() if k != "world"}, raw)
    return found


def ensure_toy_world(cfg: DictConfig, demo_keys: tuple[str, ...] = ()) -> Any:
    """Build the toy world (once; cached on disk) when values of `cfg` point into it.

    With `demo_keys` (training: model.name_or_path and data.path), the world is the demo's only:
    if some values point into it while one of those keys does not (a run on your own model or
    data that kept some of the demo's assets: its prompts, probe, scorer), the run is refused,
    naming those keys, instead of silently measuring your model with the demo's world."""
    keys = toy_world_keys(cfg)
    if not keys:
        return None
    own = [k for k in demo_keys if k not in keys]
    if own:
        leaked = sorted({k.split(".callbacks")[0] for k in keys if not k.startswith("callbacks.")} or set(keys))
        raise ConfigError(
            leaked[0],
            f"{', '.join(leaked)} point into the demo's toy world while {', '.join(own)} "
            f"{'is' if len(own) == 1 else 'are'} your own. A run on your own model and data takes nothing from the demo: "
            "add experiment=none (the demo is the default bundle, experiment=demo) with model=hf data=jsonl "
            "(their defaults measure on your validation pairs and score with profanity_check) and give probe.path "
            "(or set those keys yourself)",
        )
    return ToyWorld(**_world_params(cfg)).build()


def register_toy_resolver() -> None:
    if not OmegaConf.has_resolver("toy_world"):
        OmegaConf.register_new_resolver("toy_world", _toy_world_path)
