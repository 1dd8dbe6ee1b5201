"""What a random direction would show: the null every reported quantity is read against.

About half of all MLP neurons fall into the four reducing groups for *any* direction, and a
random direction's shares look much like a probe's (Issue 20 measured TP- 31.6% for a trained
toxicity probe against 31.9% [29.3, 39.2] for random directions on a 135M-parameter model). So
every quantity the dynamics report (each group's share and delta_sum, the gross reduction, the
net change, each kind of component's delta and the attention share) is also computed, in the same
forward pass, for K random unit directions, and reported with the null's mean, standard
deviation, 5% and 95% quantiles and the probe's percentile among them (dynamics/null.csv).

Two nulls, both seeded (the seeds and the directions are kept in dynamics/null_directions.safetensors):
- `uniform` (the reference): directions uniform on the unit sphere of the residual space
  (a normalised standard normal vector per seed);
- `covariance`: directions drawn from the residual stream's own covariance at step 0
  (u ~ Sigma^(1/2) z, normalised; Sigma over the probe set's averaged positions of the final
  residual stream). A uniform direction is mostly orthogonal to where the model writes; a trained
  probe lies where the data varies. The covariance null asks the sharper question: does the probe
  differ from a direction of the kind the model's own activations span? (Where a few dimensions
  carry huge activations, as in Llama-style models, this null concentrates on them.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

NULL_KINDS = ("uniform", "covariance")
PREFIX = "null"


@dataclass
class NullDirections:
    kind: str
    seeds: list[int]
    units: torch.Tensor  # (K, d_model) float32, unit norm

    def names(self) -> list[str]:
        return [direction_name(self.kind, i) for i in range(len(self.seeds))]


def direction_name(kind: str, index: int) -> str:
    return f"{PREFIX}.{kind}.{index}"


def is_null_direction(name: str) -> bool:
    return name.startswith(PREFIX + ".")


def uniform_directions(d_model: int, count: int, seed: int = 0) -> NullDirections:
    """`count` directions uniform on the unit sphere, direction i from seed `seed + i` (float64, then float32)."""
    seeds = [seed + i for i in range(count)]
    units = torch.stack([_unit(torch.randn(d_model, generator=torch.Generator().manual_seed(s), dtype=torch.float64)) for s in seeds])
    return NullDirections("uniform", seeds, units.float())


def covariance_directions(covariance: torch.Tensor, count: int, seed: int = 0) -> NullDirections:
    """`count` directions Sigma^(1/2) z / |Sigma^(1/2) z|, z standard normal from seed `seed + i`."""
    values, vectors = torch.linalg.eigh(covariance.double())
    # the symmetric root V diag(sqrt(lambda)) V^T: unique, so the directions do not depend on the signs an
    # eigen-solver gives its eigenvectors (which differ between LAPACK builds)
    root = (vectors * values.clamp(min=0).sqrt()) @ vectors.t()
    seeds = [seed + i for i in range(count)]
    units = []
    for s in seeds:
        z = torch.randn(covariance.shape[0], generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        units.append(_unit(root @ z))
    return NullDirections("covariance", seeds, torch.stack(units).float())


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm().clamp(min=1e-300)


@dataclass
class NullSummary:
    """One quantity: the probe's value against the null's values."""

    value: float
    mean: float
    std: float
    q05: float
    q95: float
    percentile: float  # 100 x (#null < value + 0.5 #null == value) / K
    size: int

    @property
    def outside(self) -> bool:
        """The value lies outside the null's 5-95% band."""
        return math.isfinite(self.value) and (self.value < self.q05 or self.value > self.q95)


def summarize(value: float, null: torch.Tensor) -> NullSummary:
    """The null's statistics for one quantity (NaN null values, e.g. undefined shares, left out)."""
    return summarize_many([value], null.reshape(1, -1))[0]


def summarize_many(values: Sequence[float], null: torch.Tensor) -> list[NullSummary]:
    """`summarize` for Q quantities at once: `values` (Q,), `null` (Q, K), one row per quantity."""
    null = null.double()  # (Q, K)
    finite = torch.isfinite(null)
    k = finite.sum(1)  # (Q,) usable null values per quantity
    zeroed = torch.where(finite, null, torch.zeros((), dtype=null.dtype))
    mean = zeroed.sum(1) / k.clamp(min=1)  # (Q,)
    squares = torch.where(finite, (null - mean[:, None]) ** 2, torch.zeros((), dtype=null.dtype)).sum(1)
    std = (squares / (k - 1).clamp(min=1)).sqrt()  # unbiased
    quantiles = torch.nanquantile(torch.where(finite, null, math.nan), torch.tensor([0.05, 0.95], dtype=null.dtype), dim=1)  # (2, Q)
    v = torch.tensor(list(values), dtype=torch.float64)[:, None]  # (Q, 1)
    below, equal = (finite & (null < v)).sum(1), (finite & (null == v)).sum(1)
    out = []
    rows = zip(values, k.tolist(), mean.tolist(), std.tolist(), *quantiles.tolist(), below.tolist(), equal.tolist())
    for value, size, m, sd, q05, q95, n_below, n_equal in rows:
        if size == 0 or not math.isfinite(value):
            out.append(NullSummary(value, math.nan, math.nan, math.nan, math.nan, math.nan, size))
        else:
            percentile = 100.0 * (n_below + 0.5 * n_equal) / size
            out.append(NullSummary(value, m, sd if size > 1 else math.nan, q05, q95, percentile, size))
    return out
