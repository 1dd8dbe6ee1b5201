"""Lightning callbacks of lightning-dpo, referenced from `conf/callbacks/*.yaml` by `_target_`."""

from callbacks.graceful_shutdown import GracefulShutdown
from callbacks.neuron_dynamics import NeuronDynamicsCallback
from callbacks.periodic import PeriodicMeasurement
from callbacks.toxicity_eval import ToxicityEvalCallback

__all__ = ["GracefulShutdown", "NeuronDynamicsCallback", "PeriodicMeasurement", "ToxicityEvalCallback"]
