"""Neuron dynamics: where a hook becomes a group share.

    probe_set.py  the fixed probe sequences and the positions that are averaged
    snapshot.py   mean activations a_i and value projections p_i of every MLP neuron
    groups.py     contributions P_i = a_i p_i, changes D_i = P_i(0) - P_i(t), the eight groups, shares
    store.py      the files of a run (dynamics/*.safetensors, groups.csv) and `load_run`
"""

from lightning_dpo.dynamics.groups import MIRROR_GROUPS, REDUCING_GROUPS, group_rows, summary_metrics, toxic_top_n
from lightning_dpo.dynamics.probe_set import ProbeTokens, build_probe_tokens
from lightning_dpo.dynamics.snapshot import Snapshot, mean_activations, take_snapshot
from lightning_dpo.dynamics.store import DynamicsRun, DynamicsStore, load_run

__all__ = [
    "DynamicsRun", "DynamicsStore", "MIRROR_GROUPS", "ProbeTokens", "REDUCING_GROUPS", "Snapshot",
    "build_probe_tokens", "group_rows", "load_run", "mean_activations", "summary_metrics", "take_snapshot", "toxic_top_n",
]
