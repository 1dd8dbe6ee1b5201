"""Lightning callbacks of lightning-dpo, referenced from `conf/callbacks/*.yaml` by `_target_`."""

from callbacks.graceful_shutdown import GracefulShutdown
# NEURON_DYNAMICS_PLACEHOLDER
from callbacks.periodic import PeriodicMeasurement
from callbacks.toxicity_eval import ToxicityEvalCallback

__all__ = ["GracefulShutdown", "NeuronDynamicsCallback", "PeriodicMeasurement", "ToxicityEvalCallback"]
