"""MLP access for every architecture: output projections, value vectors, and hooks.

Neuron i of layer l has activation `m_i` = the i-th input of the MLP's output projection
(GPT-2: `mlp.c_proj`, a Conv1D; Llama/Gemma/Mistral: `mlp.down_proj`, an nn.Linear) and value
vector `v_i` = the projection's weight for that input (Conv1D stores (d_mlp, d_model): row i;
nn.Linear stores (d_model, d_mlp): column i). The MLP output is sum_i m_i v_i + bias.

This is the one hook module of the project: the dynamics callback reads activations through
`hook_activations`, and every intervention (ablation, patching, editing) rewrites them through
the same function. Hooks are registered inside a context manager and always removed on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_dpo.model.wrappers import full, is_sharded, unwrap
from lightning_dpo.utils.errors import ConfigError

# (where the decoder layers live, which attribute holds the MLP, names of its output projection)
_LAYER_PATHS = ("h", "layers", "decoder.layers", "gpt_neox.layers", "blocks")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")
_OUT_PROJ_NAMES = ("c_proj", "down_proj", "fc_out", "dense_4h_to_h", "fc2", "w2")
# the attention block and its output projection; the final norm (whose input is the final residual stream)
_ATTN_NAMES = ("attn", "self_attn", "attention")
_ATTN_OUT_NAMES = ("c_proj", "o_proj", "out_proj", "dense")
_FINAL_NORM_NAMES = ("ln_f", "norm", "final_layernorm", "final_layer_norm")

ActivationFn = Callable[[int, torch.Tensor], "torch.Tensor | None"]


@dataclass
class OutputProjection:
    layer: int
    module: nn.Module

    @property
    def is_conv1d(self) -> bool:
        return is_conv1d(self.module)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight (LoRA adapters folded in), detached."""
        return effective_weight(self.module)

    def value_vectors(self) -> torch.Tensor:
        """(d_mlp, d_model): row i is neuron i's value vector (a view, no copy)."""
        w = self.weight
        return w if self.is_conv1d else w.t()

    @property
    def _shape(self) -> tuple[int, int]:
        """(d_mlp, d_model), from the weight's global shape (a sharded weight is not gathered for it)."""
        rows, cols = (int(n) for n in base_layer(self.module).weight.shape)
        return (rows, cols) if self.is_conv1d else (cols, rows)

    @property
    def d_mlp(self) -> int:
        return self._shape[0]

    @property
    def d_model(self) -> int:
        return self._shape[1]

    @property
    def bias(self) -> torch.Tensor | None:
        bias = getattr(base_layer(self.module), "bias", None)
        return None if bias is None else full(bias)


def transformer_body(model: nn.Module) -> nn.Module:
    """The decoder without its LM head (GPT2Model, LlamaModel, ...): what measurements run."""
    model = unwrap(model)
    return getattr(model, "base_model", model)


def decoder_forward(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Run the decoder (hooks fire); returns the final hidden states after the final norm (N, T, d_model).
    A plain model runs its body only (no LM head); a sharded one (trainer=fsdp) runs its own forward,
    the only place FSDP2 gathers the root's weights, with logits at one position."""
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    if not is_sharded(model):
        return transformer_body(model)(**kwargs)[0]
    return model(**kwargs, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]


def base_layer(module: nn.Module) -> nn.Module:
    """The layer a LoRA wrapper adapts (peft's `get_base_layer`), else the module itself."""
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the layer computes with, detached: the base weight plus every active LoRA adapter's
    scale x B A (peft's `get_delta_weight`, in the base weight's orientation); adapters that are
    disabled (the reference, `disable_adapter()`) or merged add nothing."""
    weight = full(base_layer(module).weight.detach())  # trainer=fsdp: gathered, on every process
    adapters = getattr(module, "lora_A", None)
    if not adapters or getattr(module, "disable_adapters", False) or getattr(module, "merged", False):
        return weight
    for name in module.active_adapters:
        if name in adapters:
            weight = weight + full(module.get_delta_weight(name).detach()).to(weight.dtype)
    return weight


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's Conv1D stores its weight (d_in, d_out), the transpose of an nn.Linear's."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(base_layer(module), Conv1D)


def linear_weight_in_out(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W as (d_in, d_out), bias) of an nn.Linear (weight (out, in)) or GPT-2's Conv1D (weight (in, out)),
    detached, with any active LoRA adapter folded in."""
    w = effective_weight(module)
    bias = getattr(base_layer(module), "bias", None)
    return (w if is_conv1d(module) else w.t()), None if bias is None else full(bias.detach())


def num_attention_heads(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    for key in ("num_attention_heads", "n_head", "num_heads"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    raise ConfigError("model", f"cannot tell the number of attention heads of {type(model).__name__}")


def _get_path(root: nn.Module, path: str) -> Any:
    node: Any = root
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node


def find_decoder_layers(model: nn.Module) -> Sequence[nn.Module]:
    model = unwrap(model)
    base = getattr(model, "base_model", model)
    for root in (base, model):
        for path in _LAYER_PATHS:
            layers = _get_path(root, path)
            if isinstance(layers, (nn.ModuleList, list)) and len(layers) > 0:
                return list(layers)
    raise ConfigError(
        "model",
        f"cannot find the decoder layers of {type(model).__name__} (looked for {', '.join(_LAYER_PATHS)}); "
        "the neuron analysis supports GPT-2, Llama, Gemma, Mistral, Qwen, GPT-NeoX and OPT layouts",
    )


def find_output_projections(model: nn.Module) -> list[OutputProjection]:
    """Every layer's MLP output projection, in layer order."""
    projections = []
    for index, layer in enumerate(find_decoder_layers(model)):
        mlp = next((getattr(layer, n) for n in _MLP_NAMES if hasattr(layer, n)), layer)
        proj = next((getattr(mlp, n) for n in _OUT_PROJ_NAMES if hasattr(mlp, n)), None)
        if proj is None or not hasattr(base_layer(proj), "weight"):
            raise ConfigError(
                "model",
                f"cannot find the MLP output projection of layer {index} in {type(model).__name__} "
                f"(looked for {', '.join(_OUT_PROJ_NAMES)} under {', '.join(_MLP_NAMES)})",
            )
        projections.append(OutputProjection(index, proj))
    return projections


def _value_vectors(proj: OutputProjection, center: bool) -> torch.Tensor:
    """(d_mlp, d_model) fp32 value vectors; `center` removes each one's mean over d_model, as
    TransformerLens' `center_writing_weights` (what the residual stream's LayerNorm ignores)."""
    v = proj.value_vectors().detach().float()
    return v - v.mean(dim=1, keepdim=True) if center else v


def find_attention_projections(model: nn.Module) -> list[nn.Module]:
    """Every layer's attention output projection (W_O), in layer order; its input holds the heads side by side."""
    out = []
    for index, layer in enumerate(find_decoder_layers(model)):
        attn = next((getattr(layer, n) for n in _ATTN_NAMES if hasattr(layer, n)), None)
        proj = next((getattr(attn, n) for n in _ATTN_OUT_NAMES if attn is not None and hasattr(attn, n)), None)
        if proj is None or not hasattr(proj, "weight"):
            raise ConfigError("model", f"cannot find the attention output projection of layer {index} in {type(model).__name__}")
        out.append(proj)
    return out


def find_final_norm(model: nn.Module) -> nn.Module:
    """The norm after the last layer: its input is the final residual stream."""
    base = transformer_body(model)
    for name in _FINAL_NORM_NAMES:
        if isinstance(getattr(base, name, None), nn.Module):
            return getattr(base, name)
    raise ConfigError("model", f"cannot find the final norm of {type(model).__name__} (looked for {', '.join(_FINAL_NORM_NAMES)})")


def sublayer_post_norms(model: nn.Module) -> tuple[list[nn.Module | None], list[nn.Module | None]]:
    """Norms applied to a sublayer's output before it joins the residual stream (Gemma-2's sandwich
    norms), per layer, for attention and MLP; None for the usual pre-norm blocks. (Llama's
    `post_attention_layernorm` is the norm *before* its MLP: only a block with a
    `post_feedforward_layernorm` normalises outputs.)"""
    attn: list[nn.Module | None] = []
    mlp: list[nn.Module | None] = []
    for layer in find_decoder_layers(model):
        sandwich = hasattr(layer, "post_feedforward_layernorm")
        attn.append(cast(nn.Module, layer.post_attention_layernorm) if sandwich else None)
        mlp.append(cast(nn.Module, layer.post_feedforward_layernorm) if sandwich else None)
    return attn, mlp


def value_projections(projections: Sequence[OutputProjection], unit_direction: torch.Tensor, center: bool = False) -> torch.Tensor:
    """(n_layers, d_mlp) fp32: p_i = v_i . u for every neuron, with the current weights.

    With `center`, v_i is centred first; since (v_i - mean(v_i)) . u = v_i . (u - mean(u)), that
    is the same as projecting the raw value vectors on the mean-removed probe direction."""
    u = unit_direction.float()
    return torch.stack([_value_vectors(p, center) @ u.to(p.weight.device) for p in projections])


def value_norms(projections: Sequence[OutputProjection], center: bool = False) -> torch.Tensor:
    """(n_layers, d_mlp) fp32: |v_i|, so that cos(v_i, w) = p_i / |v_i|."""
    return torch.stack([_value_vectors(p, center).norm(dim=1) for p in projections])


@contextlib.contextmanager
def _installed(registrations: Sequence[Callable[[], RemovableHandle]]) -> Iterator[None]:
    """Register every hook, yield, and remove them all on exit, also on error."""
    handles: list[RemovableHandle] = []
    try:
        for register in registrations:
            handles.append(register())
        yield
    finally:
        for handle in handles:
            handle.remove()


def hook_activations(projections: Sequence[OutputProjection], fn: ActivationFn) -> contextlib.AbstractContextManager:
    """Call `fn(layer, m)` on each output projection's input `m` (batch, positions, d_mlp).

    If `fn` returns a tensor it replaces the input (patching, ablation, editing); if it returns
    None the input passes unchanged (capture).
    """

    def pre_hook(layer: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            replaced = fn(layer, args[0])
            return None if replaced is None else (replaced, *args[1:])

        return hook

    return _installed([partial(p.module.register_forward_pre_hook, pre_hook(p.layer)) for p in projections])


def hook_mlp_outputs(
    projections: Sequence[OutputProjection], fn: Callable[[int, torch.Tensor], torch.Tensor]
) -> contextlib.AbstractContextManager:
    """Replace each output projection's output (the MLP output before dropout) by `fn(layer, out)`."""

    def post_hook(layer: int) -> Callable:
        return lambda module, args, output: fn(layer, output)

    return _installed([partial(p.module.register_forward_hook, post_hook(p.layer)) for p in projections])


def hook_module_io(
    modules: Sequence[nn.Module], fn: Callable[[int, nn.Module, torch.Tensor, torch.Tensor], None]
) -> contextlib.AbstractContextManager:
    """Call `fn(index, module, input, output)` after each module's forward (reading only)."""

    def post_hook(index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            fn(index, module, args[0], output[0] if isinstance(output, tuple) else output)

        return hook

    return _installed([partial(m.register_forward_hook, post_hook(i)) for i, m in enumerate(modules)])


def hook_inputs(modules: Sequence[nn.Module], fn: Callable[[int, torch.Tensor], None]) -> contextlib.AbstractContextManager:
    """Call `fn(index, hidden)` with each module's first input, positional or `hidden_states=` (reading only)."""

    def pre_hook(index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            fn(index, args[0] if args else kwargs["hidden_states"])

        return hook

    return _installed([partial(m.register_forward_pre_hook, pre_hook(i), with_kwargs=True) for i, m in enumerate(modules)])


def hook_residual(
    model: nn.Module, layers: Sequence[int], fn: Callable[[int, torch.Tensor], torch.Tensor]
) -> contextlib.AbstractContextManager:
    """Replace the residual stream after each listed decoder layer by `fn(layer, hidden)`."""
    blocks = find_decoder_layers(model)
    for layer in layers:
        if not -len(blocks) <= layer < len(blocks):
            raise ConfigError("layers", f"layer {layer} does not exist (the model has {len(blocks)} layers)")

    def post_hook(layer: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor | tuple) -> torch.Tensor | tuple:
            if isinstance(output, tuple):  # some blocks return (hidden, extras...)
                return (fn(layer, output[0]), *output[1:])
            return fn(layer, output)

        return hook

    return _installed([partial(blocks[layer].register_forward_hook, post_hook(layer % len(blocks))) for layer in layers])


def count_hooks(model: nn.Module) -> int:
    """Hooks currently registered anywhere in `model` (tests assert this is back to 0)."""
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
