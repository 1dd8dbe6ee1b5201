"""Lightning callbacks of lightning-dpo, referenced from `conf/callbacks/*.yaml` by `_target_`."""

from callbacks.stop_checkpoint import StopCheckpoint
from callbacks.neuron_dynamics import NeuronDynamicsCallback
from callbacks.periodic import PeriodicMeasurement
from callbacks.toxicity_eval import ToxicityEvalCallback

__all__ = ["NeuronDynamicsCallback", "PeriodicMeasurement", "StopCheckpoint", "ToxicityEvalCallback"]
