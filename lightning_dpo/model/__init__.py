"""Model side: policy/reference loading, sequence log-probs, the loss table, the LightningModule."""

from lightning_dpo.model.losses import LOSS_TYPES, PreferenceLoss
from lightning_dpo.model.module import METRICS, DPOModule

__all__ = ["LOSS_TYPES", "METRICS", "DPOModule", "PreferenceLoss"]
