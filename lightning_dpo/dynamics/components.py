"""Every component that writes to the residual stream: an exact split of the final residual stream.

The final residual stream h_L (the input of the final norm) at a position is the sum of what every
component wrote there:

    h_L =  embed                                   token (+ position) embeddings
         + sum_l sum_h  attn.head.<h>(l)           each head's slice z_h through W_O
         + sum_l        attn.bias(l)               the attention output bias
         + sum_l        mlp.neurons(l)             sum_i m_i v_i (the neurons of the snapshot)
         + sum_l        mlp.bias(l)                the MLP output bias

Where a sublayer's output goes through a norm before it is added (Gemma-2's sandwich norms), each
part is taken through that norm's linear map at the position's own scale (RMSNorm: x -> x * g /
rms(x), with rms(x) of the whole sublayer output), which keeps the split exact.

`ComponentVectors` adds up, per bucket of the probe set, the *vectors* each component wrote at the
averaged positions (the hooks run inside the snapshot's forward, on activations it computes anyway;
the MLP neurons' vector is the activation sums times the value vectors). Their projections on any
set of directions -- the probes, and the random directions of the null (dynamics/nulls.py) -- are
one matrix product afterwards (`project`), so a direction costs nothing in the forward pass and a
direction chosen after the forward (the covariance null) is measured like any other.
`Components` holds projections with any leading dimensions (buckets, directions).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from lightning_dpo.neurons.hooks import (
    find_attention_projections,
    find_decoder_layers,
    find_final_norm,
    find_output_projections,
    hook_inputs,
    hook_module_io,
    linear_weight_in_out,
    num_attention_heads,
    sublayer_post_norms,
)

Reduce = Callable[[torch.Tensor], torch.Tensor]
FIELDS = ("embed", "attn_heads", "attn_bias", "mlp_neurons", "mlp_bias", "residual")


@dataclass
class Components:
    """Projections of every component on directions, with any leading dimensions `...` (buckets,
    directions): embed (...), attn_heads (..., n_layers, n_heads), attn_bias, mlp_neurons, mlp_bias
    (..., n_layers), residual (...)."""

    embed: torch.Tensor
    attn_heads: torch.Tensor
    attn_bias: torch.Tensor
    mlp_neurons: torch.Tensor
    mlp_bias: torch.Tensor
    residual: torch.Tensor

    FIELDS = FIELDS

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Components:
        return Components(*(fn(getattr(self, f.name)) for f in fields(self)))

    def __getitem__(self, index: Any) -> Components:
        return self.map(lambda t: t[index])

    def parts_sum(self) -> torch.Tensor:
        """The sum of every component but the residual: equals `residual` (the exactness check)."""
        return self.embed + self.attn_heads.sum((-2, -1)) + self.attn_bias.sum(-1) + self.mlp_neurons.sum(-1) + self.mlp_bias.sum(-1)

    def to_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {f"{prefix}{name}": getattr(self, name).float().contiguous() for name in FIELDS}

    @classmethod
    def from_dict(cls, tensors: Mapping[str, torch.Tensor], prefix: str = "") -> Components:
        return cls(*(tensors[f"{prefix}{name}"] for name in FIELDS))

    def rows(self) -> list[tuple[str, str, float]]:
        """(layer, component, value) for the table (no leading dimensions): embed, each layer's parts, residual."""
        out = [("", "embed", float(self.embed))]
        for layer in range(self.attn_heads.shape[0]):
            out += [(str(layer), f"attn.head.{h}", float(v)) for h, v in enumerate(self.attn_heads[layer].tolist())]
            out += [
                (str(layer), "attn.bias", float(self.attn_bias[layer])),
                (str(layer), "mlp.neurons", float(self.mlp_neurons[layer])),
                (str(layer), "mlp.bias", float(self.mlp_bias[layer])),
            ]
        return out + [("", "residual", float(self.residual))]

    def flat(self) -> torch.Tensor:
        """(..., n_components) in `rows()` order: embed, per layer (heads, attn bias, mlp neurons, mlp bias), residual."""
        per_layer = torch.cat(
            [self.attn_heads, self.attn_bias.unsqueeze(-1), self.mlp_neurons.unsqueeze(-1), self.mlp_bias.unsqueeze(-1)], dim=-1
        )  # (..., L, H + 3)
        return torch.cat([self.embed.unsqueeze(-1), per_layer.flatten(-2), self.residual.unsqueeze(-1)], dim=-1)


def _rms_scale(norm: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For an RMSNorm `norm` applied to x (S, d): (1/rms per position (S,), per-dimension gain (d,))."""
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
    weight = norm.weight.detach().float()
    gain = 1.0 + weight if type(norm).__name__.startswith("Gemma") else weight  # Gemma's norms scale by (1 + w)
    x = x.float()
    return torch.rsqrt(x.pow(2).mean(-1) + eps), gain


class ComponentVectors:
    """Sums, per bucket, of the vectors every component wrote at the averaged positions (module docstring).

    Install `hooks(weights)` around each batch's forward, `weights` being that batch's (n_buckets,
    rows * T) selection matrix; after the last batch `finish(activation_sums)` adds the MLP neurons'
    vectors of the pre-norm layers from the snapshot's own activation sums (the activations are
    summed once). All sums are float64."""

    def __init__(self, model: nn.Module, n_buckets: int):
        self.layers = find_decoder_layers(model)
        self.attn_out = find_attention_projections(model)
        self.mlp_out = find_output_projections(model)
        self.final_norm = find_final_norm(model)
        self.attn_norms, self.mlp_norms = sublayer_post_norms(model)
        self.n_heads = num_attention_heads(model)
        device = next(model.parameters()).device
        d = self.mlp_out[0].d_model
        n_layers = len(self.layers)
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64, device=device)
        self.embed, self.residual = zeros(n_buckets, d), zeros(n_buckets, d)
        self.attn_heads, self.attn_bias = zeros(n_buckets, n_layers, self.n_heads, d), zeros(n_buckets, n_layers, d)
        self.mlp_neurons, self.mlp_bias = zeros(n_buckets, n_layers, d), zeros(n_buckets, n_layers, d)

    @contextlib.contextmanager
    def hooks(self, weights: torch.Tensor) -> Iterator[None]:
        """The hooks of one batch; `weights` (n_buckets, rows * T) selects and buckets its positions."""

        def exact(fn: Callable) -> Callable:  # float32/64 under bf16 training
            return torch.autocast(weights.device.type, enabled=False)(fn)

        def stream(target: torch.Tensor) -> Callable[[int, torch.Tensor], None]:
            def add(_: int, hidden: torch.Tensor) -> None:
                target.add_(weights.double() @ hidden.reshape(-1, hidden.shape[-1]).double())  # (n_buckets, d)

            return add

        with contextlib.ExitStack() as stack:
            stack.enter_context(hook_module_io(self.attn_out, exact(lambda l, mod, z, out: self._attention(l, mod, z, out, weights))))
            stack.enter_context(
                hook_module_io([p.module for p in self.mlp_out], exact(lambda l, mod, m, out: self._mlp(l, mod, m, out, weights)))
            )
            stack.enter_context(hook_inputs([self.layers[0]], exact(stream(self.embed))))
            stack.enter_context(hook_inputs([self.final_norm], exact(stream(self.residual))))
            yield

    def _scaled(self, norm: nn.Module | None, out: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's weights times each position's sandwich-norm scale, and the norm's gain (None without a norm)."""
        if norm is None:
            return weights.double(), None
        scale, gain = _rms_scale(norm, out.reshape(-1, out.shape[-1]))
        return weights.double() * scale.double()[None, :], gain.double()

    def _attention(self, layer: int, module: nn.Module, z: torch.Tensor, out: torch.Tensor, weights: torch.Tensor) -> None:
        w, gain = self._scaled(self.attn_norms[layer], out, weights)
        z_sum = w @ z.reshape(-1, z.shape[-1]).double()  # (n_buckets, d_in): heads side by side
        w_out, bias = linear_weight_in_out(module)  # (d_in, d), (d,)
        per_head = z_sum.view(z_sum.shape[0], self.n_heads, -1)  # (n_buckets, H, d_head)
        heads = torch.einsum("bhk,hkd->bhd", per_head, w_out.double().view(self.n_heads, -1, w_out.shape[1]))  # (n_buckets, H, d)
        self.attn_heads[:, layer] += heads * gain if gain is not None else heads
        if bias is not None:
            written = w.sum(1, keepdim=True) * bias.double()  # (n_buckets, d)
            self.attn_bias[:, layer] += written * gain if gain is not None else written

    def _mlp(self, layer: int, module: nn.Module, m: torch.Tensor, out: torch.Tensor, weights: torch.Tensor) -> None:
        norm = self.mlp_norms[layer]
        w, gain = self._scaled(norm, out, weights)
        w_out, bias = linear_weight_in_out(module)  # (d_mlp, d), (d,)
        if norm is not None:  # the neurons' part needs each position's scale: not from the activation sums
            self.mlp_neurons[:, layer] += ((w @ m.reshape(-1, m.shape[-1]).double()) @ w_out.double()) * gain
        if bias is not None:
            written = w.sum(1, keepdim=True) * bias.double()
            self.mlp_bias[:, layer] += written * gain if gain is not None else written

    def finish(self, activation_sums: torch.Tensor, reduce: Reduce | None = None) -> ComponentVectors:
        """Add the pre-norm layers' neuron vectors (activation sums (n_buckets, L, d_mlp) times the
        value vectors; this rank's sums), then sum every vector across ranks with `reduce`."""
        for layer, proj in enumerate(self.mlp_out):
            if self.mlp_norms[layer] is None:
                self.mlp_neurons[:, layer] += activation_sums[:, layer].double() @ proj.value_vectors().detach().double()
        if reduce is not None:
            for name in FIELDS:
                setattr(self, name, reduce(getattr(self, name)))
        return self

    def project(self, units: torch.Tensor) -> Components:
        """Every component's summed projection on each of `units` (n_dir, d): leading dims (n_buckets, n_dir)."""
        u = units.to(self.embed.device).double().t()  # (d, n_dir)
        return Components(
            embed=self.embed @ u,  # (B, n_dir)
            attn_heads=torch.einsum("blhd,dn->bnlh", self.attn_heads, u),
            attn_bias=torch.einsum("bld,dn->bnl", self.attn_bias, u),
            mlp_neurons=torch.einsum("bld,dn->bnl", self.mlp_neurons, u),
            mlp_bias=torch.einsum("bld,dn->bnl", self.mlp_bias, u),
            residual=self.residual @ u,
        )


def component_rows(step: int, probe: str, baseline: Components, current: Components) -> list[dict[str, Any]]:
    """components.csv rows: value at `step` and delta = value(step 0) - value(step), like D_i for neurons."""
    return [
        {"step": step, "probe": probe, "layer": layer, "component": name, "value": value, "delta": base_value - value}
        for (layer, name, value), (_, _, base_value) in zip(current.rows(), baseline.rows())
    ]


def component_deltas(baseline: Components, current: Components) -> dict[str, torch.Tensor]:
    """Per kind (embed, attention, mlp, residual) the summed delta = value(0) - value(t), and the
    heads' share of the summed |delta| of every component but the residual; any leading dims."""
    delta = baseline.map(lambda t: t.double()).flat() - current.map(lambda t: t.double()).flat()  # (..., n_components)
    b = baseline
    n_layers, n_heads = b.attn_heads.shape[-2], b.attn_heads.shape[-1]
    per_layer = delta[..., 1:-1].unflatten(-1, (n_layers, n_heads + 3))  # (..., L, H + 3)
    heads = per_layer[..., :n_heads]
    attention = heads.sum((-2, -1)) + per_layer[..., n_heads].sum(-1)
    mlp = per_layer[..., n_heads + 1].sum(-1) + per_layer[..., n_heads + 2].sum(-1)
    magnitude = delta[..., :-1].abs().sum(-1)
    share = torch.where(magnitude > 0, heads.abs().sum((-2, -1)) / magnitude.clamp(min=1e-300), torch.full_like(magnitude, float("nan")))
    return {"embed": delta[..., 0], "attention": attention, "mlp": mlp, "residual": delta[..., -1], "attention_share": share}


def top_heads(rows: Sequence[dict[str, Any]], n: int = 5) -> list[tuple[str, float]]:
    """The heads that moved most (largest |delta|), as ('L<layer>H<head>', delta)."""
    heads = [(f"L{r['layer']}H{r['component'].rsplit('.', 1)[1]}", r["delta"]) for r in rows if r["component"].startswith("attn.head.")]
    return sorted(heads, key=lambda item: -abs(item[1]))[:n]
