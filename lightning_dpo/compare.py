"""`python -m lightning_dpo.compare <sweep_dir>`: one table over the jobs of a sweep, and figures.

For every job directory (a folder with `.hydra/config.yaml`): beta, lr, status, steps, final
`val/loss`, `val/rewards/accuracies`, `val/rewards/margins`, the last `eval/toxicity` if present,
the four reducing groups' final shares, gross and net reduction. Jobs that failed or did not
finish are listed with their status, never dropped. Writes `<sweep_dir>/compare.md`,
`compare.csv`, `plots/shares_by_job.png` (the four shares over steps, every job on a shared axis)
and `plots/heatmap_tp_share.png`, `plots/heatmap_net_delta.png` (beta x lr).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lightning_dpo.dynamics import REDUCING_GROUPS
from lightning_dpo.utils.io import atomic_write_csv, atomic_write_text
from lightning_dpo.utils.report import markdown_table, pyplot, save_figure

COLUMNS = [
    "job", "status", "beta", "lr", "loss", "steps", "val/loss", "val/rewards/accuracies", "val/rewards/margins",
    "eval/toxicity", "share TP-", "share TN+", "share AP+", "share AN-", "gross_reduction", "net_delta", "error",
]


def find_jobs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent.parent for p in sweep_dir.glob("**/.hydra/config.yaml") if "wandb" not in p.parts)


def _last(rows: list[dict[str, str]], key: str) -> float:
    for row in reversed(rows):
        if row.get(key) not in (None, ""):
            return float(row[key])
    return math.nan


def job_summary(job: Path) -> dict[str, Any]:
    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    status_file = job / "status.json"
    status = json.loads(status_file.read_text()) if status_file.exists() else {"status": "not started"}
    state = status.get("status", "unknown")
    if state == "running":
        state = "incomplete"  # no live process writes 'running' after a crash
    rows: list[dict[str, str]] = []
    if (job / "metrics.csv").exists():
        with open(job / "metrics.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
    summary: dict[str, Any] = {
        "job": str(job.name), "status": state, "beta": OmegaConf.select(cfg, "loss.beta"), "lr": OmegaConf.select(cfg, "optim.lr"),
        "loss": OmegaConf.select(cfg, "loss.type"), "steps": int(rows[-1]["step"]) if rows else 0,
        "error": status.get("error", "") if state == "failed" else "",
    }
    for key in ("val/loss", "val/rewards/accuracies", "val/rewards/margins", "eval/toxicity", "dynamics/gross_reduction", "dynamics/net_delta"):
        summary[key.replace("dynamics/", "")] = _last(rows, key)
    for group in REDUCING_GROUPS:
        summary[f"share {group}"] = _last(rows, f"dynamics/{group}/share")
    summary["_rows"] = rows
    return summary


def markdown(summaries: list[dict[str, Any]]) -> str:
    return markdown_table(summaries, COLUMNS)


def plot_shares(summaries: list[dict[str, Any]], out: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8), sharey=True)
    for ax, group in zip(axes, REDUCING_GROUPS):
        key = f"dynamics/{group}/share"
        for s in summaries:
            points = [(int(r["step"]), 100 * float(r[key])) for r in s["_rows"] if r.get(key) not in (None, "", "nan")]
            if points:
                ax.plot(*zip(*points), label=f"beta={s['beta']}, lr={s['lr']}")
        ax.set(title=f"{group} share of the reduction", xlabel="optimizer step")
    axes[0].set_ylabel("share (%)")
    axes[-1].legend(fontsize=7)
    return save_figure(fig, out / "shares_by_job.png")


def plot_heatmap(summaries: list[dict[str, Any]], key: str, label: str, path: Path) -> Path | None:
    import numpy as np

    plt = pyplot()

    done = [s for s in summaries if s["status"] == "completed" and s["beta"] is not None and s["lr"] is not None]
    betas, lrs = sorted({s["beta"] for s in done}), sorted({s["lr"] for s in done})
    if not betas or not lrs:
        return None
    grid = np.full((len(betas), len(lrs)), np.nan)
    for s in done:
        grid[betas.index(s["beta"]), lrs.index(s["lr"])] = s[key] * (100 if key.startswith("share") else 1)
    fig, ax = plt.subplots(figsize=(1.6 * len(lrs) + 2, 1.0 * len(betas) + 1.5))
    image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
    for i in range(len(betas)):
        for j in range(len(lrs)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3g}", ha="center", va="center", color="white", fontsize=8)
    ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
    ax.set_yticks(range(len(betas)), [f"{b:g}" for b in betas])
    ax.set(xlabel="learning rate (optim.lr)", ylabel="beta (loss.beta)", title=label)
    fig.colorbar(image, ax=ax, label=label)
    return save_figure(fig, path)


def compare(sweep_dir: str | Path) -> list[dict[str, Any]]:
    sweep_dir = Path(sweep_dir)
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir}: no job directories (folders with .hydra/config.yaml)")
    summaries = [job_summary(j) for j in jobs]
    table = [{k: v for k, v in s.items() if k != "_rows"} for s in summaries]
    atomic_write_csv(sweep_dir / "compare.csv", COLUMNS, table)
    atomic_write_text(sweep_dir / "compare.md", markdown(table))
    plots = sweep_dir / "plots"
    plot_shares(summaries, plots)
    plot_heatmap(summaries, "share TP-", "final TP- share of the reduction (%)", plots / "heatmap_tp_share.png")
    plot_heatmap(summaries, "net_delta", "final net change, sum of D_i", plots / "heatmap_net_delta.png")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_dpo.compare", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a Hydra multirun directory (or any folder of run directories)")
    args = parser.parse_args(argv)
    try:
        table = compare(args.sweep_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(table))
    not_done = [t for t in table if t["status"] != "completed"]
    if not_done:
        print(f"{len(not_done)} job(s) not completed: " + ", ".join(f"{t['job']} ({t['status']})" for t in not_done))
    print(f"wrote {Path(args.sweep_dir) / 'compare.md'}, compare.csv and plots/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
