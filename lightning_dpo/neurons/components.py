"""Every component that writes to the residual stream, projected on a probe direction: an exact split.

For a probe's unit direction u, the final residual stream h_L (the input of the final norm) at a
position is the sum of what every component wrote there:

    h_L . u =  embed . u                                    token (+ position) embeddings
             + sum_l sum_h  attn.head.<h>(l) . u            each head's slice z_h through W_O
             + sum_l        attn.bias(l) . u                the attention output bias
             + sum_l        mlp.neurons(l) . u              sum_i m_i v_i (the neurons of the snapshot)
             + sum_l        mlp.bias(l) . u                 the MLP output bias

so the means over the probe set's positions add up exactly as well. Where a sublayer's output goes
through a norm before it is added (Gemma-2's sandwich norms), each part is taken through that
norm's linear map at the position's own scale (RMSNorm: x -> x * g / rms(x), with rms(x) of the
whole sublayer output), which keeps the split exact. The projections cost a dot product per
component and probe on activations the snapshot's forward computes anyway.

`ComponentSums` installs the hooks (through lightning_dpo/neurons/hooks.py) and accumulates, over
the selected positions of each batch, the per-probe sums; `Components` holds their means.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from lightning_dpo.neurons.hooks import (
    find_attention_projections,
    find_decoder_layers,
    find_final_norm,
    find_output_projections,
    hook_inputs,
    hook_module_io,
    sublayer_post_norms,
)
from lightning_dpo.utils.torch_utils import masked_sum

Reduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Components:
    """One probe's mean projections (over the probe set's positions) of every component."""

    embed: torch.Tensor  # () fp32
    attn_heads: torch.Tensor  # (n_layers, n_heads)
    attn_bias: torch.Tensor  # (n_layers,)
    mlp_neurons: torch.Tensor  # (n_layers,)
    mlp_bias: torch.Tensor  # (n_layers,)
    residual: torch.Tensor  # ()

    FIELDS = ("embed", "attn_heads", "attn_bias", "mlp_neurons", "mlp_bias", "residual")

    def parts_sum(self) -> torch.Tensor:
        """The sum of every component but the residual: equals `residual` (the exactness check)."""
        return self.embed + self.attn_heads.sum() + self.attn_bias.sum() + self.mlp_neurons.sum() + self.mlp_bias.sum()

    def to_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {f"{prefix}{name}": getattr(self, name).float().contiguous() for name in self.FIELDS}

    @classmethod
    def from_dict(cls, tensors: Mapping[str, torch.Tensor], prefix: str = "") -> "Components":
        return cls(*(tensors[f"{prefix}{name}"] for name in cls.FIELDS))

    def rows(self) -> list[tuple[str, str, float]]:
        """(layer, component, value) for the table: embed, then each layer's parts, then residual."""
        out = [("", "embed", float(self.embed))]
        for layer in range(self.attn_heads.shape[0]):
            out += [(str(layer), f"attn.head.{h}", float(v)) for h, v in enumerate(self.attn_heads[layer].tolist())]
            out += [(str(layer), "attn.bias", float(self.attn_bias[layer])), (str(layer), "mlp.neurons", float(self.mlp_neurons[layer])),
                    (str(layer), "mlp.bias", float(self.mlp_bias[layer]))]
        return out + [("", "residual", float(self.residual))]


def _rms_scale(norm: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For an RMSNorm `norm` applied to x (S, d): (1/rms per position (S,), per-dimension gain (d,))."""
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
    weight = norm.weight.detach().float()
    gain = 1.0 + weight if type(norm).__name__.startswith("Gemma") else weight  # Gemma's norms scale by (1 + w)
    x = x.float()
    return torch.rsqrt(x.pow(2).mean(-1) + eps), gain


def _linear_parts(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W as (d_in, d_out), bias) of a Linear (weight (out, in)) or GPT-2's Conv1D (weight (in, out))."""
    w = module.weight.detach()
    w = w if type(module).__name__ == "Conv1D" else w.t()
    bias = getattr(module, "bias", None)
    return w, None if bias is None else bias.detach()


class ComponentSums:
    """Sums, over the selected positions, of every component's projection on each probe's direction.

    `selected` is a one-item list the caller points at the current batch's (B, T) bool mask of
    averaged positions, as the neuron snapshot does (both run in the same forward). `neuron_sums`
    is the snapshot's (n_layers, d_mlp) sum of each neuron's activation over those positions: where
    no norm follows the MLP, `mlp.neurons` is its projection, so the activations are summed once."""

    def __init__(self, model: nn.Module, units: Mapping[str, torch.Tensor], selected: list[torch.Tensor],
                 neuron_sums: torch.Tensor, center: bool = False):
        self.model, self.selected, self.neuron_sums = model, selected, neuron_sums
        self.names = list(units)
        self.layers = find_decoder_layers(model)
        self.attn_out = find_attention_projections(model)
        self.mlp_out = [p.module for p in find_output_projections(model)]
        self.final_norm = find_final_norm(model)
        self.attn_norms, self.mlp_norms = sublayer_post_norms(model)
        self.n_heads = _num_heads(model)
        device = next(model.parameters()).device
        # centred writing weights (TransformerLens): every output centred over d_model = projecting on u - mean(u)
        self.units = torch.stack([(u.float() - u.float().mean()) if center else u.float() for u in units.values()]).to(device)  # (P, d)
        n_layers, n_probes = len(self.layers), len(self.names)
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)  # noqa: E731
        self.embed, self.residual = zeros(n_probes), zeros(n_probes)
        self.attn_heads, self.attn_bias = zeros(n_probes, n_layers, self.n_heads), zeros(n_probes, n_layers)
        self.mlp_neurons, self.mlp_bias = zeros(n_probes, n_layers), zeros(n_probes, n_layers)

    # -- per-layer directions: what a unit of each input writes along each probe ------------------------
    def _directions(self, module: nn.Module, norm: nn.Module | None, x_out: torch.Tensor | None):
        """(reads (d_in, P), bias projections (P,) or None, per-position scale (S,) or None); with a
        sandwich `norm`, `x_out` is the sublayer's output at the selected positions (S, d_model)."""
        w, bias = _linear_parts(module)
        units = self.units.to(w.device)  # (P, d_model)
        scale = None
        if norm is not None and x_out is not None:  # a sandwich norm after the sublayer: project through its linear map at each position's scale
            scale, gain = _rms_scale(norm, x_out)
            units = units * gain.to(units.device)
        reads = w.float() @ units.t()  # (d_in, d_model) @ (d_model, P) -> (d_in, P)
        return reads, None if bias is None else bias.float() @ units.t(), scale

    def _attention(self, layer: int, module: nn.Module, z: torch.Tensor, out: torch.Tensor) -> None:
        mask = self.selected[0]  # (B, T)
        if self.attn_norms[layer] is None:  # linear in z: project the sum over positions (no per-position copy)
            reads, bias, _ = self._directions(module, None, None)
            z_sum = masked_sum(z, mask)[0].double()  # (d_in,)
            per_head = (z_sum[:, None] * reads.double()).view(self.n_heads, -1, reads.shape[1]).sum(1)  # (H, P)
            self.attn_heads[:, layer] += per_head.t()
            if bias is not None:
                self.attn_bias[:, layer] += bias.double() * mask.sum()
            return
        z, out = z[mask].float(), out[mask]  # (S, d_in), (S, d_model)
        reads, bias, scale = self._directions(module, self.attn_norms[layer], out)
        per_head = (z.unsqueeze(-1) * reads).view(z.shape[0], self.n_heads, -1, reads.shape[1]).sum(2)  # (S, H, P)
        self.attn_heads[:, layer] += (per_head * scale[:, None, None]).sum(0).t().double()  # (P, H)
        if bias is not None:
            self.attn_bias[:, layer] += (bias * scale.sum()).double()

    def _mlp(self, layer: int, module: nn.Module, m: torch.Tensor, out: torch.Tensor) -> None:
        mask = self.selected[0]
        if self.mlp_norms[layer] is None:  # linear in m: the neurons' part is projected from neuron_sums in result()
            bias = getattr(module, "bias", None)
            if bias is not None:
                self.mlp_bias[:, layer] += (bias.detach().float() @ self.units.t().to(bias.device)).double() * mask.sum()
            return
        m, out = m[mask].float(), out[mask]  # (S, d_mlp), (S, d_model)
        reads, bias, scale = self._directions(module, self.mlp_norms[layer], out)
        self.mlp_neurons[:, layer] += ((m @ reads) * scale[:, None]).sum(0).double()  # (S, d_mlp) @ (d_mlp, P) -> (P,)
        if bias is not None:
            self.mlp_bias[:, layer] += (bias * scale.sum()).double()

    def _stream(self, target: torch.Tensor, hidden: torch.Tensor) -> None:
        target += masked_sum(hidden, self.selected[0])[0].double() @ self.units.t().to(hidden.device).double()  # (d,) @ (d, P)

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        exact = lambda fn: torch.autocast(self.units.device.type, enabled=False)(fn)  # noqa: E731  fp32 projections under bf16 training
        with contextlib.ExitStack() as stack:
            stack.enter_context(hook_module_io(self.attn_out, exact(self._attention)))
            stack.enter_context(hook_module_io(self.mlp_out, exact(self._mlp)))
            stack.enter_context(hook_inputs([self.layers[0]], exact(lambda _, h: self._stream(self.embed, h))))
            stack.enter_context(hook_inputs([self.final_norm], exact(lambda _, h: self._stream(self.residual, h))))
            yield

    def result(self, count: torch.Tensor, reduce: Reduce | None = None) -> dict[str, Components]:
        """Each probe's mean projections: sums across ranks by `reduce`, divided by `count`, the number
        of averaged positions over all ranks. Call it before `neuron_sums` is reduced (this rank's sums)."""
        for layer, module in enumerate(self.mlp_out):
            if self.mlp_norms[layer] is None:
                reads, _, _ = self._directions(module, None, None)
                self.mlp_neurons[:, layer] += self.neuron_sums[layer].double() @ reads.double()  # (d_mlp,) @ (d_mlp, P)
        sums = [self.embed, self.attn_heads, self.attn_bias, self.mlp_neurons, self.mlp_bias, self.residual]
        if reduce is not None:
            sums = [reduce(t) for t in sums]
        embed, heads, attn_bias, neurons, mlp_bias, residual = (t / count.clamp(min=1) for t in sums)
        return {name: Components(embed[p].float().cpu(), heads[p].float().cpu(), attn_bias[p].float().cpu(), neurons[p].float().cpu(),
                                 mlp_bias[p].float().cpu(), residual[p].float().cpu()) for p, name in enumerate(self.names)}


def _num_heads(model: nn.Module) -> int:
    config = model.config
    for key in ("num_attention_heads", "n_head", "num_heads"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    raise ValueError(f"cannot tell the number of attention heads of {type(model).__name__}")


def component_rows(step: int, probe: str, baseline: Components, current: Components) -> list[dict[str, Any]]:
    """components.csv rows: value at `step` and delta = value(step 0) - value(step), like D_i for neurons."""
    return [{"step": step, "probe": probe, "layer": layer, "component": name, "value": value, "delta": base_value - value}
            for (layer, name, value), (_, _, base_value) in zip(current.rows(), baseline.rows())]


def component_metrics(probe: str, rows: Sequence[dict[str, Any]], top: int = 5) -> dict[str, float]:
    """The scalars logged per probe: summed deltas by kind, and the attention heads' share of the total |delta|."""
    kinds = {"embed": 0.0, "attention": 0.0, "mlp": 0.0, "residual": 0.0}
    magnitude = {"heads": 0.0, "all": 0.0}
    for r in rows:
        name, delta = r["component"], r["delta"]
        kind = "attention" if name.startswith("attn.") else "mlp" if name.startswith("mlp.") else name
        kinds[kind] += delta
        if name != "residual":
            magnitude["all"] += abs(delta)
            magnitude["heads"] += abs(delta) if name.startswith("attn.head.") else 0.0
    metrics = {f"dynamics/{probe}/components/{k}/delta": v for k, v in kinds.items()}
    metrics[f"dynamics/{probe}/attention_share"] = magnitude["heads"] / magnitude["all"] if magnitude["all"] else float("nan")
    return metrics


def top_heads(rows: Sequence[dict[str, Any]], n: int = 5) -> list[tuple[str, float]]:
    """The heads that moved most (largest |delta|), as ('L<layer>H<head>', delta)."""
    heads = [(f"L{r['layer']}H{r['component'].rsplit('.', 1)[1]}", r["delta"]) for r in rows if r["component"].startswith("attn.head.")]
    return sorted(heads, key=lambda item: -abs(item[1]))[:n]
