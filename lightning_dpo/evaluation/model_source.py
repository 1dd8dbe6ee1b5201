"""A model for evaluation from a hub id, a folder, a run directory or a Lightning checkpoint.

A run directory means its best checkpoint's export (hf_model_best/) when it has one, else its
final model (hf_model/); `describe_model_source` says which, for the commands to print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from lightning_dpo.model.loading import load_causal_lm, load_tokenizer
from lightning_dpo.runs.checkpoints import check_checkpoint
from lightning_dpo.runs.directory import RunDirectory
from lightning_dpo.utils.errors import CheckpointError


def describe_model_source(source: str) -> tuple[str, str]:
    """(what to load, how to name it): a run directory becomes its best or final model."""
    run = RunDirectory.find(source)
    if run is not None:
        path, description = run.model_dir()
        return str(path), description
    return str(source), str(source)


def load_model_and_tokenizer(
    source: str, tokenizer: str | None = None, dtype: str = "float32", gguf_file: str | None = None
) -> tuple[nn.Module, Any]:
    """A model (eval mode) and its tokenizer from a hub id, a folder, a GGUF file (or a folder +
    `gguf_file`), a run directory or a Lightning checkpoint."""
    source, _ = describe_model_source(source)
    path = Path(source).expanduser()
    if path.suffix == ".ckpt" and path.is_file():
        return _from_checkpoint(path, tokenizer, dtype)
    name = str(path) if path.exists() else source
    model = load_causal_lm(name, dtype=dtype, gguf_file=gguf_file)
    if tokenizer:
        return model.eval(), load_tokenizer(tokenizer)
    return model.eval(), load_tokenizer(name, gguf_file=gguf_file)


def _from_checkpoint(path: Path, tokenizer: str | None, dtype: str) -> tuple[nn.Module, Any]:
    state = check_checkpoint(path)
    hparams = state.get("hyper_parameters", {})
    if not (hparams.get("name_or_path") or hparams.get("config")):
        raise CheckpointError(f"{path}: no model description in the checkpoint's hyper-parameters")
    gguf = hparams.get("gguf_file")
    model = load_causal_lm(hparams.get("name_or_path"), hparams.get("config"), dtype=dtype, gguf_file=gguf)
    weights = {k[len("policy.") :]: v for k, v in state["state_dict"].items() if k.startswith("policy.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    real_missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embeddings
    if real_missing or unexpected:
        raise CheckpointError(f"{path}: policy weights do not match the model (missing {real_missing[:3]}, unexpected {unexpected[:3]})")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    if tokenizer or hparams.get("tokenizer"):
        return model.eval(), load_tokenizer(tokenizer or hparams.get("tokenizer"))
    return model.eval(), load_tokenizer(hparams.get("name_or_path"), gguf_file=gguf)
