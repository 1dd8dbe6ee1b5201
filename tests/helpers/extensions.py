"""A user's own scorer, probe source and loss, defined outside the package (the extension points)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_dpo.model.losses import LossTerms
from lightning_dpo.neurons.probe import Probe, ProbeSource


class ShoutScorer:
    """Toxic when a text has more than `threshold` capital letters."""

    def __init__(self, threshold: int = 3):
        self.threshold = threshold
        self.name = f"shout>{threshold}"

    def score(self, texts):
        return [float(sum(c.isupper() for c in t) > self.threshold) for t in texts]


class FirstAxisProbe(ProbeSource):
    """The residual stream's first axis (or any axis) as a direction."""

    def __init__(self, axis: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis

    def direction(self, model, tokenizer) -> Probe:
        d = model.get_input_embeddings().weight.shape[1]
        return Probe(torch.nn.functional.one_hot(torch.tensor(self.axis), d).float(), {"source": f"axis {self.axis}"})


def margin_squared(t: LossTerms) -> torch.Tensor:
    """A made-up loss: the squared softplus of the negative margin."""
    return F.softplus(-t.beta * t.delta) ** 2
