"""Each loss of the table against an independent, element-by-element computation."""

import math

import pytest
import torch

from lightning_dpo.model.losses import LOSS_TYPES, PreferenceLoss
from lightning_dpo.utils.errors import ConfigError


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def reference_loss(kind, beta, eps, pc, pr, rc, rr, lc, lr):
    d = (pc - rc) - (pr - rr)
    if kind == "sigmoid":
        return -log_sigmoid(beta * d)
    if kind == "ipo":
        return ((pc - rc) / lc - (pr - rr) / lr - 1 / (2 * beta)) ** 2
    if kind == "hinge":
        return max(0.0, 1 - beta * d)
    if kind == "robust":
        return (-(1 - eps) * log_sigmoid(beta * d) + eps * log_sigmoid(-beta * d)) / (1 - 2 * eps)
    raise AssertionError(kind)


@pytest.fixture
def logps():
    g = torch.Generator().manual_seed(0)
    n = 16
    return (
        -torch.rand(n, generator=g, dtype=torch.float64) * 40, -torch.rand(n, generator=g, dtype=torch.float64) * 40,
        -torch.rand(n, generator=g, dtype=torch.float64) * 40, -torch.rand(n, generator=g, dtype=torch.float64) * 40,
        torch.randint(1, 30, (n,), generator=g).double(), torch.randint(1, 30, (n,), generator=g).double(),
    )


@pytest.mark.parametrize("kind", LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0])
def test_loss_matches_formula(kind, beta, logps):
    eps = 0.2 if kind == "robust" else 0.0
    loss = PreferenceLoss(type=kind, beta=beta, label_smoothing=eps)
    out = loss(*logps)
    expected = [reference_loss(kind, beta, eps, *(t[i].item() for t in logps)) for i in range(len(logps[0]))]
    assert torch.allclose(out.losses, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    assert out.loss.item() == pytest.approx(sum(expected) / len(expected), rel=1e-10)
    pc, pr, rc, rr = logps[:4]
    assert torch.allclose(out.chosen_rewards, beta * (pc - rc))
    assert torch.allclose(out.rejected_rewards, beta * (pr - rr))


def test_reference_free_uses_zero_reference(logps):
    pc, pr, rc, rr, lc, lr = logps
    free = PreferenceLoss(beta=0.1, reference_free=True)(pc, pr, rc, rr, lc, lr)
    zero = PreferenceLoss(beta=0.1)(pc, pr, torch.zeros_like(rc), torch.zeros_like(rr), lc, lr)
    assert torch.equal(free.losses, zero.losses)
    assert torch.allclose(free.chosen_rewards, 0.1 * pc)


def test_kl_penalty_is_added_with_its_weight(logps):
    penalty = torch.linspace(0, 1, len(logps[0]), dtype=torch.float64)
    base = PreferenceLoss(beta=0.1)(*logps)
    with_kl = PreferenceLoss(beta=0.1, kl_gamma=0.3)(*logps, kl_penalty=penalty)
    assert with_kl.loss.item() == pytest.approx(base.loss.item() + 0.3 * penalty.mean().item(), rel=1e-12)


def test_sigmoid_at_zero_margin_is_ln2():
    z = torch.zeros(4)
    out = PreferenceLoss(beta=0.1)(z, z, z, z, torch.ones(4), torch.ones(4))
    assert torch.equal(out.losses, torch.full((4,), math.log(2), dtype=torch.float32))


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"beta": 0.0}, "loss.beta"),
        ({"beta": -1.0}, "loss.beta"),
        ({"type": "dpo++"}, "loss.type"),
        ({"type": "sigmoid", "label_smoothing": 0.1}, "loss.label_smoothing"),
        ({"type": "robust", "label_smoothing": 0.5}, "loss.label_smoothing"),
        ({"kl_gamma": -0.1}, "loss.kl_gamma"),
        ({"kl_gamma": 0.1, "reference_free": True}, "loss.kl_gamma"),
    ],
)
def test_invalid_loss_config_names_the_key(kwargs, key):
    with pytest.raises(ConfigError) as info:
        PreferenceLoss(**kwargs)
    assert info.value.key == key and key in str(info.value)
