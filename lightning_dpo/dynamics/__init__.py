"""Neuron dynamics over training: where a hook becomes a group share, step after step.

    probe_set.py  the fixed probe sequences and the positions that are averaged
    store.py      the files of a run (dynamics/*.safetensors, groups.csv, meta.json) and `load_run`
    figures.py    the figures drawn from those files

The per-snapshot quantities (mean activations, value projections, the eight groups) are the
neuron side's: lightning_dpo/neurons/snapshot.py and groups.py, re-exported here for readers of a run.
"""

from lightning_dpo.dynamics.probe_set import ProbeTokens, build_probe_tokens
from lightning_dpo.dynamics.store import DynamicsRun, DynamicsStore, load_run
from lightning_dpo.neurons.groups import (
    MIRROR_GROUPS,
    REDUCING_GROUPS,
    group_rows,
    summary_metrics,
    toxic_top_n,
)
from lightning_dpo.neurons.snapshot import Snapshot, mean_activations, take_snapshot

__all__ = [
    "DynamicsRun", "DynamicsStore", "MIRROR_GROUPS", "ProbeTokens", "REDUCING_GROUPS", "Snapshot",
    "build_probe_tokens", "group_rows", "load_run", "mean_activations", "summary_metrics", "take_snapshot", "toxic_top_n",
]
