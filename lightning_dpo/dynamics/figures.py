"""The dynamics figures of a run, from its files (dynamics/): written by the plot command and logged to W&B.

- group_delta_sum.png: sum of D_i per group over steps (reducing groups solid, mirrors dashed)
- reducing_shares.png: the four reducing groups' shares of the reduction over steps (stacked)
- net_vs_gross.png: net change (sum of all D_i) vs gross reduction (sum of positive D_i)
- layer_group_heatmap.png: sum of D_i per layer and group at the last snapshot
- toxic_neuron_activations.png: mean activation of the top toxic neurons (by cosine at step 0)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightning_dpo.dynamics.store import DynamicsRun, load_run
from lightning_dpo.neurons.groups import MIRROR_GROUPS, REDUCING_GROUPS
from lightning_dpo.utils.figures import pyplot, save_figure

COLORS = {"TP-": "#d62728", "TN+": "#ff7f0e", "AP+": "#2ca02c", "AN-": "#1f77b4",
          "TP+": "#d62728", "TN-": "#ff7f0e", "AP-": "#2ca02c", "AN+": "#1f77b4"}
UNITS = "probe-direction units"


def _totals(run: DynamicsRun):
    frame = run.groups[run.groups["layer"].astype(str) == "all"]
    return frame.pivot_table(index="step", columns="group", values=["delta_sum", "share", "count"])


def plot_group_delta(run: DynamicsRun, out: Path) -> Path:
    plt = pyplot()
    table = _totals(run)["delta_sum"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for group in REDUCING_GROUPS + MIRROR_GROUPS:
        if group in table:
            ax.plot(table.index, table[group], color=COLORS[group], ls="-" if group in REDUCING_GROUPS else "--", label=group)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="optimizer step", ylabel=f"sum of D_i = P_i(0) - P_i(t) [{UNITS}]", title="Change in toxic-direction writing per neuron group")
    ax.legend(ncol=2, fontsize=8, title="solid: reduces toxicity")
    return save_figure(fig, out / "group_delta_sum.png")


def plot_shares(run: DynamicsRun, out: Path) -> Path:
    plt = pyplot()
    table = _totals(run)["share"][list(REDUCING_GROUPS)].dropna(how="all").fillna(0.0) * 100
    fig, ax = plt.subplots(figsize=(7, 4))
    if len(table):
        ax.stackplot(table.index, *(table[g] for g in REDUCING_GROUPS), labels=REDUCING_GROUPS, colors=[COLORS[g] for g in REDUCING_GROUPS], alpha=0.85)
    ax.set(xlabel="optimizer step", ylabel="share of the reduction (%)", ylim=(0, 100), title="Which neuron groups carry the toxicity reduction")
    ax.legend(loc="upper left", fontsize=8)
    return save_figure(fig, out / "reducing_shares.png")


def plot_net_vs_gross(run: DynamicsRun, out: Path) -> Path:
    plt = pyplot()
    table = _totals(run)["delta_sum"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(table.index, table["gross_reduction"], label="gross reduction (sum of D_i > 0)")
    ax.plot(table.index, table["net_delta"], label="net change (sum of all D_i)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="optimizer step", ylabel=f"sum of D_i [{UNITS}]", title="Net vs gross reduction of toxic-direction writing")
    ax.legend(fontsize=8)
    return save_figure(fig, out / "net_vs_gross.png")


def plot_layer_heatmap(run: DynamicsRun, out: Path) -> Path:
    plt = pyplot()
    last = run.steps[-1]
    frame = run.groups[(run.groups["step"] == last) & (run.groups["layer"].astype(str) != "all")]
    groups = list(REDUCING_GROUPS + MIRROR_GROUPS)
    layers = sorted({int(x) for x in frame["layer"]})
    grid = np.zeros((len(layers), len(groups)))
    for _, row in frame.iterrows():
        if row["group"] in groups:
            grid[layers.index(int(row["layer"])), groups.index(row["group"])] = row["delta_sum"]
    bound = float(np.abs(grid).max()) or 1.0
    fig, ax = plt.subplots(figsize=(6, max(3, 0.3 * len(layers) + 1)))
    image = ax.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto", origin="lower")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_yticks(range(len(layers)), layers)
    ax.set(xlabel="group", ylabel="layer", title=f"sum of D_i per layer and group at step {last}")
    fig.colorbar(image, ax=ax, label=f"sum of D_i [{UNITS}]")
    return save_figure(fig, out / "layer_group_heatmap.png")


def plot_toxic_neurons(run: DynamicsRun, out: Path, n: int = 10) -> Path:
    plt = pyplot()
    cos0 = (run.value_projection[0] / np.maximum(run.value_norm[0], 1e-12)).reshape(-1)
    top = np.argsort(-cos0)[:n]
    d_mlp = run.mean_activation.shape[2]
    fig, ax = plt.subplots(figsize=(7, 4))
    for flat in top:
        layer, neuron = divmod(int(flat), d_mlp)
        ax.plot(run.steps, run.mean_activation[:, layer, neuron], label=f"L{layer}#{neuron} (cos {cos0[flat]:.2f})")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="optimizer step", ylabel="mean activation a_i", title=f"Top {len(top)} toxic neurons (by cosine with the probe at step 0)")
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, out / "toxic_neuron_activations.png")


def make_plots(run_dir: str | Path) -> list[Path]:
    run = load_run(run_dir)
    out = Path(run_dir) / "plots"
    return [plot(run, out) for plot in (plot_group_delta, plot_shares, plot_net_vs_gross, plot_layer_heatmap, plot_toxic_neurons)]
