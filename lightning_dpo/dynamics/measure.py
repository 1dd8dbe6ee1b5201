"""One snapshot: a forward over the probe set, then projections on any number of directions.

1. `forward_sums`: the transformer body (no LM head) runs over the probe set in batches. For each
   batch a selection matrix W (n_buckets, rows * T) marks the averaged positions of each bucket's
   prompts (probe_set.py); hooks installed for that batch alone (neurons/hooks.py, the project's one
   hook module) add W @ m, the MLP activations summed per bucket (float32), and the vectors every
   component wrote (components.py, float64). Sums are taken across ranks by `reduce`.
2. `project`: with the current weights, each direction u (unit; centred when
   `center_writing_weights`) gives every neuron's value projection p_i = v_i . u and every
   component's projection. Probes and the random directions of the null are projected alike.

a_i (the mean activation) = the summed activations over all buckets / the number of averaged
positions; |v_i| is kept too, so that cos(v_i, w) = p_i / |v_i|.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from lightning_dpo.dynamics.components import Components, ComponentVectors
from lightning_dpo.dynamics.probe_set import ProbeTokens
from lightning_dpo.neurons.hooks import (
    decoder_forward,
    find_final_norm,
    find_output_projections,
    hook_activations,
    hook_inputs,
)
from lightning_dpo.utils.torch_utils import eval_mode, model_device, position_ids_from_mask

Reduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Snapshot:
    """One probe at one step: what the groups are computed from."""

    step: int
    mean_activation: torch.Tensor  # (n_layers, d_mlp) fp32
    value_projection: torch.Tensor  # (n_layers, d_mlp) fp32
    value_norm: torch.Tensor  # (n_layers, d_mlp) fp32

    @property
    def contribution(self) -> torch.Tensor:
        """P_i = a_i * p_i: the neuron's mean write along the probe direction."""
        return self.mean_activation * self.value_projection

    @property
    def cosine(self) -> torch.Tensor:
        return self.value_projection / self.value_norm.clamp(min=1e-12)


@dataclass
class ForwardSums:
    """What one forward over the probe set yields (summed across ranks)."""

    activation_sums: torch.Tensor  # (n_buckets, n_layers, d_mlp) fp32
    positions: torch.Tensor  # (n_buckets,) float64: averaged positions per bucket
    vectors: ComponentVectors | None  # what every component wrote, per bucket (None: not measured)
    moments: tuple[torch.Tensor, torch.Tensor] | None = None  # the final residual stream's sum and sum of outer products

    @property
    def total_positions(self) -> float:
        return float(self.positions.sum())

    def covariance(self) -> torch.Tensor | None:
        """(d, d) covariance of the final residual stream over the averaged positions, or None."""
        if self.moments is None or self.total_positions <= 0:
            return None
        first, second = (m / self.total_positions for m in self.moments)
        return (second - torch.outer(first, first)).float()


@dataclass
class Measurement:
    """One model on one probe set, projected on named directions (the probes first, then any null's)."""

    step: int
    names: list[str]  # the directions, in order
    activation_sums: torch.Tensor  # (n_buckets, n_layers, d_mlp) fp32
    positions: torch.Tensor  # (n_buckets,) float64
    value_norm: torch.Tensor  # (n_layers, d_mlp) fp32
    projections: torch.Tensor  # (n_dir, n_layers, d_mlp) fp32: p_i for every direction
    components: Components | None = None  # per-bucket sums: leading dims (n_buckets, n_dir)
    covariance: torch.Tensor | None = field(default=None, repr=False)  # (d, d) final residual stream (when asked)

    @property
    def mean_activation(self) -> torch.Tensor:
        """(n_layers, d_mlp) a_i over every averaged position."""
        return (self.activation_sums.sum(0) / self.positions.sum().clamp(min=1)).float()

    @property
    def value_projection(self) -> dict[str, torch.Tensor]:
        return {name: self.projections[i] for i, name in enumerate(self.names)}

    def index(self, name: str) -> int:
        return self.names.index(name)

    def snapshot(self, name: str) -> Snapshot:
        return Snapshot(self.step, self.mean_activation, self.projections[self.index(name)], self.value_norm)

    def component_means(self, name: str | None = None) -> Components | None:
        """Every component's mean projection (over all averaged positions): of one direction, or all (leading n_dir)."""
        if self.components is None:
            return None
        count = self.positions.sum().clamp(min=1)
        if name is None:
            return self.components.map(lambda t: (t.sum(0) / count).float())
        i = self.index(name)  # one direction, contiguous first: its sums then add up in the same order whatever else was measured
        return self.components.map(lambda t: (t[:, i].contiguous().sum(0) / count).float())

    def select(self, names: list[str]) -> Measurement:
        """The same measurement restricted to `names` (e.g. the probes, for the snapshot file)."""
        index = [self.index(n) for n in names]
        parts = None if self.components is None else self.components.map(lambda t: t[:, index])
        return Measurement(
            self.step, list(names), self.activation_sums, self.positions, self.value_norm, self.projections[index], parts, self.covariance
        )


def batch_weights(positions: torch.Tensor, buckets: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """(n_buckets, rows * T) float32: 1 where a row's position is averaged, in the row's bucket's line."""
    onehot = torch.nn.functional.one_hot(buckets, n_buckets).t().float()  # (n_buckets, rows)
    return (onehot[:, :, None] * positions.float()[None]).reshape(n_buckets, -1)  # (n_buckets, rows * T)


@torch.no_grad()
def forward_sums(
    model: nn.Module,
    tokens: ProbeTokens,
    batch_size: int = 64,
    n_buckets: int | None = None,
    reduce: Reduce | None = None,
    components: bool = True,
    covariance: bool = False,
) -> ForwardSums:
    """Run the transformer body over the probe set; the activation sums and component vectors per bucket."""
    projections = find_output_projections(model)
    device = model_device(model)
    buckets = tokens.buckets()
    n_buckets = n_buckets or (int(buckets.max()) + 1 if len(buckets) else 1)
    sums = torch.zeros(n_buckets, len(projections), projections[0].d_mlp, dtype=torch.float32, device=device)
    counts = torch.zeros(n_buckets, dtype=torch.float64, device=device)
    vectors = ComponentVectors(model, n_buckets) if components else None
    d_model = projections[0].d_model
    moments = (
        (torch.zeros(d_model, dtype=torch.float64, device=device), torch.zeros(d_model, d_model, dtype=torch.float64, device=device))
        if covariance
        else None
    )
    used = torch.nonzero(tokens.positions.any(0))
    width = int(used.max()) + 1 if len(used) else 0  # later columns influence no averaged position
    with eval_mode(model):
        for start in range(0, tokens.input_ids.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            ids = tokens.input_ids[rows, :width].to(device)  # (rows, width), left-padded
            mask = tokens.attention_mask[rows, :width].to(device)
            weights = batch_weights(tokens.positions[rows, :width], buckets[rows], n_buckets).to(device)  # (n_buckets, rows * width)
            counts += weights.sum(1).double()

            def accumulate(layer: int, activation: torch.Tensor, w: torch.Tensor = weights) -> None:
                # activation: (rows, width, d_mlp), the inputs of the output projection
                with torch.autocast(device_type=activation.device.type, enabled=False):
                    sums[:, layer] += w @ activation.reshape(-1, activation.shape[-1]).float()  # (n_buckets, d_mlp)

            def second_moment(_: int, hidden: torch.Tensor, w: torch.Tensor = weights) -> None:
                assert moments is not None  # installed only with them
                with torch.autocast(device_type=hidden.device.type, enabled=False):
                    x = hidden.reshape(-1, hidden.shape[-1]).double()  # (rows * width, d)
                    selected = w.sum(0).double()  # (rows * width,): 1 at every averaged position
                    moments[0].add_(selected @ x)
                    moments[1].add_((x * selected[:, None]).t() @ x)  # (d, d)

            with contextlib.ExitStack() as stack:
                stack.enter_context(hook_activations(projections, accumulate))
                if vectors is not None:
                    stack.enter_context(vectors.hooks(weights))
                if moments is not None:
                    stack.enter_context(hook_inputs([find_final_norm(model)], second_moment))
                decoder_forward(model, ids, mask, position_ids_from_mask(mask))
    if vectors is not None:
        vectors.finish(sums, reduce)  # this rank's activation sums, before they are reduced
    if reduce is not None:
        sums, counts = reduce(sums), reduce(counts)
        moments = None if moments is None else (reduce(moments[0]), reduce(moments[1]))
    return ForwardSums(sums.cpu(), counts.cpu(), vectors, None if moments is None else (moments[0].cpu(), moments[1].cpu()))


def centred(units: torch.Tensor) -> torch.Tensor:
    """u - mean(u): projecting on it equals projecting the centred value vectors (TransformerLens'
    `center_writing_weights`), since (v - mean(v)) . u = v . (u - mean(u))."""
    return units - units.mean(-1, keepdim=True)


@torch.no_grad()
def project(
    model: nn.Module, sums: ForwardSums, step: int, directions: Mapping[str, torch.Tensor], center_writing_weights: bool = False
) -> Measurement:
    """The value projections and component projections of every direction (unit vectors, d_model)."""
    names = list(directions)
    units = torch.stack([directions[n].float().reshape(-1) for n in names])  # (n_dir, d)
    units = centred(units) if center_writing_weights else units
    projections = find_output_projections(model)
    value = []
    norms = []
    for proj in projections:
        v = proj.value_vectors().detach().float()  # (d_mlp, d)
        v = centred(v) if center_writing_weights else v
        value.append((v @ units.to(v.device).t()).t().cpu())  # (n_dir, d_mlp)
        norms.append(v.norm(dim=1).cpu())
    parts = sums.vectors.project(units) if sums.vectors is not None else None
    return Measurement(
        step,
        names,
        sums.activation_sums,
        sums.positions,
        torch.stack(norms),
        torch.stack(value, dim=1),
        None if parts is None else parts.map(lambda t: t.cpu()),
        sums.covariance(),
    )


@torch.no_grad()
def measure(
    model: nn.Module,
    tokens: ProbeTokens,
    units: Mapping[str, torch.Tensor],
    step: int,
    batch_size: int = 64,
    reduce: Reduce | None = None,
    center_writing_weights: bool = False,
    components: bool = True,
    n_buckets: int | None = None,
    covariance: bool = False,
) -> Measurement:
    """A forward over the probe set projected on `units` (name -> direction): see the module docstring."""
    sums = forward_sums(model, tokens, batch_size, n_buckets, reduce, components, covariance)
    return project(model, sums, step, units, center_writing_weights)


def mean_activations(model: nn.Module, tokens: ProbeTokens, batch_size: int = 64, reduce: Reduce | None = None) -> torch.Tensor:
    """(n_layers, d_mlp) fp32 mean of m_i over the selected positions (summed across ranks by `reduce`)."""
    sums = forward_sums(model, tokens, batch_size, None, reduce, components=False)
    return (sums.activation_sums.sum(0) / sums.positions.sum().clamp(min=1)).float()


@torch.no_grad()
def take_snapshot(
    model: nn.Module,
    tokens: ProbeTokens,
    unit_direction: torch.Tensor,
    step: int,
    batch_size: int = 64,
    reduce: Reduce | None = None,
    center_writing_weights: bool = False,
) -> Snapshot:
    """One probe's snapshot (no components): see `measure` for several probes and the components."""
    return measure(model, tokens, {"probe": unit_direction}, step, batch_size, reduce, center_writing_weights, components=False).snapshot(
        "probe"
    )
