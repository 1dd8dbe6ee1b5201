"""Checks of a train config that need no model: they run before anything loads or is written.

- every `???` value is set;
- every number the trainer, the data and the callbacks read has the right type and range
  (`NUMBER_RULES`): a fractional `trainer.max_steps`, a negative `accumulate_grad_batches` or
  `gradient_clip_val`, a NaN, `data.batch_size=four` each fail here naming the key, instead of
  training wrongly in silence or failing deep inside Lightning;
- a key added with `+` that nothing reads (`+unknown.key=1`, `+optim.foo=1`) is refused: only keys
  under an instantiated node (whose constructor rejects unknown arguments) or a free-form mapping
  may be added;
- the files the run reads exist; the probe set has prompts to measure on;
- a deprecated group choice or key still works, with a warning naming what replaces it (`DEPRECATED_GROUPS`,
  `DEPRECATED_KEYS`).
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_dpo.model.packaged import check_packaged_model
from lightning_dpo.neurons.probe import is_probe_file
from lightning_dpo.utils.config import PLAIN_COPY
from lightning_dpo.utils.errors import ConfigError, DataError


@dataclass(frozen=True)
class Rule:
    """A number's type and range: integers (`integer`), `low` (inclusive), `high` (inclusive),
    extra accepted values (`also`, e.g. -1 for "no limit"), and whether null is accepted."""

    integer: bool = True
    low: float | None = None
    high: float | None = None
    also: tuple[Any, ...] = ()
    nullable: bool = False
    fraction: bool = False  # an integer, or a float in (0, 1] (val_check_interval, val_size)

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        bounds = [f">= {self.low:g}"] if self.low is not None else []
        bounds += [f"<= {self.high:g}"] if self.high is not None else []
        text = f"{kind} {' and '.join(bounds)}".strip()
        if self.fraction:
            text += ", or a fraction in (0, 1]"
        if self.also:
            text += ", or " + " or ".join(map(str, self.also))
        return text + (", or null" if self.nullable else "")

    def check(self, key: str, value: Any) -> None:
        if value is None:
            if self.nullable:
                return
            raise ConfigError(key, f"must be {self.describe()}, got null")
        if value in self.also and not isinstance(value, bool):
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"must be {self.describe()}, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(key, f"must be {self.describe()}, got {value}")
        if self.fraction and isinstance(value, float) and not value.is_integer():
            if 0 < value <= 1:
                return
            raise ConfigError(key, f"must be {self.describe()}, got {value}")
        if self.integer and isinstance(value, float) and not value.is_integer():
            raise ConfigError(key, f"must be {self.describe()}, got {value}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ConfigError(key, f"must be {self.describe()}, got {value}")


STEPS = Rule(low=1, also=(-1,))
POSITIVE = Rule(low=1)
POSITIVE_OR_NULL = Rule(low=1, nullable=True)
NON_NEGATIVE_NUMBER_OR_NULL = Rule(integer=False, low=0, nullable=True)

# key -> rule; a `*` stands for any callback's name (the rule applies where the key exists)
NUMBER_RULES: dict[str, Rule] = {
    "seed": Rule(low=0),
    "trainer.max_steps": STEPS,
    "trainer.max_epochs": Rule(low=1, also=(-1,), nullable=True),
    "trainer.val_check_interval": Rule(low=1, fraction=True, nullable=True),
    "trainer.check_val_every_n_epoch": POSITIVE_OR_NULL,
    "trainer.log_every_n_steps": POSITIVE,
    "trainer.accumulate_grad_batches": POSITIVE,
    "trainer.gradient_clip_val": NON_NEGATIVE_NUMBER_OR_NULL,
    "trainer.num_sanity_val_steps": Rule(low=0, also=(-1,)),
    "trainer.num_nodes": POSITIVE,
    "data.batch_size": POSITIVE,
    "data.eval_batch_size": POSITIVE,
    "data.max_prompt_length": POSITIVE,
    "data.max_completion_length": POSITIVE,
    "data.val_size": Rule(low=0, fraction=True),
    "data.num_workers": Rule(low=0),
    "data.pad_to_multiple_of": POSITIVE_OR_NULL,
    "optim.lr": Rule(integer=False, low=0),
    "optim.warmup_steps": Rule(low=0, nullable=True),
    "optim.warmup_fraction": Rule(integer=False, low=0, high=1, nullable=True),
    "optim.weight_decay": Rule(integer=False, low=0),
    "loss.beta": Rule(integer=False, low=0),
    "callbacks.*.every_n_steps": POSITIVE_OR_NULL,
    "callbacks.*.max_prompts": POSITIVE_OR_NULL,
    "callbacks.*.max_prompt_tokens": POSITIVE_OR_NULL,
    "callbacks.*.num_positions": POSITIVE,
    "callbacks.*.max_new_tokens": POSITIVE,
    "callbacks.*.batch_size": POSITIVE,
    "callbacks.*.top_n": POSITIVE,
    "callbacks.*.null_directions": Rule(low=0),
    "callbacks.*.buckets": Rule(low=2),
    "callbacks.*.perplexity_window": Rule(low=2),
    "callbacks.*.log_every_percent": Rule(low=1, high=100),
    "callbacks.*.patience": Rule(low=0),
}
# numbers that must be strictly positive, not just >= their integer bound
STRICTLY_POSITIVE = ("optim.lr", "loss.beta")

# where a `+key=value` may add a key: an instantiated node's constructor rejects unknown arguments,
# and these mappings are free-form by design
FREE_FORM = (
    r"model\.config",
    r"data\.fields",
    r"callbacks\.[^.]+\.probes",
    r"callbacks\.[^.]+\.prompts\.filter",
    r"prompts\.filter",
    r"probe_set\.filter",
    r"eval_prompts\.filter",
    r"hydra",
    r"model\.lora",
)


def _expand(cfg: DictConfig, pattern: str) -> list[str]:
    if ".*." not in pattern:
        return [pattern]
    head, tail = pattern.split(".*.", 1)
    node = OmegaConf.select(cfg, head)
    if not isinstance(node, DictConfig):
        return []
    return [f"{head}.{name!s}.{tail}" for name, inner in node.items() if isinstance(inner, DictConfig) and "_target_" in inner]


def value_home(cfg: DictConfig, key: str) -> str:
    """The key a user sets for `key`'s value: a plain copy (`${probe_set.num_positions}`) is named by
    the key it copies, followed to the end, so that an error names what to change."""
    for _ in range(8):  # a chain of copies is short; a cycle fails in OmegaConf first
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        raw = OmegaConf.to_container(node, resolve=False).get(leaf) if isinstance(node, DictConfig) else None
        copy = PLAIN_COPY.fullmatch(raw) if isinstance(raw, str) else None
        if copy is None:
            return key
        key = copy.group(1)
    return key


def check_numbers(cfg: DictConfig, rules: dict[str, Rule] = NUMBER_RULES) -> None:
    """Every number named in `rules` that the config holds has the right type and range."""
    for pattern, rule in rules.items():
        for key in _expand(cfg, pattern):
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if not isinstance(node, DictConfig) or leaf not in node:
                continue
            value = OmegaConf.select(cfg, key)
            rule.check(value_home(cfg, key), value)
            if pattern in STRICTLY_POSITIVE and value <= 0:
                raise ConfigError(value_home(cfg, key), f"must be > 0, got {value}")


# group -> what replaces choosing it on the command line (still read for one release): train and analyze
DEPRECATED_GROUPS = {
    "prompts": "probe_set={choice} eval_prompts={choice} (the neuron dynamics' prompts and the evaluation's "
    "are separate groups now; prompts={choice} still sets both in this release)",
}
# evaluate has one prompt set, the evaluation's
EVALUATE_DEPRECATED_GROUPS = {"prompts": "eval_prompts={choice} (prompts={choice} still sets it in this release)"}


def warn_deprecated_groups(overrides: Sequence[str], replacements: Mapping[str, str] = DEPRECATED_GROUPS) -> None:
    """A FutureWarning (shown to users by default) for each deprecated group chosen on the command line."""
    for override in overrides:
        group, _, choice = override.partition("=")
        if group in replacements and choice:
            warnings.warn(f"'{override}' is deprecated: use {replacements[group].format(choice=choice)}", FutureWarning, stacklevel=2)


# key -> the one key for its concept (the old one still overrides it for one release)
DEPRECATED_KEYS = {
    "callbacks.neuron_dynamics.max_prompt_tokens": "probe_set.max_prompt_tokens",
    "callbacks.neuron_dynamics.prepend_bos": "probe_set.prepend_bos",
    "callbacks.neuron_dynamics.num_positions": "probe_set.num_positions",
    "callbacks.toxicity_eval.max_prompt_tokens": "generation.max_prompt_tokens",
    "callbacks.toxicity_eval.max_new_tokens": "generation.max_new_tokens",
    # the optimizer's arguments are wired from optim's own keys (checked, logged and swept there)
    "optim.optimizer.lr": "optim.lr",
    "optim.optimizer.weight_decay": "optim.weight_decay",
}


def warn_deprecated_keys(overrides: Sequence[str]) -> None:
    """A FutureWarning for each deprecated key set on the command line, naming the key that replaces it."""
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key in DEPRECATED_KEYS:
            warnings.warn(
                f"'{override}' is deprecated: use {DEPRECATED_KEYS[key]}={value} (one key per setting; "
                "the old key still sets it in this release)",
                FutureWarning,
                stacklevel=2,
            )


def check_added_keys(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """A key added with `+` (or `++`) must be one something reads (see the module docstring)."""
    for override in overrides:
        if not override.startswith("+") or "=" not in override:
            continue
        key = override.lstrip("+").split("=", 1)[0].strip()
        if any(re.match(rf"^{pattern}(\.|$)", key) for pattern in FREE_FORM):
            continue
        parts = key.split(".")
        read = False
        for depth in range(1, len(parts)):
            node = OmegaConf.select(cfg, ".".join(parts[:depth]))
            if isinstance(node, DictConfig) and "_target_" in node:
                read = True  # its constructor rejects an unknown argument, naming it
                break
        value = OmegaConf.select(cfg, key)
        if isinstance(value, DictConfig) and "_target_" in value and len(parts) == 2:
            read = True  # a whole new callback or logger (`+callbacks.mine={_target_: ...}`)
        if read:
            continue
        parent = ".".join(parts[:-1])
        siblings = OmegaConf.select(cfg, parent) if parent else cfg
        known = [str(k) for k in (siblings.keys() if isinstance(siblings, DictConfig) else []) if k != parts[-1]]
        hint = difflib.get_close_matches(parts[-1], known, n=1)
        suggestion = f"; did you mean {(parent + '.') if parent else ''}{hint[0]}?" if hint else ""
        raise ConfigError(key, f"is not a setting of lightning-dpo (added with '{override}'), so nothing would read it{suggestion}")


def preflight(cfg: DictConfig, built_on_demand: Sequence[Path | None] = (), overrides: Sequence[str] = ()) -> None:
    """Every check that needs no model (module docstring); files under `built_on_demand` (the demo
    world, the real-model assets) are built after these checks."""

    def absent(path: Path) -> bool:
        return not path.exists() and not any(folder is not None and path.is_relative_to(folder) for folder in built_on_demand)

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(missing[0], f"is required but not set (all missing: {', '.join(missing)})")
    check_packaged_model(OmegaConf.select(cfg, "model.name_or_path"))
    check_added_keys(cfg, overrides)
    warn_deprecated_groups(overrides)
    warn_deprecated_keys(overrides)
    check_numbers(cfg)
    path = cfg.data.get("path")
    if path:
        data_path = Path(path).expanduser()
        if absent(data_path):
            raise DataError(str(path), "file not found (config key 'data.path')")
        if data_path.exists() and not data_path.is_file():
            raise DataError(str(path), "is not a file (config key 'data.path' names one JSONL/JSON/CSV/Parquet file of pairs)")
    _check_validation_prompts(cfg)
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None or "_target_" not in node or "probe" not in node:
            continue
        named = {f"callbacks.{name}.probes.{k}": v for k, v in (node.get("probes") or {}).items()} or {"probe": cfg.get("probe") or {}}
        for key, probe in named.items():
            if not is_probe_file(probe):
                continue
            if not probe.get("path"):
                raise ConfigError(
                    f"{key}.path",
                    "the neuron dynamics need a probe: probe.path=<probe file> (e.g. Lee et al.'s "
                    "probe.pt), or probe=train probe.data=<labelled texts>",
                )
            if absent(Path(probe.path).expanduser()):
                raise DataError(str(probe.path), f"probe file not found (config key '{key}.path')")


PROMPT_GROUPS = {"neuron_dynamics": "probe_set", "toxicity_eval": "eval_prompts"}  # the group each callback's prompts come from


def _check_validation_prompts(cfg: DictConfig) -> None:
    """`data.val_size=0` leaves no validation pairs, which the measurements' default prompts are."""
    if OmegaConf.select(cfg, "data.val_size") != 0:
        return
    for name, node in (cfg.get("callbacks") or {}).items():
        if isinstance(node, DictConfig) and "_target_" in node and OmegaConf.select(node, "prompts.source") == "validation":
            raise ConfigError(
                "data.val_size",
                f"0 leaves no validation pairs, but callbacks.{name} measures on their prompts "
                f"(source: validation): keep some (data.val_size > 0), or give a prompt file ({PROMPT_GROUPS.get(name, 'prompts')}.source=<file>)",
            )


# (config keys whose sum is one sequence's length) for every sequence training and measuring build
SEQUENCE_LENGTHS = (
    ("data.max_prompt_length", "data.max_completion_length"),
    ("callbacks.neuron_dynamics.max_prompt_tokens", "callbacks.neuron_dynamics.num_positions"),
    ("callbacks.toxicity_eval.max_prompt_tokens", "callbacks.toxicity_eval.max_new_tokens"),
)


def check_lengths(cfg: DictConfig, limit: int | None) -> None:
    """Every sequence fits the model's positions (GPT-2's position table would fail mid-training
    with an IndexError at whichever step a long row comes up)."""
    if not limit:
        return
    for keys in SEQUENCE_LENGTHS:
        values = [OmegaConf.select(cfg, k) for k in keys]
        if any(v is None for v in values):
            continue
        if sum(values) > limit:
            homes = [value_home(cfg, k) for k in keys]
            listing = " + ".join(f"{k}={v}" for k, v in zip(homes, values))
            raise ConfigError(homes[0], f"{listing} = {sum(values)} tokens, but the model has positions for {limit}: lower them")
