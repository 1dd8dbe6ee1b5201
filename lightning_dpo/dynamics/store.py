"""The dynamics files of a run (a public contract) and the reader API.

<run_dir>/probe.safetensors                 the probe direction (tensor `direction`)
<run_dir>/dynamics/tokens.safetensors       input_ids, attention_mask, positions (fixed mode)
<run_dir>/dynamics/step_<step:07d>.safetensors
                                            mean_activation, value_projection, value_norm:
                                            float32 (n_layers, d_mlp); metadata: step
<run_dir>/dynamics/groups.csv               step,layer,group,count,delta_sum,share (layer `all` = totals)
<run_dir>/dynamics/meta.json                probe-set source, position mode, top_n, and the size and
                                            sha256 of every snapshot file

Every file is written atomically. The snapshots are the source of truth: everything logged is
recomputable from them (`load_run(run_dir)` returns them, `lightning_dpo.dynamics.group_rows`
recomputes groups.csv), and a resumed run verifies them against the checksums its checkpoint
holds and rebuilds groups.csv from them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lightning_dpo.neurons.groups import GROUPS_CSV_COLUMNS, group_rows
from lightning_dpo.neurons.snapshot import ProbeTokens, Snapshot
from lightning_dpo.utils.errors import DataError
from lightning_dpo.utils.io import atomic_save, atomic_write_csv, atomic_write_json


def step_file(directory: Path, step: int) -> Path:
    return directory / f"step_{step:07d}.safetensors"


def file_digest(path: Path) -> str | None:
    """sha256 of a file's bytes, or None when it does not exist."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


class DynamicsStore:
    """Writes one run's dynamics files (rank 0 only)."""

    def __init__(self, run_dir: str | Path, subdir: str = "dynamics"):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / subdir
        self.group_rows: list[dict[str, Any]] = []
        self.meta: dict[str, Any] = {}
        self.digests: dict[int, str] = {}  # step -> sha256 of its snapshot file (kept in the checkpoint)

    def write_meta(self, meta: dict[str, Any] | None = None) -> None:
        if meta is not None:
            self.meta = dict(meta)
        files = {str(step): {"bytes": step_file(self.dir, step).stat().st_size, "sha256": digest}
                 for step, digest in sorted(self.digests.items()) if step_file(self.dir, step).exists()}
        atomic_write_json(self.dir / "meta.json", {**self.meta, "snapshots": files})

    def write_tokens(self, tokens: ProbeTokens) -> None:
        tensors = {k: v.contiguous() for k, v in tokens.to_dict().items()}
        atomic_save(self.dir / "tokens.safetensors", lambda tmp: save_file(tensors, str(tmp)))

    def write_snapshot(self, snapshot: Snapshot) -> str:
        tensors = {
            "mean_activation": snapshot.mean_activation.float().contiguous(),
            "value_projection": snapshot.value_projection.float().contiguous(),
            "value_norm": snapshot.value_norm.float().contiguous(),
        }
        path = step_file(self.dir, snapshot.step)
        atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata={"step": str(snapshot.step)}))
        self.digests[snapshot.step] = file_digest(path)
        self.write_meta()
        return self.digests[snapshot.step]

    def add_group_rows(self, rows: list[dict[str, Any]]) -> None:
        steps = {r["step"] for r in rows}
        self.group_rows = [r for r in self.group_rows if r["step"] not in steps] + rows
        atomic_write_csv(self.dir / "groups.csv", GROUPS_CSV_COLUMNS, self.group_rows)

    def restore(self, steps: list[int], digests: dict[int, str], baseline: Snapshot) -> None:
        """On resume: keep exactly the snapshots of `steps`, each verified against the checksum the
        checkpoint recorded, and rebuild groups.csv from them. A damaged step-0 snapshot is written
        again from the baseline in the checkpoint; any other one cannot be rebuilt (the weights of
        its step are gone), so the run stops naming it."""
        self.digests = dict(digests)
        for step in steps:
            path = step_file(self.dir, step)
            expected = digests.get(step)
            found = file_digest(path)
            if expected is not None and found == expected:
                continue
            if expected is None and found is not None:  # a checkpoint without checksums: readable is all we can ask
                read_snapshot(path)
                self.digests[step] = found
                continue
            if step == baseline.step:
                self.write_snapshot(baseline)
                continue
            what = "is missing" if found is None else "does not match the checksum recorded in the checkpoint (damaged or replaced)"
            raise DataError(str(path), f"the snapshot of step {step} {what}, and it cannot be rebuilt without the weights of "
                            "that step: restore the file, or resume from a checkpoint written before it")
        for path in self.dir.glob("step_*.safetensors"):
            if int(path.stem.split("_")[1]) not in steps:
                path.unlink()  # a future the checkpoint never reached
        self.digests = {s: d for s, d in self.digests.items() if s in steps}
        self.group_rows = [r for s in steps for r in group_rows(baseline, read_snapshot(step_file(self.dir, s)))]
        atomic_write_csv(self.dir / "groups.csv", GROUPS_CSV_COLUMNS, self.group_rows)
        self.write_meta()


def read_snapshot(path: Path) -> Snapshot:
    try:
        with safe_open(str(path), framework="pt") as handle:
            step = int((handle.metadata() or {}).get("step", path.stem.split("_")[1]))
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        return Snapshot(step, tensors["mean_activation"], tensors["value_projection"], tensors["value_norm"])
    except Exception as exc:  # truncated, not safetensors, or a tensor missing
        raise DataError(str(path), f"cannot read the snapshot ({type(exc).__name__}: {exc}); the file is damaged") from None


def _read_groups(path: Path) -> Any:
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype={"layer": str})
    except Exception as exc:
        raise DataError(str(path), f"cannot read it as CSV ({type(exc).__name__}: {exc})") from None
    missing = [c for c in GROUPS_CSV_COLUMNS if c not in frame.columns]
    bad = [c for c in ("step", "count", "delta_sum") if c in frame.columns and not pd.api.types.is_numeric_dtype(frame[c])]
    if missing or bad:
        raise DataError(str(path), f"damaged: {'missing columns ' + str(missing) if missing else 'non-numeric values in ' + str(bad)}")
    return frame


@dataclass
class DynamicsRun:
    """A run's dynamics, as arrays and a data frame."""

    run_dir: Path
    steps: list[int]
    mean_activation: Any  # numpy (n_snapshots, n_layers, d_mlp)
    value_projection: Any
    value_norm: Any
    groups: Any  # pandas DataFrame with the groups.csv columns
    tokens: dict[str, Any] = field(default_factory=dict)  # numpy arrays (fixed mode)
    probe: Any = None  # numpy (d_model,)
    meta: dict[str, Any] = field(default_factory=dict)

    def snapshot(self, step: int) -> Snapshot:
        i = self.steps.index(step)
        return Snapshot(step, *(torch.from_numpy(a[i]) for a in (self.mean_activation, self.value_projection, self.value_norm)))

    @property
    def contribution(self) -> Any:
        return self.mean_activation * self.value_projection


def load_run(run_dir: str | Path, subdir: str = "dynamics") -> DynamicsRun:
    """Read a run's dynamics files (see the module docstring) into arrays and a data frame."""
    import numpy as np
    import pandas as pd

    run_dir = Path(run_dir)
    directory = run_dir / subdir
    paths = sorted(directory.glob("step_*.safetensors"))
    if not paths:
        raise FileNotFoundError(f"{directory}: no dynamics snapshots (was the NeuronDynamicsCallback enabled?)")
    snapshots = [read_snapshot(p) for p in paths]
    stack = lambda name: np.stack([getattr(s, name).numpy() for s in snapshots])  # noqa: E731
    groups_path = directory / "groups.csv"
    groups = _read_groups(groups_path) if groups_path.exists() else pd.DataFrame(columns=GROUPS_CSV_COLUMNS)
    tokens = {}
    if (directory / "tokens.safetensors").exists():
        with safe_open(str(directory / "tokens.safetensors"), framework="np") as handle:
            tokens = {k: handle.get_tensor(k) for k in handle.keys()}
    probe = None
    if (run_dir / "probe.safetensors").exists():
        with safe_open(str(run_dir / "probe.safetensors"), framework="np") as handle:
            probe = handle.get_tensor("direction")
    meta = {}
    if (directory / "meta.json").exists():
        try:
            meta = json.loads((directory / "meta.json").read_text())
        except ValueError as exc:
            raise DataError(str(directory / "meta.json"), f"not JSON ({exc})") from None
    return DynamicsRun(
        run_dir, [s.step for s in snapshots], stack("mean_activation"), stack("value_projection"), stack("value_norm"),
        groups, tokens, probe, meta,
    )
