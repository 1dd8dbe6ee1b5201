"""Precomputed reference log-probs, cached on disk so the reference need not stay in memory.

The cache file is keyed by a fingerprint of the tokenized data (train and validation, in order)
and of the reference model (class, config and a sha256 of every parameter), so a change
to either computes a fresh file, and a resumed run finds the same one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from lightning_dpo.data.datamodule import PreferenceDataset
from lightning_dpo.model.fingerprint import model_fingerprint
from lightning_dpo.model.logprobs import sequence_logps
from lightning_dpo.utils.io import atomic_save_safetensors

log = logging.getLogger(__name__)


def data_fingerprint(*datasets: PreferenceDataset) -> str:
    digest = hashlib.sha256()
    for dataset in datasets:
        digest.update(f"dataset:{len(dataset)}".encode())
        for pair in dataset.pairs:
            for ids in (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids):
                digest.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
                digest.update(b"|")
    return digest.hexdigest()[:16]


@torch.no_grad()
def compute_reference_logps(
    reference: nn.Module, dataset: PreferenceDataset, collate: Callable, batch_size: int, device: torch.device
) -> torch.Tensor:
    """(num_pairs, 2) summed completion log-probs (chosen, rejected), in dataset order."""
    out = torch.zeros(len(dataset), 2, dtype=torch.float32)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch in loader:
        ids = batch["input_ids"].to(device)
        logps, _ = sequence_logps(reference, ids, batch["attention_mask"].to(device), batch["completion_mask"].to(device))
        n = ids.shape[0] // 2
        out[batch["index"], 0] = logps[:n].float().cpu()
        out[batch["index"], 1] = logps[n:].float().cpu()
    return out


def attach_reference_logps(
    reference: nn.Module,
    datamodule: Any,
    cache_dir: str | Path,
    device: torch.device,
    is_global_zero: bool = True,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Load (or compute once and cache) the reference log-probs and attach them to the datasets."""
    datasets = {"train": datamodule.train_dataset, "val": datamodule.val_dataset}
    key = f"{data_fingerprint(*datasets.values())}-{model_fingerprint(reference)}"
    path = Path(cache_dir) / f"reference_logps-{key}.safetensors"
    if not path.exists() and is_global_zero:
        log.info("computing reference log-probs for %s pairs -> %s", sum(map(len, datasets.values())), path)
        was_device = next(reference.parameters()).device
        reference.to(device)
        tensors = {
            name: compute_reference_logps(reference, ds, datamodule._collate(), datamodule.eval_batch_size, device)
            for name, ds in datasets.items()
        }
        reference.to(was_device)
        atomic_save_safetensors(path, tensors, metadata={"key": key})
    barrier()
    tensors = load_file(str(path))
    for name, dataset in datasets.items():
        if tensors[name].shape[0] != len(dataset):
            raise RuntimeError(f"{path}: cached reference log-probs do not match the {name} set; delete the file")
        dataset.reference_logps = tensors[name]
    log.info("using precomputed reference log-probs from %s", path)
    return path
