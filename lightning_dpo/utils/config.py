"""Hydra/OmegaConf glue: resolvers and instantiation with errors that name the config key.

(The demo world's `${toy_world:...}` resolver lives with the demo: lightning_dpo/toy/config.py.)
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import inspect
import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from lightning_dpo.utils.errors import ConfigError, LightningDPOError

_PLAIN_VALUE = re.compile(r"^[\w./+-]*$")
PLAIN_COPY = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")  # a value that is another key's, by its absolute path: ${prompts.source}


def override_arg(key: str, value: object) -> str:
    """`key=value` as one shell argument that Hydra reads back as exactly `value`.

    A sweep job's directory (`.../loss.beta=0.1,optim.lr=1e-06`) holds `=` and `,`, which Hydra's
    override grammar would parse; such a value is put in Hydra's quotes, and the whole argument in
    the shell's."""
    text = str(value)
    if _PLAIN_VALUE.match(text):
        return shlex.quote(f"{key}={text}")
    quoted = hydra_quote(text)
    argument = f"{key}={quoted}"
    if not re.search(r'["$`\\!]', argument):
        return f'"{argument}"'
    return shlex.quote(argument)


def hydra_quote(text: str) -> str:
    """`text` in Hydra's single quotes. Inside them a backslash is literal except in a run of
    backslashes right before a quote (or the closing quote), where each stands for half as many:
    so exactly those runs are doubled, and a quote gets one more backslash."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text) + "'"


def safe_dirname(name: str, max_length: int = 120) -> str:
    """A job directory name from its overrides: readable, stable (so a job can be found and
    resumed), and short enough for the file system (a long one keeps its start plus a hash)."""
    name = (name or "default").replace("/", "_").replace("\0", "_")  # a value's path separators must not make or climb folders
    if name in (".", ".."):
        name = name.replace(".", "_")
    if len(name) <= max_length:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    return f"{name[: max_length - 11]}-{digest}"


@functools.cache
def _parameters(target: str) -> Mapping[str, inspect.Parameter]:
    """A target's parameters, read once: a config is resolved many times (checks, records, W&B)."""
    return inspect.signature(get_object(target)).parameters


def code_default(*, _parent_: DictConfig, _node_: Any) -> Any:
    """`key: ${default:}` in a node with a `_target_`: that target's default for `key`. Every default
    has one home, the signature of the class or function the config builds; the YAML lists the key
    (with what it means) and takes the value from there."""
    key = str(_node_._key())
    where = _node_._get_full_key(None)
    target = _parent_.get("_target_")
    if not target:
        raise ConfigError(where, "${default:} names a constructor's default, but its node has no _target_")
    try:
        parameter = _parameters(str(target)).get(key)
    except Exception as exc:  # an unimportable target: the error names the key and the target
        raise ConfigError(where, f"${{default:}} could not read the default of {target}: {exc}") from exc
    if parameter is None or parameter.default is inspect.Parameter.empty:
        raise ConfigError(where, f"${{default:}}: {target} has no default for {key!r}; give a value")
    if isinstance(parameter.default, (tuple, list, dict)):  # a container node, as a literal list in YAML would be
        return OmegaConf.create(list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default)
    return parameter.default


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("default"):
        OmegaConf.register_new_resolver("default", code_default)
    if not OmegaConf.has_resolver("safe_dirname"):
        OmegaConf.register_new_resolver("safe_dirname", safe_dirname)
    if not OmegaConf.has_resolver("cuda_available"):  # e.g. fused optimizers, which need CUDA tensors
        OmegaConf.register_new_resolver("cuda_available", lambda: __import__("torch").cuda.is_available())


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


def plain(node: Any) -> dict[str, Any]:
    """A config mapping as a plain, resolved dict (a dict passes through as a copy)."""
    value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    if not isinstance(value, dict):
        raise TypeError(f"expected a mapping, got {type(value).__name__}")
    return dict(value)
