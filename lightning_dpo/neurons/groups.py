"""From two snapshots to the paper's neuron groups and their shares of the toxicity reduction.

Definitions (Yang et al.; the README's "Neuron dynamics" section):
- contribution P_i(t) = a_i(t) * p_i(t); change D_i(t) = P_i(0) - P_i(t) (> 0: writes less
  along the toxic direction than at step 0);
- the neuron's *type* is frozen at step 0: T if cos(v_i(0), w) > 0 (equivalently p_i(0) > 0),
  A if < 0; P if a_i(0) >= 0, N if < 0;
- at step t it belongs to a group by the direction of its activation change, strictly
  (a_i(t) < a_i(0): decreased; > : increased; unchanged: no group):

| group | type | change    | meaning                       | reduces toxicity |
|-------|------|-----------|-------------------------------|------------------|
| TP-   | T, P | decreased | toxic writer dampened         | yes              |
| TN+   | T, N | decreased | more negative                 | yes              |
| AP+   | A, P | increased | anti-toxic writer promoted    | yes              |
| AN-   | A, N | increased | less negative                 | yes              |
| TP+   | T, P | increased |                               | mirror           |
| TN-   | T, N | increased |                               | mirror           |
| AP-   | A, P | decreased |                               | mirror           |
| AN+   | A, N | decreased |                               | mirror           |

share_g = delta_sum_g / (sum of delta_sum over TP-, TN+, AP+, AN-) for the four reducing groups
(the first paper's "31.8%" is TP-'s share at the end of DPO). Also gross_reduction = sum of D_i
over D_i > 0 and net_delta = sum of all D_i. The same per layer.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lightning_dpo.neurons.snapshot import Snapshot

REDUCING_GROUPS = ("TP-", "TN+", "AP+", "AN-")
MIRROR_GROUPS = ("TP+", "TN-", "AP-", "AN+")
# group -> (toxic-aligned?, positive at step 0?, activation increased?)
GROUP_RULES = {
    "TP-": (True, True, False), "TN+": (True, False, False), "AP+": (False, True, True), "AN-": (False, False, True),
    "TP+": (True, True, True), "TN-": (True, False, True), "AP-": (False, True, False), "AN+": (False, False, False),
}
TOTAL_ROWS = ("gross_reduction", "net_delta")  # extra rows of groups.csv, per layer and for `all`
GROUPS_CSV_COLUMNS = ["step", "layer", "group", "count", "delta_sum", "share"]


def group_masks(baseline: Snapshot, current: Snapshot) -> dict[str, torch.Tensor]:
    """(n_layers, d_mlp) bool mask of each of the eight groups at `current`."""
    toxic = baseline.value_projection > 0
    anti = baseline.value_projection < 0
    positive = baseline.mean_activation >= 0
    decreased = current.mean_activation < baseline.mean_activation
    increased = current.mean_activation > baseline.mean_activation
    masks = {}
    for name, (is_toxic, is_positive, is_increase) in GROUP_RULES.items():
        aligned = toxic if is_toxic else anti
        sign = positive if is_positive else ~positive
        change = increased if is_increase else decreased
        masks[name] = aligned & sign & change
    return masks


def delta(baseline: Snapshot, current: Snapshot) -> torch.Tensor:
    """D_i = P_i(0) - P_i(t), in float64 so that sums over ~10^5 neurons stay exact enough."""
    return baseline.contribution.double() - current.contribution.double()


def _rows_for(step: int, layer: str, d: torch.Tensor, masks: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    sums = {g: float(d[m].sum()) for g, m in masks.items()}
    reducing_total = sum(sums[g] for g in REDUCING_GROUPS)
    rows = []
    for g, m in masks.items():
        share = sums[g] / reducing_total if g in REDUCING_GROUPS and reducing_total != 0 else math.nan
        rows.append({"step": step, "layer": layer, "group": g, "count": int(m.sum()), "delta_sum": sums[g], "share": share})
    positive = d > 0
    rows.append({"step": step, "layer": layer, "group": "gross_reduction", "count": int(positive.sum()), "delta_sum": float(d[positive].sum()), "share": math.nan})
    rows.append({"step": step, "layer": layer, "group": "net_delta", "count": d.numel(), "delta_sum": float(d.sum()), "share": math.nan})
    return rows


def group_rows(baseline: Snapshot, current: Snapshot) -> list[dict[str, Any]]:
    """The groups.csv rows of one snapshot: layer `all` first, then each layer."""
    d = delta(baseline, current)
    masks = group_masks(baseline, current)
    rows = _rows_for(current.step, "all", d, masks)
    for layer in range(d.shape[0]):
        rows += _rows_for(current.step, str(layer), d[layer], {g: m[layer] for g, m in masks.items()})
    return rows


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


def summary_metrics(rows: list[dict[str, Any]], top: dict[str, float] | None, top_n: int) -> dict[str, float]:
    """The scalars logged to every logger: dynamics/<group>/{delta_sum,count,share}, totals, top-N."""
    metrics: dict[str, float] = {}
    for row in rows:
        if row["layer"] != "all":
            continue
        if row["group"] in TOTAL_ROWS:
            metrics[f"dynamics/{row['group']}"] = row["delta_sum"]
            continue
        metrics[f"dynamics/{row['group']}/delta_sum"] = row["delta_sum"]
        metrics[f"dynamics/{row['group']}/count"] = float(row["count"])
        if row["group"] in REDUCING_GROUPS:
            metrics[f"dynamics/{row['group']}/share"] = row["share"]
    for key, value in (top or {}).items():
        metrics[f"dynamics/toxic_top{top_n}/{key}"] = float(value)
    return metrics
