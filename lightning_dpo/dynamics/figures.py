"""The dynamics figures of a run, from its files (dynamics/): written by the plot command and logged to W&B.

Per probe (the target probe's in plots/, every other probe's in plots/<probe>/):
- group_delta_sum.png: sum of D_i per group over steps (reducing groups solid, mirrors dashed)
- reducing_shares.png: the four reducing groups' shares of the reduction over steps (stacked), above
  the gross reduction they share (a share of a tiny total misleads early on)
- net_vs_gross.png: net change (sum of all D_i) vs gross reduction (sum of positive D_i)
- layer_group_heatmap.png: sum of D_i per layer and group at the last snapshot
- shares_vs_null.png: each reducing group's share, the gross and net change and the attention share over
  steps, with their jackknife standard error (band) and the 5-95% band of random directions (grey:
  uniform null; dashed: covariance null): a share inside the grey band is what any direction shows
- toxic_neuron_activations.png (a probe named toxicity; other probes: top_neuron_activations.png): mean
  activation of the neurons most aligned with the probe (by cosine at step 0)
- components.png: the change along the probe written by the embeddings, the attention heads and the
  MLPs over steps, and the heads that moved most (runs with components)
Every line has a marker at each snapshot step; every quantity carries its unit; every title names its
probe; a change D is "value at step 0 minus value at step t": > 0 means less writing along the probe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightning_dpo.dynamics.components import top_heads
from lightning_dpo.dynamics.groups import MIRROR_GROUPS, REDUCING_GROUPS
from lightning_dpo.dynamics.store import DynamicsRun, load_run
from lightning_dpo.utils.figures import annotate_cells, pyplot, save_figure
from lightning_dpo.utils.io import check_file_name

COLORS = {
    "TP-": "#d62728",
    "TN+": "#ff7f0e",
    "AP+": "#2ca02c",
    "AN-": "#1f77b4",
    "TP+": "#d62728",
    "TN-": "#ff7f0e",
    "AP-": "#2ca02c",
    "AN+": "#1f77b4",
}
UNITS = "probe-direction units"
KIND_COLORS = {"embed": "#8c564b", "attention": "#9467bd", "mlp": "#17becf", "residual": "#333333"}


def _totals(run: DynamicsRun, probe: str):
    groups = run.probe_groups(probe)
    frame = groups[groups["layer"].astype(str) == "all"]
    values = [c for c in ("delta_sum", "share", "count", "delta_sum_se", "share_se") if c in frame.columns]
    return frame.pivot_table(index="step", columns="group", values=values, dropna=False)


def _title(text: str, probe: str, target: str) -> str:
    """Every figure names its probe: 'the probe' in `text` becomes 'the <name> probe'."""
    return text.replace("the probe", f"the {probe} probe") if "the probe" in text else f"{text} ({probe} probe)"


def _band(ax, x, value, se, color: str) -> None:
    """A +-1 standard error band around a line (skipped where the error is unknown)."""
    value, se = np.asarray(value, dtype=float), np.asarray(se, dtype=float)
    if np.isfinite(se).any():
        ax.fill_between(x, value - se, value + se, color=color, alpha=0.18, lw=0)


def plot_group_delta(run: DynamicsRun, probe: str, out: Path) -> Path:
    plt = pyplot()
    table = _totals(run, probe)["delta_sum"]
    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    errors = _totals(run, probe).get("delta_sum_se")
    for group in REDUCING_GROUPS + MIRROR_GROUPS:
        if group in table:
            ax.plot(
                table.index, table[group], color=COLORS[group], ls="-" if group in REDUCING_GROUPS else "--", marker="o", ms=3, label=group
            )
            if errors is not None and group in errors:
                _band(ax, table.index, table[group], errors[group], COLORS[group])
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(
        xlabel="optimizer step",
        ylabel=f"sum of D_i = P_i(0) - P_i(t) [{UNITS}]",
        title=_title("Change in writing along the probe, per neuron group", probe, run.probes[0]),
    )
    ax.legend(ncol=2, fontsize=8, title="solid: reduces; dashed: mirror", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, out / "group_delta_sum.png")


def plot_shares(run: DynamicsRun, probe: str, out: Path) -> Path:
    """Stacked shares (legend in stack order, outside the data) above the gross reduction they divide."""
    plt = pyplot()
    totals = _totals(run, probe)
    shares = totals["share"].reindex(columns=list(REDUCING_GROUPS)) * 100
    gross = totals["delta_sum"].get("gross_reduction")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.6), sharex=True, height_ratios=[3, 1.4], layout="constrained")
    defined = shares.dropna(how="all").fillna(0.0)
    if len(defined):
        stacks = top.stackplot(
            defined.index, *(defined[g] for g in REDUCING_GROUPS), colors=[COLORS[g] for g in REDUCING_GROUPS], alpha=0.85
        )
        for x in defined.index:
            top.axvline(x, color="white", lw=0.4, alpha=0.6)  # the snapshot steps
        top.legend(
            stacks[::-1],
            list(REDUCING_GROUPS)[::-1],
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            fontsize=8,
            title="group (top to bottom)",
        )
    first = int(totals.index.min()) if len(totals.index) else 0
    if first not in defined.index:
        top.annotate(f"step {first}: no change yet,\nshares undefined", xy=(first, 50), fontsize=7, color="grey", ha="left")
    top.set(
        ylabel="share of the gross reduction (%)",
        ylim=(0, 100),
        xlim=(first, max(totals.index.max(), first + 1)),
        title=_title("Which neuron groups carry the reduction", probe, run.probes[0]),
    )
    if gross is not None:
        bottom.plot(gross.index, gross, color="#333333", marker="o", ms=3)
    bottom.set(xlabel="optimizer step", ylabel=f"gross reduction\n[{UNITS}]")
    bottom.grid(alpha=0.3)
    return save_figure(fig, out / "reducing_shares.png")


def plot_net_vs_gross(run: DynamicsRun, probe: str, out: Path) -> Path:
    plt = pyplot()
    table = _totals(run, probe)["delta_sum"]
    fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
    errors = _totals(run, probe).get("delta_sum_se")
    nulls = run.probe_nulls(probe, "uniform")
    for name, label, color in (
        ("gross_reduction", "gross reduction (sum of D_i > 0)", "#1f77b4"),
        ("net_delta", "net change (sum of all D_i)", "#ff7f0e"),
    ):
        ax.plot(table.index, table[name], marker="o", ms=3, color=color, label=label)
        if errors is not None and name in errors:
            _band(ax, table.index, table[name], errors[name], color)
        if nulls is not None and len(nulls):
            band = nulls[nulls["quantity"] == name].sort_values("step")
            ax.fill_between(
                band["step"],
                band["null_q05"],
                band["null_q95"],
                color=color,
                alpha=0.08,
                hatch="//",
                lw=0,
                label=f"{label.split(' (')[0]}: random directions, 5-95%",
            )
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(
        xlabel="optimizer step",
        ylabel=f"sum of D_i [{UNITS}]",
        title=_title("Net vs gross reduction of writing along the probe", probe, run.probes[0]),
    )
    ax.legend(fontsize=8)
    return save_figure(fig, out / "net_vs_gross.png")


def plot_layer_heatmap(run: DynamicsRun, probe: str, out: Path) -> Path:
    plt = pyplot()
    last = run.steps[-1]
    groups = run.probe_groups(probe)
    frame = groups[(groups["step"] == last) & (groups["layer"].astype(str) != "all")]
    names = list(REDUCING_GROUPS + MIRROR_GROUPS)
    layers = sorted({int(x) for x in frame["layer"]})
    grid = np.zeros((len(layers), len(names)))
    for _, row in frame.iterrows():
        if row["group"] in names:
            grid[layers.index(int(row["layer"])), names.index(row["group"])] = row["delta_sum"]
    bound = float(np.abs(grid).max()) or 1.0
    fig, ax = plt.subplots(figsize=(7, max(3, 0.35 * len(layers) + 1.5)), layout="constrained")
    image = ax.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto", origin="lower")
    if len(layers) <= 32:
        annotate_cells(ax, image, grid, "{:.2g}", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(layers)), layers)
    ax.set(xlabel="group", ylabel="layer", title=_title(f"Sum of D_i per layer and group at step {last}", probe, run.probes[0]))
    fig.colorbar(image, ax=ax, label=f"sum of D_i [{UNITS}]")
    return save_figure(fig, out / "layer_group_heatmap.png")


def plot_toxic_neurons(run: DynamicsRun, probe: str, out: Path, n: int = 10) -> Path:
    plt = pyplot()
    projection = run.value_projections.get(probe, run.value_projection)
    cos0 = (projection[0] / np.maximum(run.value_norm[0], 1e-12)).reshape(-1)
    top = np.argsort(-cos0)[:n]
    d_mlp = run.mean_activation.shape[2]
    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    for flat in top:
        layer, neuron = divmod(int(flat), d_mlp)
        ax.plot(run.steps, run.mean_activation[:, layer, neuron], marker="o", ms=3, label=f"L{layer}#{neuron} (cos {cos0[flat]:.2f})")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(
        xlabel="optimizer step",
        ylabel="mean activation a_i",
        title=_title(f"Top {len(top)} neurons by cosine with the probe at step 0", probe, run.probes[0]),
    )
    ax.legend(fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5))
    name = "toxic_neuron_activations.png" if probe == "toxicity" else "top_neuron_activations.png"
    return save_figure(fig, out / name)


def plot_components(run: DynamicsRun, probe: str, out: Path) -> Path | None:
    """Embeddings vs attention vs MLPs over steps, and the heads that moved most at the last snapshot."""
    if run.components is None or run.components.empty:
        return None
    plt = pyplot()
    frame = run.components[run.components["probe"] == probe]
    kinds = frame["component"].map(lambda c: "attention" if c.startswith("attn.") else "mlp" if c.startswith("mlp.") else c)
    table = frame.assign(kind=kinds).pivot_table(index="step", columns="kind", values="delta", aggfunc="sum")
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.2), width_ratios=[3, 2], layout="constrained")
    for kind in ("embed", "attention", "mlp", "residual"):
        if kind in table:
            left.plot(
                table.index,
                table[kind],
                marker="o",
                ms=3,
                color=KIND_COLORS[kind],
                ls="--" if kind == "residual" else "-",
                label={"residual": "residual (their sum)"}.get(kind, kind),
            )
    left.axhline(0, color="grey", lw=0.5)
    left.set(
        xlabel="optimizer step",
        ylabel=f"change: value(0) - value(t) [{UNITS}]",
        title=_title("Where the change along the probe is written", probe, run.probes[0]),
    )
    left.legend(fontsize=8)
    last = frame[frame["step"] == run.steps[-1]]
    heads = top_heads(last.to_dict("records"), n=10)
    if heads:
        names, deltas = zip(*heads)
        right.barh(range(len(heads)), deltas, color=["#9467bd" if d > 0 else "#c7b8dd" for d in deltas])
        right.set_yticks(range(len(heads)), names, fontsize=8)
        right.invert_yaxis()
        right.axvline(0, color="grey", lw=0.5)
        for i, d in enumerate(deltas):
            right.annotate(
                f"{d:+.3g}",
                (d, i),
                textcoords="offset points",
                xytext=(3 if d >= 0 else -3, 0),
                va="center",
                ha="left" if d >= 0 else "right",
                fontsize=7,
            )
        right.margins(x=0.3)  # room for the value labels on both sides, clear of the head names
    right.set(xlabel=f"change at step {run.steps[-1]} [{UNITS}]", title="attention heads that moved most")
    return save_figure(fig, out / "components.png")


NULL_PANELS = (
    *[(f"{g}/share", f"{g} share", True) for g in REDUCING_GROUPS],
    ("gross_reduction", "gross reduction", False),
    ("net_delta", "net change", False),
    ("attention_share", "attention heads' share", True),
)


def plot_shares_against_null(run: DynamicsRun, probe: str, out: Path) -> Path | None:
    """Each quantity of the probe (line, +-1 SE band) against the 5-95% band of random directions."""
    if run.nulls is None or run.nulls.empty:
        return None
    plt = pyplot()
    frame = run.nulls[run.nulls["probe"] == probe]
    panels = [p for p in NULL_PANELS if (frame["quantity"] == p[0]).any()]
    fig, axes = plt.subplots(2, 4, figsize=(17, 7), layout="constrained")
    for ax, (quantity, label, percent) in zip(axes.flat, panels):
        scale = 100.0 if percent else 1.0
        for null, style in (("uniform", "grey"), ("covariance", "dashed")):
            rows = frame[(frame["quantity"] == quantity) & (frame["null"] == null)].sort_values("step")
            rows = rows[rows["null_size"] > 0]
            if rows.empty:
                continue
            if style == "grey":
                ax.fill_between(
                    rows["step"],
                    scale * rows["null_q05"],
                    scale * rows["null_q95"],
                    color="#bbbbbb",
                    alpha=0.6,
                    lw=0,
                    label="uniform random directions, 5-95%",
                )
            else:
                ax.plot(
                    rows["step"], scale * rows["null_q05"], ls="--", color="#555555", lw=0.9, label="covariance-shaped directions, 5-95%"
                )
                ax.plot(rows["step"], scale * rows["null_q95"], ls="--", color="#555555", lw=0.9)
        rows = frame[(frame["quantity"] == quantity) & (frame["null"] == "uniform")].sort_values("step")
        color = COLORS.get(quantity.split("/")[0], "#1f77b4")
        ax.plot(rows["step"], scale * rows["value"], marker="o", ms=3, color=color, label=f"{probe} probe")
        _band(ax, rows["step"], scale * rows["value"], scale * rows["value_se"], color)
        ax.set(title=label, xlabel="optimizer step", ylabel="%" if percent else UNITS)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
    fig.suptitle(
        _title(
            "The probe against random directions (band around the line: +-1 jackknife standard error over prompts)", probe, run.probes[0]
        ),
        fontsize=10,
    )
    return save_figure(fig, out / "shares_vs_null.png")


FIGURES = (
    plot_group_delta,
    plot_shares,
    plot_shares_against_null,
    plot_net_vs_gross,
    plot_layer_heatmap,
    plot_toxic_neurons,
    plot_components,
)


def make_plots(run_dir: str | Path) -> list[Path]:
    """Every figure for every probe: the target's in <run_dir>/plots/, the others' in plots/<probe>/."""
    run = load_run(run_dir)
    paths = []
    for i, probe in enumerate(run.probes):
        check_file_name(probe, f"the probe name in {run.run_dir / 'dynamics'}")  # the files may come from anyone
        out = Path(run_dir) / "plots" if i == 0 else Path(run_dir) / "plots" / probe
        paths += [p for p in (plot(run, probe, out) for plot in FIGURES) if p is not None]
    return paths
