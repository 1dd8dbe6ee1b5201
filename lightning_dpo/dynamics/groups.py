"""From two snapshots to the paper's neuron groups and their shares of the reduction.

Definitions (Yang et al.; docs/dynamics.md):
- contribution P_i(t) = a_i(t) * p_i(t); change D_i(t) = P_i(0) - P_i(t) (> 0: writes less
  along the direction than at step 0);
- the neuron's *type* is frozen at step 0: T if p_i(0) > 0 (cos(v_i(0), w) > 0), A if < 0; P if
  a_i(0) >= 0, N if < 0;
- at step t it belongs to a group by the direction of its activation change, strictly
  (a_i(t) < a_i(0): decreased; > : increased; unchanged: no group):

| group | type | change    | meaning                       | reduces |
|-------|------|-----------|-------------------------------|---------|
| TP-   | T, P | decreased | aligned writer dampened       | yes     |
| TN+   | T, N | decreased | more negative                 | yes     |
| AP+   | A, P | increased | anti-aligned writer promoted  | yes     |
| AN-   | A, N | increased | less negative                 | yes     |
| TP+, TN-, AP-, AN+ | the mirrors: the same types, the other change | | no |

share_g = delta_sum_g / (sum of delta_sum over TP-, TN+, AP+, AN-) for the four reducing groups
(the first paper's "31.8%" is TP-'s share at the end of DPO); gross_reduction = sum of D_i over
D_i > 0; net_delta = sum of all D_i. Per layer and over all layers.

`group_totals` works on stacks: any leading dimensions broadcast (directions for the null,
leave-one-out copies for the jackknife), so one computation serves the probe, its null and its
uncertainty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lightning_dpo.dynamics.measure import Snapshot

REDUCING_GROUPS = ("TP-", "TN+", "AP+", "AN-")
MIRROR_GROUPS = ("TP+", "TN-", "AP-", "AN+")
GROUPS = REDUCING_GROUPS + MIRROR_GROUPS
# group -> (aligned at step 0?, positive at step 0?, activation increased?)
GROUP_RULES = {
    "TP-": (True, True, False),
    "TN+": (True, False, False),
    "AP+": (False, True, True),
    "AN-": (False, False, True),
    "TP+": (True, True, True),
    "TN-": (True, False, True),
    "AP-": (False, True, False),
    "AN+": (False, False, False),
}
TOTAL_ROWS = ("gross_reduction", "net_delta")  # extra rows of groups.csv, per layer and for `all`


NO_GROUP = len(GROUPS)  # the code of a neuron in no group (p_i(0) = 0, or its activation unchanged)


def _code_table() -> torch.Tensor:
    """(8,) long: 4 * aligned + 2 * positive + increased -> the group's index in GROUPS."""
    table = torch.empty(8, dtype=torch.long)
    for index, group in enumerate(GROUPS):
        aligned, positive, increased = GROUP_RULES[group]
        table[4 * aligned + 2 * positive + increased] = index
    return table


_CODE_TABLE = _code_table()


def group_codes(p0: torch.Tensor, a0: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """(..., L, d_mlp) long: each neuron's group as its index in GROUPS (NO_GROUP: none), from the
    broadcast value projection p0 and activations a0, at (the definitions in the module docstring)."""
    bits = 4 * (p0 > 0).long() + 2 * (a0 >= 0).long() + (at > a0).long()  # (..., L, d_mlp) in 0..7
    none = (p0 == 0) | (at == a0)  # neither aligned nor anti-aligned, or neither increased nor decreased
    return torch.where(none, NO_GROUP, _CODE_TABLE.to(bits.device)[bits])


def group_masks(baseline: Snapshot, current: Snapshot) -> dict[str, torch.Tensor]:
    """(n_layers, d_mlp) bool mask of each of the eight groups at `current` (the codes computed once)."""
    code = group_codes(baseline.value_projection, baseline.mean_activation, current.mean_activation)
    return {g: code == i for i, g in enumerate(GROUPS)}


def delta(baseline: Snapshot, current: Snapshot) -> torch.Tensor:
    """D_i = P_i(0) - P_i(t), in float64 so that sums over ~10^5 neurons stay exact enough."""
    return baseline.contribution.double() - current.contribution.double()


@dataclass
class GroupTotals:
    """Per group (leading 8, in GROUPS order) and per layer (last dim): sums of D_i and counts;
    gross and net change per layer. Any dims in between are the stack (directions, leave-one-out)."""

    delta_sum: torch.Tensor  # (8, ..., L) float64
    count: torch.Tensor  # (8, ..., L) int64
    gross: torch.Tensor  # (..., L) float64: sum of positive D_i
    gross_count: torch.Tensor  # (..., L)
    net: torch.Tensor  # (..., L)
    neurons: int  # per layer

    def all_layers(self) -> GroupTotals:
        return GroupTotals(
            self.delta_sum.sum(-1),
            self.count.sum(-1),
            self.gross.sum(-1),
            self.gross_count.sum(-1),
            self.net.sum(-1),
            self.neurons * self.delta_sum.shape[-1],
        )

    def shares(self) -> torch.Tensor:
        """(4, ...) each reducing group's share of their summed delta (NaN where that sum is 0)."""
        reducing = self.delta_sum[: len(REDUCING_GROUPS)]
        total = reducing.sum(0, keepdim=True)
        return torch.where(
            total != 0, reducing / torch.where(total != 0, total, torch.ones_like(total)), torch.full_like(reducing, math.nan)
        )


def group_totals(a0: torch.Tensor, at: torch.Tensor, p0: torch.Tensor, pt: torch.Tensor) -> GroupTotals:
    """Group sums of D_i = a0 p0 - at pt over the neurons of each layer; all four broadcast to (..., L, d_mlp)."""
    d = a0.double() * p0.double() - at.double() * pt.double()  # (..., L, d_mlp)
    code = group_codes(p0, a0, at).expand_as(d)  # (..., L, d_mlp): one pass, not a mask per group
    bins = (*d.shape[:-1], NO_GROUP + 1)  # the eight groups and "none"
    sums = torch.zeros(bins, dtype=d.dtype, device=d.device).scatter_add_(-1, code, d)  # (..., L, 9)
    counts = torch.zeros(bins, dtype=torch.long, device=d.device).scatter_add_(-1, code, torch.ones_like(code))
    positive = d > 0
    return GroupTotals(
        sums[..., :NO_GROUP].movedim(-1, 0),  # (8, ..., L)
        counts[..., :NO_GROUP].movedim(-1, 0),
        torch.where(positive, d, torch.zeros((), dtype=d.dtype)).sum(-1),
        positive.sum(-1),
        d.sum(-1),
        d.shape[-1],
    )


def toxic_top_n(baseline: Snapshot, current: Snapshot, n: int = 128) -> dict[str, float]:
    """The top-n neurons by cos(v_i(0), w) over all layers: how many are dampened (D_i > 0), their
    summed D, and the same for those of them in TP- (the first paper's "dampened toxic neurons")."""
    cos = baseline.cosine.reshape(-1)
    n = min(n, cos.numel())
    top = torch.topk(cos, n).indices
    d = delta(baseline, current).reshape(-1)[top]
    tp_minus = group_masks(baseline, current)["TP-"].reshape(-1)[top]
    return {
        "count_dampened": int((d > 0).sum()),
        "delta_sum": float(d.sum()),
        "tp_minus_count": int(tp_minus.sum()),
        "tp_minus_delta_sum": float(d[tp_minus].sum()),
    }
