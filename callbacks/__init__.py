"""Lightning callbacks of lightning-dpo, referenced from `conf/callbacks/*.yaml` by `_target_`."""

from lightning_dpo.callbacks.checkpoint_state import MetricsInCheckpoint, RunConfigInCheckpoint
from lightning_dpo.callbacks.neuron_dynamics import NeuronDynamicsCallback
from lightning_dpo.callbacks.periodic import PeriodicMeasurement
from lightning_dpo.callbacks.progress import StepProgressBar
from lightning_dpo.callbacks.stop_checkpoint import StopCheckpoint
from lightning_dpo.callbacks.toxicity_eval import ToxicityEvalCallback

__all__ = [
    "MetricsInCheckpoint",
    "NeuronDynamicsCallback",
    "PeriodicMeasurement",
    "RunConfigInCheckpoint",
    "StepProgressBar",
    "StopCheckpoint",
    "ToxicityEvalCallback",
]
