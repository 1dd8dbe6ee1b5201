"""Loading the policy (hub id, local folder or a config for tiny models) and its frozen reference."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from lightning_dpo.utils.errors import ConfigError, LightningDPOError
from lightning_dpo.utils.hub import hub_reachable

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "16": torch.float16,
}


class ModelLoadError(LightningDPOError, OSError):
    pass


def resolve_dtype(name: str | torch.dtype | None, key: str = "model.dtype") -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    if str(name) not in DTYPES:
        raise ConfigError(key, f"unknown dtype {name!r}; accepted: {sorted(set(DTYPES))}")
    return DTYPES[str(name)]


# files that make a folder loadable by from_pretrained, per kind of thing loaded
_FOLDER_FILES = {
    "model config": ("config.json",),
    "model": ("config.json",),
    "tokenizer": ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model"),
}


def _from_pretrained(loader: Any, name_or_path: str, what: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained` for a local folder, a cached hub id, or (when reachable) the hub."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        needed = _FOLDER_FILES.get(what, ())
        if not path.is_dir() or not any((path / f).exists() for f in needed):
            raise ModelLoadError(f"cannot load the {what} from {path}: expected a folder written by save_pretrained "
                                 f"(with {' or '.join(needed)}), which this is not")
        try:
            return loader.from_pretrained(str(path), **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load the {what} from {path}: {exc}") from exc
    try:
        return loader.from_pretrained(name_or_path, local_files_only=True, **kwargs)
    except OSError:
        pass
    if not hub_reachable():
        raise ModelLoadError(
            f"cannot load the {what} {name_or_path!r}: it is not a local folder, not in the Hugging Face "
            "cache, and the hub is unreachable (or HF_HUB_OFFLINE=1). Download it on a machine with "
            "network access (`save_pretrained` to a folder) and pass model.name_or_path=/path/to/folder"
        )
    try:
        return loader.from_pretrained(name_or_path, **kwargs)
    except OSError as exc:
        raise ModelLoadError(f"cannot load the {what} {name_or_path!r} from the hub: {exc}") from exc


def _zero_dropout(config: Any) -> None:
    """Zero every dropout probability in a transformers config (attention, residual, embedding)."""
    for key, value in list(vars(config).items()):
        if isinstance(value, float) and ("dropout" in key or "pdrop" in key):
            setattr(config, key, 0.0)


def disable_dropout(model: nn.Module) -> None:
    """Dropout off in every module: with dropout the step-0 log-ratio is not 0 (TRL issue #744)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    if hasattr(model, "config"):
        _zero_dropout(model.config)


def load_causal_lm(
    name_or_path: str | None = None,
    config: Mapping[str, Any] | None = None,
    dtype: str | torch.dtype | None = "float32",
    disable_dropout_: bool = True,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> nn.Module:
    """A Hugging Face causal LM from a hub id or folder (`name_or_path`) or from a config dict.

    `config` builds a randomly initialised model (tiny test models, GPT-2-medium-shaped benchmarks);
    it must contain `model_type` (e.g. gpt2, llama). With both set, `config` overrides fields of the
    pretrained config (its weights are still loaded).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    torch_dtype = resolve_dtype(dtype)
    extra: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if name_or_path:
        hf_config = _from_pretrained(AutoConfig, name_or_path, "model config", **extra)
        for key, value in (config or {}).items():
            setattr(hf_config, key, value)
    elif config:
        config = dict(config)
        if "model_type" not in config:
            raise ConfigError("model.config", "a config-built model needs model_type (e.g. gpt2, llama)")
        hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
    else:
        raise ConfigError("model.name_or_path", "set a hub id or folder, or model.config for a config-built model")
    if disable_dropout_:
        _zero_dropout(hf_config)
    if attn_implementation:
        hf_config._attn_implementation = attn_implementation
    if name_or_path:
        model = _from_pretrained(AutoModelForCausalLM, name_or_path, "model", config=hf_config, **extra)
    else:
        model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=trust_remote_code)
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    if disable_dropout_:
        disable_dropout(model)
    return model


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer, with pad = EOS where it has none (padding is masked by attention mask, never by id)."""
    from transformers import AutoTokenizer

    if not name_or_path:
        raise ConfigError("model.tokenizer", "a config-built model needs model.tokenizer (a hub id or folder)")
    tokenizer = _from_pretrained(AutoTokenizer, name_or_path, "tokenizer", trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model has positions for (GPT-2 `n_positions`, else `max_position_embeddings`)."""
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if value:
            return int(value)
    return None


def frozen_copy(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """An exact frozen copy: same weights, eval mode, no gradients, optionally another dtype."""
    reference = copy.deepcopy(model)
    if dtype is not None:
        reference = reference.to(dtype)
    reference.requires_grad_(False)
    reference.eval()
    return reference
