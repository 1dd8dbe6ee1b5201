"""Loading the policy (hub id, local folder, GGUF file, or a config for tiny models) and its frozen reference.

GGUF: `model.gguf_file=<file name>` beside `model.name_or_path=<folder>`, or `model.name_or_path`
naming a `.gguf` file itself. transformers dequantizes it (with the `gguf` package, the `real`
extra) into a float model, which takes about 20 s for a 135M-parameter model on two CPU cores; the
result is written once as a plain `save_pretrained` folder under the cache
(`$LIGHTNING_DPO_CACHE/gguf/<checksum of the file>/`, model and tokenizer) and loaded from there
afterwards (about a second). Every command (train: policy and reference; probe, evaluate,
analyze, make_pairs) loads through here, so a GGUF model works wherever a model is named.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_dpo.model.packaged import check_packaged_model
from lightning_dpo.utils.errors import ConfigError, LightningDPOError
from lightning_dpo.utils.hub import hub_reachable

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "16": torch.float16,
}


class ModelLoadError(LightningDPOError, OSError):
    pass


def gguf_source(name_or_path: str | None, gguf_file: str | None = None) -> Path | None:
    """The GGUF file a model setting names (`name_or_path` = a .gguf file, or a folder + `gguf_file`), or None."""
    if gguf_file:
        if not name_or_path:
            raise ConfigError("model.gguf_file", "needs model.name_or_path: the folder that holds the file")
        path = Path(name_or_path).expanduser() / gguf_file
    elif name_or_path and str(name_or_path).lower().endswith(".gguf"):
        path = Path(name_or_path).expanduser()
    else:
        return None
    if not path.is_file():
        check_packaged_model(name_or_path)  # a packaged model whose package is not installed: say how to install it
        raise ModelLoadError(f"GGUF file not found: {path} (config keys 'model.name_or_path' / 'model.gguf_file')")
    return path


def dequantized_folder(gguf: Path, cache_dir: str | Path | None = None) -> Path:
    """A plain float32 `save_pretrained` folder (model and tokenizer) of a GGUF file, made once and cached."""
    import hashlib

    from lightning_dpo.utils.cache import default_cache_dir
    from lightning_dpo.utils.io import atomic_directory

    digest = hashlib.sha256()
    with open(gguf, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    folder = Path(cache_dir or default_cache_dir()) / "gguf" / f"{gguf.stem}-{digest.hexdigest()[:16]}"
    if (folder / "config.json").is_file():
        return folder
    try:
        import gguf as _  # noqa: F401  transformers reads GGUF files through it
    except ImportError:
        raise ConfigError(
            "model.gguf_file", f"{gguf} is a GGUF file: reading it needs the `gguf` package (pip install 'lightning-dpo[real]')"
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s once (about 20 s for 135M parameters); cached in %s", gguf, folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read the GGUF file {gguf}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None

    def fill(tmp: Path) -> None:
        save_pretrained(model, tmp)
        tokenizer.save_pretrained(tmp)

    atomic_directory(folder, fill)
    return folder


def save_pretrained(model: nn.Module, folder: str | Path) -> None:
    """`save_pretrained` of a plain float model; a GGUF-loaded one first forgets its quantization
    (its weights are already dequantized floats, which transformers otherwise refuses to write)."""
    config = getattr(model, "config", None)
    quantization = getattr(config, "quantization_config", None)
    if quantization is not None and "gguf" in str(getattr(quantization, "quant_method", "")).lower():
        del config.quantization_config
        model.hf_quantizer = None  # type: ignore[assignment]
    model.save_pretrained(folder)


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
            raise ModelLoadError(
                f"cannot load the {what} from {path}: expected a folder written by save_pretrained "
                f"(with {' or '.join(needed)}), which this is not"
            )
        try:
            return loader.from_pretrained(str(path), **kwargs)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the {what} from {path}: {_damaged_weights(path) or _first_line(exc)}") from None
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


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def _damaged_weights(folder: Path) -> str | None:
    """The weights file of a folder that cannot be read (truncated, not safetensors), named, or None."""
    from safetensors import safe_open

    for weights in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt") as handle:
                for key in handle.keys():
                    handle.get_slice(key)
        except Exception as exc:
            return f"{weights} is damaged or truncated ({_first_line(exc)})"
    return None


# config keys that set a weight's shape: overriding one cannot load the pretrained weights
SHAPE_KEYS = (
    "vocab_size",
    "n_embd",
    "hidden_size",
    "n_layer",
    "num_hidden_layers",
    "n_head",
    "num_attention_heads",
    "num_key_value_heads",
    "n_inner",
    "intermediate_size",
    "n_positions",
    "max_position_embeddings",
    "head_dim",
)


def _check_shape_overrides(hf_config: Any, overrides: Mapping[str, Any], name_or_path: str) -> None:
    for key, value in overrides.items():
        if key in SHAPE_KEYS and getattr(hf_config, key, value) != value:
            raise ConfigError(
                f"model.config.{key}",
                f"{getattr(hf_config, key)} -> {value} changes the shape of the pretrained "
                f"weights of {name_or_path}, which then cannot be loaded: drop it (model.config overrides only "
                "settings that keep the shapes, or builds a model from scratch without model.name_or_path)",
            )


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
    gguf_file: str | None = None,
) -> nn.Module:
    """A Hugging Face causal LM from a hub id or folder (`name_or_path`), a GGUF file (module
    docstring), or from a config dict.

    `config` builds a randomly initialised model (tiny test models, GPT-2-medium-shaped benchmarks);
    it must contain `model_type` (e.g. gpt2, llama). With both set, `config` overrides fields of the
    pretrained config (its weights are still loaded).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    torch_dtype = resolve_dtype(dtype)
    extra: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    gguf = gguf_source(name_or_path, gguf_file)
    if gguf is not None:
        name_or_path = str(dequantized_folder(gguf))
    if name_or_path:
        hf_config = _from_pretrained(AutoConfig, name_or_path, "model config", **extra)
        _check_shape_overrides(hf_config, config or {}, name_or_path)
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


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, gguf_file: str | None = None) -> Any:
    """The tokenizer, with pad = EOS where it has none (padding is masked by attention mask, never by id)."""
    from transformers import AutoTokenizer

    if not name_or_path:
        raise ConfigError("model.tokenizer", "a config-built model needs model.tokenizer (a hub id or folder)")
    gguf = gguf_source(name_or_path, gguf_file)
    if gguf is not None:
        name_or_path = str(dequantized_folder(gguf))
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


def apply_lora(model: nn.Module, settings: Mapping[str, Any]) -> nn.Module:
    """Wrap the policy with LoRA adapters (peft): `r`, `alpha`, `dropout`, `target_modules` (names of
    the linear layers to adapt, e.g. [q_proj, v_proj, down_proj]; GPT-2's Conv1D layers are handled)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("model.lora", "LoRA needs the `peft` package: pip install 'lightning-dpo[lora]'") from None
    unknown = set(settings) - {"r", "alpha", "dropout", "target_modules", "bias"}
    if unknown:
        raise ConfigError(f"model.lora.{sorted(unknown)[0]}", "unknown key; accepted: r, alpha, dropout, target_modules, bias")
    targets = list(settings.get("target_modules") or [])
    if not targets:
        raise ConfigError(
            "model.lora.target_modules", "name the layers to adapt, e.g. [c_attn, c_proj] (GPT-2) or [q_proj, v_proj, down_proj]"
        )
    conv1d = type(model).__name__.startswith("GPT2")  # GPT-2's Conv1D stores (in, out)
    config = LoraConfig(
        r=int(settings.get("r", 8)),
        lora_alpha=settings.get("alpha", 16),
        lora_dropout=float(settings.get("dropout", 0.0)),
        target_modules=targets,
        bias=settings.get("bias", "none"),
        fan_in_fan_out=conv1d,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError("model.lora.target_modules", f"{targets}: {exc}") from None
