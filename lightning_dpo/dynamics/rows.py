"""The tables of one snapshot, as typed rows: neuron groups, components, and the null.

`snapshot_tables(baseline, current, probes, nulls)` turns two measurements into
- `GroupRow`s (groups.csv): per probe, layer `all` then every layer, the eight groups and the
  gross and net change, with jackknife standard errors (`delta_sum_se`, `share_se`);
- `ComponentRow`s (components.csv): every component's value at the step and its delta since step
  0, with `value_se`, `delta_se`;
- `NullRow`s (null.csv): each headline quantity (`QUANTITIES`) of each probe against each null.
Every quantity is computed by `quantity_values`, for the probe, for every null direction and for
every leave-one-out copy alike, so the three can never disagree on a definition.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lightning_dpo.dynamics.components import Components, component_deltas
from lightning_dpo.dynamics.groups import GROUPS, REDUCING_GROUPS, GroupTotals, group_totals
from lightning_dpo.dynamics.measure import Measurement, Snapshot
from lightning_dpo.dynamics.nulls import NullSummary, summarize_many
from lightning_dpo.dynamics.uncertainty import jackknife_se, leave_one_out, usable_buckets

NAN = math.nan
GROUPS_CSV_COLUMNS = ["step", "layer", "group", "count", "delta_sum", "share", "probe", "delta_sum_se", "share_se"]
COMPONENTS_CSV_COLUMNS = ["step", "probe", "layer", "component", "value", "delta", "value_se", "delta_se"]
NULL_CSV_COLUMNS = [
    "step",
    "probe",
    "quantity",
    "value",
    "null_mean",
    "null_std",
    "null_q05",
    "null_q95",
    "percentile",
    "null",
    "null_size",
    "value_se",
]
COMPONENT_KINDS = ("embed", "attention", "mlp", "residual")
# the quantities read against the null (and named so in null.csv and the metrics)
QUANTITIES = (
    *[f"{g}/share" for g in REDUCING_GROUPS],
    *[f"{g}/delta_sum" for g in GROUPS],
    "gross_reduction",
    "net_delta",
    *[f"components/{k}/delta" for k in COMPONENT_KINDS],
    "attention_share",
)


@dataclass(frozen=True)
class GroupRow:
    step: int
    probe: str
    layer: int | None  # None: over all layers (`all` in the file)
    group: str
    count: int
    delta_sum: float
    share: float = NAN
    delta_sum_se: float = NAN
    share_se: float = NAN

    def as_csv(self) -> dict[str, Any]:
        return {**asdict(self), "layer": "all" if self.layer is None else str(self.layer)}


@dataclass(frozen=True)
class ComponentRow:
    step: int
    probe: str
    layer: int | None  # None for embed and residual (empty in the file)
    component: str
    value: float
    delta: float  # value(step 0) - value(step)
    value_se: float = NAN
    delta_se: float = NAN

    def as_csv(self) -> dict[str, Any]:
        return {**asdict(self), "layer": "" if self.layer is None else str(self.layer)}


@dataclass(frozen=True)
class NullRow:
    step: int
    probe: str
    quantity: str
    null: str  # which null: uniform | covariance
    summary: NullSummary
    value_se: float = NAN

    def as_csv(self) -> dict[str, Any]:
        s = self.summary
        return {
            "step": self.step,
            "probe": self.probe,
            "quantity": self.quantity,
            "value": s.value,
            "null_mean": s.mean,
            "null_std": s.std,
            "null_q05": s.q05,
            "null_q95": s.q95,
            "percentile": s.percentile,
            "null": self.null,
            "null_size": s.size,
            "value_se": self.value_se,
        }


@dataclass
class SnapshotTables:
    groups: list[GroupRow]
    components: list[ComponentRow]
    nulls: list[NullRow]


# -- the quantities --------------------------------------------------------------------------------
def quantity_values(
    a0: torch.Tensor, at: torch.Tensor, p0: torch.Tensor, pt: torch.Tensor, c0: Components | None = None, ct: Components | None = None
) -> dict[str, torch.Tensor]:
    """Every headline quantity, with the leading dims of the (broadcast) inputs: a (.., L, d_mlp)
    activations and p value projections at step 0 and t, and the components' projections."""
    totals = group_totals(a0, at, p0, pt).all_layers()
    shares = totals.shares()
    out = {f"{g}/share": shares[i] for i, g in enumerate(REDUCING_GROUPS)}
    out.update({f"{g}/delta_sum": totals.delta_sum[i] for i, g in enumerate(GROUPS)})
    out["gross_reduction"], out["net_delta"] = totals.gross, totals.net
    if c0 is not None and ct is not None:
        deltas = component_deltas(c0, ct)
        out.update({f"components/{k}/delta": deltas[k] for k in COMPONENT_KINDS})
        out["attention_share"] = deltas["attention_share"]
    return out


# -- groups.csv ------------------------------------------------------------------------------------
def _group_rows_from(
    step: int, probe: str, totals: GroupTotals, layer: int | None, se: dict[str, torch.Tensor] | None, index: Any
) -> list[GroupRow]:
    def values(t: torch.Tensor) -> list:  # (n, ...) -> the n values at `index`, as Python numbers
        return t[(slice(None), *index)].tolist() if isinstance(index, tuple) else t[:, index].tolist()

    n_reducing = len(REDUCING_GROUPS)
    shares = values(totals.shares()) + [NAN] * (len(GROUPS) - n_reducing)
    counts, sums = values(totals.count), values(totals.delta_sum)
    sums_se = values(se["delta_sum"]) if se else [NAN] * len(GROUPS)
    shares_se = values(se["share"]) + [NAN] * (len(GROUPS) - n_reducing) if se else [NAN] * len(GROUPS)
    rows = [
        GroupRow(step, probe, layer, g, int(counts[i]), float(sums[i]), float(shares[i]), float(sums_se[i]), float(shares_se[i]))
        for i, g in enumerate(GROUPS)
    ]
    totals_row = values(torch.stack([totals.gross_count.double(), totals.gross, totals.net]))
    gross_se, net_se = values(torch.stack([se["gross"], se["net"]])) if se else [NAN, NAN]
    rows.append(GroupRow(step, probe, layer, "gross_reduction", int(totals_row[0]), float(totals_row[1]), NAN, float(gross_se)))
    rows.append(GroupRow(step, probe, layer, "net_delta", totals.neurons, float(totals_row[2]), NAN, float(net_se)))
    return rows


def group_table(
    step: int, probe: str, baseline: Snapshot, current: Snapshot, jackknife: tuple[torch.Tensor, torch.Tensor] | None = None
) -> list[GroupRow]:
    """groups.csv rows of one probe: layer `all` first, then each layer. `jackknife`: the
    leave-one-out activations (a0, at), each (B', L, d_mlp), for the standard errors."""
    totals = group_totals(baseline.mean_activation, current.mean_activation, baseline.value_projection, current.value_projection)
    everything = totals.all_layers()
    se_layers = se_all = None
    if jackknife is not None:
        copies = group_totals(jackknife[0], jackknife[1], baseline.value_projection, current.value_projection)  # (8, B', L)
        copies_all = copies.all_layers()  # (8, B')
        se_layers = {
            "delta_sum": jackknife_se(copies.delta_sum.movedim(1, 0)),
            "share": jackknife_se(copies.shares().movedim(1, 0)),
            "gross": jackknife_se(copies.gross),
            "net": jackknife_se(copies.net),
        }
        se_all = {
            "delta_sum": jackknife_se(copies_all.delta_sum.t()),
            "share": jackknife_se(copies_all.shares().t()),
            "gross": jackknife_se(copies_all.gross),
            "net": jackknife_se(copies_all.net),
        }
    rows = _group_rows_from(step, probe, everything, None, se_all, ())
    for layer in range(totals.net.shape[-1]):
        rows += _group_rows_from(step, probe, totals, layer, se_layers, layer)
    return rows


def group_rows(baseline: Snapshot, current: Snapshot) -> list[GroupRow]:
    """groups.csv rows of one snapshot (one probe, no uncertainty): layer `all` first, then each layer."""
    return group_table(current.step, "", baseline, current)


# -- components.csv ----------------------------------------------------------------------------------
def component_table(
    step: int, probe: str, baseline: Components, current: Components, jackknife: tuple[Components, Components] | None = None
) -> list[ComponentRow]:
    """components.csv rows: every component's value at `step`, its delta since step 0, and their
    standard errors from the leave-one-out copies (each with leading dim B')."""
    value_se = delta_se = None
    if jackknife is not None:
        base_copies, cur_copies = jackknife[0].flat(), jackknife[1].flat()  # (B', n_components)
        value_se, delta_se = jackknife_se(cur_copies), jackknife_se(base_copies - cur_copies)
    rows = []
    for i, ((layer, name, value), (_, _, base)) in enumerate(zip(current.rows(), baseline.rows())):
        rows.append(
            ComponentRow(
                step,
                probe,
                int(layer) if layer else None,
                name,
                value,
                base - value,
                float(value_se[i]) if value_se is not None else NAN,
                float(delta_se[i]) if delta_se is not None else NAN,
            )
        )
    return rows


# -- one snapshot ------------------------------------------------------------------------------------
def _loo_activations(m: Measurement, keep: torch.Tensor) -> torch.Tensor:
    return leave_one_out(m.activation_sums, m.positions, keep)


def _loo_components(m: Measurement, index: int, keep: torch.Tensor) -> Components | None:
    if m.components is None:
        return None
    return m.components.map(lambda t: leave_one_out(t[:, index].contiguous(), m.positions, keep))


def snapshot_tables(
    baseline: Measurement,
    current: Measurement,
    probes: Sequence[str],
    nulls: Mapping[str, Sequence[str]] | None = None,
    uncertainty: bool = True,
) -> SnapshotTables:
    """Every row of one snapshot (module docstring). `nulls`: null kind -> its direction names."""
    keep = usable_buckets(baseline.positions, current.positions)
    jack = uncertainty and int(keep.sum()) >= 2
    loo_acts = (_loo_activations(baseline, keep), _loo_activations(current, keep)) if jack else None
    means0, means_t = baseline.component_means(), current.component_means()
    groups: list[GroupRow] = []
    components: list[ComponentRow] = []
    null_rows: list[NullRow] = []
    for probe in probes:
        i = baseline.index(probe)
        b, c = baseline.snapshot(probe), current.snapshot(probe)
        groups += group_table(current.step, probe, b, c, loo_acts)
        c0, ct = baseline.component_means(probe), current.component_means(probe)  # the same sums whatever else was measured
        loo = None
        if loo_acts is not None:
            l0, lt = _loo_components(baseline, i, keep), _loo_components(current, current.index(probe), keep)
            loo = (l0, lt) if l0 is not None and lt is not None else None
        if c0 is not None and ct is not None:
            components += component_table(current.step, probe, c0, ct, loo)
        if not nulls:
            continue
        value = quantity_values(b.mean_activation, c.mean_activation, b.value_projection, c.value_projection, c0, ct)
        se: dict[str, torch.Tensor] = {}
        if loo_acts is not None:
            copies = quantity_values(loo_acts[0], loo_acts[1], b.value_projection, c.value_projection, *(loo or (None, None)))
            se = {q: jackknife_se(v) for q, v in copies.items()}
        for kind, names in nulls.items():
            index = [baseline.index(n) for n in names]
            p0 = baseline.projections[index]  # (K, L, d_mlp)
            pt = current.projections[[current.index(n) for n in names]]
            n0 = means0[index] if means0 is not None else None
            nt = means_t[[current.index(n) for n in names]] if means_t is not None else None
            null = quantity_values(b.mean_activation, c.mean_activation, p0, pt, n0, nt)
            measured = [q for q in QUANTITIES if q in value]
            summaries = summarize_many(torch.stack([value[q] for q in measured]).tolist(), torch.stack([null[q] for q in measured]))
            for q, summary in zip(measured, summaries):
                null_rows.append(NullRow(current.step, probe, q, kind, summary, float(se[q]) if q in se else NAN))
    return SnapshotTables(groups, components, null_rows)
