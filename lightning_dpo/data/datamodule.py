"""PreferenceDataModule: rows -> seeded split -> tokenized pairs -> resumable dataloaders."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from functools import partial
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_dpo.data.records import (
    PreferenceRecord,
    ReadReport,
    read_preference_rows,
)
from lightning_dpo.data.sampler import ResumableSampler
from lightning_dpo.data.tokenize import (
    TokenizedPair,
    TruncationReport,
    collate_pairs,
    pad_id,
    tokenize_pairs,
)
from lightning_dpo.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class PreferenceDataset(Dataset):
    """Tokenized pairs; precomputed reference log-probs can be attached by dataset index."""

    def __init__(self, pairs: list[TokenizedPair]):
        self.pairs = pairs
        self.reference_logps: torch.Tensor | None = None  # (num_pairs, 2): chosen, rejected

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        pair = self.pairs[i]
        item = {
            "index": i,
            "prompt_ids": pair.prompt_ids,
            "chosen_ids": pair.chosen_ids,
            "rejected_ids": pair.rejected_ids,
        }
        if self.reference_logps is not None:
            item["ref_chosen_logps"] = float(self.reference_logps[i, 0])
            item["ref_rejected_logps"] = float(self.reference_logps[i, 1])
        return item


def split_sizes(total: int, val_size: int | float) -> int:
    """Number of validation rows for an absolute `val_size` (int) or a fraction (0 < f < 1)."""
    if isinstance(val_size, float) and not float(val_size).is_integer():
        if not 0 < val_size < 1:
            raise ConfigError("data.val_size", f"a fraction must be in (0, 1), got {val_size}")
        return max(1, round(total * val_size))
    n = int(val_size)
    if n < 0:
        raise ConfigError("data.val_size", f"must be >= 0, got {val_size}")
    return n


class PreferenceDataModule(L.LightningDataModule):
    """Preference pairs from a file (`path`) or a `datasets` id (`hub_id`).

    The rows are shuffled once with `seed` (`shuffle=false` keeps the file's order, as the
    published code, whose shuffle had no effect), the first `val_size` rows (a count, or a
    fraction if < 1; `val_split=last`: the last ones, as the published split) form the validation
    set, and the training order of every epoch is a seeded permutation (or the file's order) that
    survives a mid-epoch resume.
    """

    def __init__(
        self,
        tokenizer: Any = None,
        path: str | None = None,
        hub_id: str | None = None,
        split: str = "train",
        format: str = "trl",
        fields: Mapping[str, str] | None = None,
        max_prompt_length: int = 64,
        max_completion_length: int = 64,
        prompt_truncation: str = "keep_end",
        append_eos: bool = True,
        shuffle: bool = True,
        val_split: str = "first",
        val_size: int | float = 64,
        seed: int = 42,
        batch_size: int = 4,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        pad_to_multiple_of: int | None = None,
        on_bad_row: str = "error",
    ):
        super().__init__()
        if batch_size < 1:
            raise ConfigError("data.batch_size", f"must be >= 1, got {batch_size}")
        if eval_batch_size < 1:
            raise ConfigError("data.eval_batch_size", f"must be >= 1, got {eval_batch_size}")
        if val_split not in ("first", "last"):
            raise ConfigError("data.val_split", f"got {val_split!r}; accepted: ['first', 'last']")
        self.prompt_truncation, self.append_eos, self.shuffle, self.val_split = prompt_truncation, append_eos, shuffle, val_split
        self.tokenizer = tokenizer
        self.path, self.hub_id, self.split = path, hub_id, split
        self.format, self.fields, self.on_bad_row = format, dict(fields or {}), on_bad_row
        self.max_prompt_length, self.max_completion_length = max_prompt_length, max_completion_length
        self.val_size, self.seed = val_size, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.pad_to_multiple_of = num_workers, pad_to_multiple_of
        self.train_dataset: PreferenceDataset | None = None
        self.val_dataset: PreferenceDataset | None = None
        self.read_report: ReadReport | None = None
        self.truncation_report: TruncationReport | None = None
        self._train_sampler: ResumableSampler | None = None

    # -- loading ---------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        if self.tokenizer is None:
            raise ConfigError("model.tokenizer", "the data module needs a tokenizer")
        records, self.read_report = read_preference_rows(self.path, self.hub_id, self.split, self.format, self.fields, self.on_bad_row)
        source = self.path or self.hub_id
        log.debug(self.read_report.summary())  # the run prints them once, in `summary()`
        if not records:
            raise DataError(str(source), "no usable preference pairs (empty after filtering bad rows)")
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed)
            order = torch.randperm(len(records), generator=generator).tolist()
            records = [records[i] for i in order]
        pairs, self.truncation_report = tokenize_pairs(
            self.tokenizer, records, self.max_prompt_length, self.max_completion_length, self.prompt_truncation, self.append_eos
        )
        log.debug("tokenized %d pairs: %s", len(pairs), self.truncation_report.summary())
        if not pairs:
            raise DataError(
                str(source),
                f"no usable preference pairs: all {len(records)} have the same chosen and rejected "
                "completion (after truncation to data.max_completion_length), which teaches nothing",
            )
        n_val = split_sizes(len(pairs), self.val_size)
        if n_val >= len(pairs):
            raise ConfigError("data.val_size", f"{self.val_size} leaves no training pairs out of {len(pairs)} in {source}")
        if self.val_split == "last":
            val, train = pairs[len(pairs) - n_val :], pairs[: len(pairs) - n_val]
        else:
            val, train = pairs[:n_val], pairs[n_val:]
        self.val_dataset = PreferenceDataset(_reindex(val))
        self.train_dataset = PreferenceDataset(_reindex(train))

    @property
    def val_records(self) -> list[PreferenceRecord]:
        """The validation pairs' texts (the held-out set measurements default to)."""
        return [p.record for p in self.val_dataset.pairs if p.record is not None] if self.val_dataset is not None else []

    def summary(self) -> str:
        lines = []
        if self.read_report:
            lines.append(self.read_report.summary())
        if self.truncation_report:
            lines.append(self.truncation_report.summary())
        if self.train_dataset is not None and self.val_dataset is not None:
            lines.append(f"{len(self.train_dataset)} training pairs, {len(self.val_dataset)} validation pairs")
        return "; ".join(lines)

    # -- loaders ---------------------------------------------------------------------------------
    def _collate(self):
        return partial(collate_pairs, pad_token_id=pad_id(self.tokenizer), pad_to_multiple_of=self.pad_to_multiple_of)

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None, "setup('fit') builds the datasets"
        rank, world = self._rank_world()
        sampler = ResumableSampler(
            self.train_dataset, seed=self.seed, shuffle=self.shuffle, rank=rank, world_size=world, consumed=self._consumed
        )
        self._train_sampler = sampler
        return ResumableDataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=self._collate(),
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        assert self.val_dataset is not None, "setup('fit') builds the datasets"
        rank, world = self._rank_world()
        # every rank its own slice, without padding, so that no pair is counted twice
        sampler = list(range(rank, len(self.val_dataset), world))
        return DataLoader(
            self.val_dataset,
            batch_size=self.eval_batch_size,
            sampler=sampler,
            collate_fn=self._collate(),
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    def _consumed(self, epoch: int) -> int:
        """This rank's samples of `epoch` that the optimizer steps behind the weights already used."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.global_step == 0 or self._train_sampler is None:
            return 0
        batches_per_epoch = math.ceil(len(self._train_sampler) / self.batch_size)
        limit = trainer.limit_train_batches
        if isinstance(limit, int):
            batches_per_epoch = min(batches_per_epoch, limit)
        elif limit is not None and limit < 1.0:
            batches_per_epoch = int(batches_per_epoch * limit)
        # Lightning steps at an epoch's last batch even when the accumulation is incomplete
        steps_per_epoch = math.ceil(batches_per_epoch / trainer.accumulate_grad_batches)
        steps_in_epoch = min(max(trainer.global_step - epoch * steps_per_epoch, 0), steps_per_epoch)
        batches = min(steps_in_epoch * trainer.accumulate_grad_batches, batches_per_epoch)
        return batches * self.batch_size

    # -- resumable-loader protocol: lets Lightning know mid-epoch resume is exact -----------------
    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "batch_size"):
            if key in state and state[key] != getattr(self, key):
                log.warning(
                    "resuming with data.%s=%s but the checkpoint was trained with %s: the data order changes",
                    key,
                    getattr(self, key),
                    state[key],
                )


class ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning treats as resumable (it implements the state protocol).

    The position itself comes from the restored step count (see `ResumableSampler`); the state
    saved here only lets a resume check that the order is the same one.
    """

    def state_dict(self) -> dict[str, Any]:
        sampler = self.sampler
        return {"seed": sampler.seed, "num_samples": len(sampler.dataset), "world_size": sampler.num_replicas}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        current = self.state_dict()
        if state != current:
            log.warning("the training data order differs from the checkpoint's (%s vs %s)", current, state)


def _reindex(pairs: list[TokenizedPair]) -> list[TokenizedPair]:
    return [TokenizedPair(i, p.prompt_ids, p.chosen_ids, p.rejected_ids, p.record) for i, p in enumerate(pairs)]
