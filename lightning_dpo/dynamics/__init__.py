"""Where a hook becomes a group share: the measurement pipeline of the neuron dynamics, read top to bottom.

    probe_set.py    the fixed probe sequences, the positions that are averaged, the buckets of prompts
    measure.py      one forward over the probe set (activation sums and component vectors per bucket),
                    then projections on any directions: a `Measurement`; `Snapshot` (one probe)
    components.py   the exact split of the residual stream into embeddings, heads, biases and MLPs
    groups.py       D_i = P_i(0) - P_i(t) and the eight groups (TP-, TN+, AP+, AN- and mirrors), stacked
    nulls.py        random directions (uniform, covariance) and the null's statistics
    uncertainty.py  the jackknife over buckets of prompts
    rows.py         the typed rows of groups.csv, components.csv and null.csv from two measurements
    metrics.py      the metric names (dynamics/...) and the scalars of a snapshot
    store.py        the files (a public contract) and `load_run`
    figures.py      the figures drawn from those files
    selection.py    which neurons the papers' interventions touch, chosen from snapshots

The model surgery these read through (hooks, value vectors, interventions): lightning_dpo/neurons/.
The schedule, logging and state during training: callbacks/neuron_dynamics.py.
"""

from lightning_dpo.dynamics.groups import GROUPS, MIRROR_GROUPS, REDUCING_GROUPS, group_masks, toxic_top_n
from lightning_dpo.dynamics.measure import Measurement, Snapshot, mean_activations, measure, take_snapshot
from lightning_dpo.dynamics.probe_set import ProbeTokens, build_probe_tokens
from lightning_dpo.dynamics.rows import group_rows, snapshot_tables
from lightning_dpo.dynamics.store import DynamicsRun, DynamicsStore, load_run

__all__ = [
    "GROUPS",
    "MIRROR_GROUPS",
    "REDUCING_GROUPS",
    "DynamicsRun",
    "DynamicsStore",
    "Measurement",
    "ProbeTokens",
    "Snapshot",
    "build_probe_tokens",
    "group_masks",
    "group_rows",
    "load_run",
    "mean_activations",
    "measure",
    "snapshot_tables",
    "take_snapshot",
    "toxic_top_n",
]
