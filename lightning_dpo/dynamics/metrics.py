"""The dynamics' metric names (a public contract), built in one place, and the scalars of a snapshot.

Per probe P (every probe; the target probe's group metrics also under the first names,
`dynamics/<group>/...`):
    dynamics/P/<group>/{delta_sum,count}            the eight groups
    dynamics/P/<group>/{share,share_se}             the four reducing groups (share_se: jackknife)
    dynamics/P/{gross_reduction,net_delta}
    dynamics/P/toxic_top<N>/{count_dampened,delta_sum,tp_minus_count,tp_minus_delta_sum}
    dynamics/P/components/{embed,attention,mlp,residual}/delta, dynamics/P/attention_share
    dynamics/P/null/<quantity>/{q05,q95,percentile}          against the uniform null (the reference)
    dynamics/P/null_covariance/<quantity>/percentile         against the covariance null
where <quantity> is one of NULL_METRIC_QUANTITIES (every quantity of every null is in null.csv).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from lightning_dpo.dynamics.groups import REDUCING_GROUPS, TOTAL_ROWS
from lightning_dpo.dynamics.rows import COMPONENT_KINDS, ComponentRow, GroupRow, NullRow

PREFIX = "dynamics"
# the null quantities logged as metrics (the delta_sums of single groups only in null.csv)
NULL_METRIC_QUANTITIES = (
    *[f"{g}/share" for g in REDUCING_GROUPS],
    "gross_reduction",
    "net_delta",
    *[f"components/{k}/delta" for k in COMPONENT_KINDS],
    "attention_share",
)


def key(probe: str | None, *parts: str) -> str:
    """`dynamics/<probe>/<parts...>`; probe None: the first (unprefixed) names of the target probe."""
    return "/".join([PREFIX, *([probe] if probe else []), *parts])


def group_metrics(rows: Iterable[GroupRow], probe: str | None) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for row in rows:
        if row.layer is not None:
            continue
        if row.group in TOTAL_ROWS:
            metrics[key(probe, row.group)] = row.delta_sum
            continue
        metrics[key(probe, row.group, "delta_sum")] = row.delta_sum
        metrics[key(probe, row.group, "count")] = float(row.count)
        if row.group in REDUCING_GROUPS:
            metrics[key(probe, row.group, "share")] = row.share
            metrics[key(probe, row.group, "share_se")] = row.share_se
    return metrics


def top_metrics(top: Mapping[str, float], probe: str | None, n: int) -> dict[str, float]:
    return {key(probe, f"toxic_top{n}", name): float(value) for name, value in top.items()}


def component_metrics(rows: Iterable[ComponentRow], probe: str) -> dict[str, float]:
    """Summed deltas by kind, and the attention heads' share of the total |delta| (every component but the residual)."""
    kinds = {k: 0.0 for k in COMPONENT_KINDS}
    heads = every = 0.0
    for r in rows:
        kind = "attention" if r.component.startswith("attn.") else "mlp" if r.component.startswith("mlp.") else r.component
        kinds[kind] += r.delta
        if r.component != "residual":
            every += abs(r.delta)
            heads += abs(r.delta) if r.component.startswith("attn.head.") else 0.0
    metrics = {key(probe, "components", k, "delta"): v for k, v in kinds.items()}
    metrics[key(probe, "attention_share")] = heads / every if every else math.nan
    return metrics


def null_metrics(rows: Iterable[NullRow], probe: str) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for row in rows:
        if row.quantity not in NULL_METRIC_QUANTITIES:
            continue
        if row.null == "uniform":
            for stat in ("q05", "q95", "percentile"):
                metrics[key(probe, "null", row.quantity, stat)] = getattr(row.summary, stat)
        else:
            metrics[key(probe, f"null_{row.null}", row.quantity, "percentile")] = row.summary.percentile
    return metrics
