"""The three places the project reads or sets Lightning's internal state (training/lightning_compat.py),
against the installed Lightning: a version that moves them fails here, by name, not in a user's run."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_dpo.training.lightning_compat import end_training_at, is_last_batch, set_parallel_sizes

pytestmark = pytest.mark.unit  # the unit tier: `pytest -m unit`, under a minute


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Record(L.Callback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at, self.last_batch = stop_at, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.last_batch.append(is_last_batch(trainer))
        if self.stop_at is not None and trainer.global_step == self.stop_at:
            end_training_at(trainer, trainer.global_step)


def _fit(callback: _Record, **trainer_args) -> L.Trainer:
    data = DataLoader(TensorDataset(torch.randn(6, 2)), batch_size=2)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        **trainer_args,
    )
    trainer.fit(_Tiny(), data)
    return trainer


def test_end_training_at_ends_the_run_at_that_step_without_another_batch():
    callback = _Record(stop_at=2)
    trainer = _fit(callback, max_steps=5)
    assert trainer.global_step == 2 and len(callback.last_batch) == 2


def test_is_last_batch_marks_the_epochs_last_batch():
    callback = _Record()
    _fit(callback, max_epochs=2)
    assert callback.last_batch == [False, False, True, False, False, True]


def test_set_parallel_sizes_sets_the_mesh_sizes_model_parallel_reads():
    from lightning.pytorch.strategies import ModelParallelStrategy

    strategy = ModelParallelStrategy()
    assert strategy._data_parallel_size == "auto" and strategy._tensor_parallel_size == "auto"  # what setup_environment reads
    set_parallel_sizes(strategy, data_parallel=4, tensor_parallel=1)
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == (4, 1)
