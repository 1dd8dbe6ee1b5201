"""Each loss of the table against an independent, element-by-element computation in Python floats.

(tests/test_losses_vs_trl.py checks the same table against TRL itself on a tiny model.)
"""

import math

import pytest
import torch

from lightning_dpo.model.losses import LOSS_TYPES, PreferenceLoss
from lightning_dpo.utils.errors import ConfigError

pytestmark = pytest.mark.unit  # the unit tier: `pytest -m unit`, under a minute


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return math.exp(log_sigmoid(x))


def smoothed(z: float, eps: float) -> float:
    return -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)


EPS = {"robust": 0.2, "exo_pair": 0.01, "aot": 0.1, "aot_unpaired": 0.1, "simpo": 0.1}


def reference_losses(kind, beta, eps, pc, pr, rc, rr, lc, lr, nll=None, tau=0.05, gamma=0.5):
    """Per-pair losses for the whole batch (lists of floats in, list out)."""
    n = len(pc)
    rw = [pc[i] - rc[i] for i in range(n)]
    rl = [pr[i] - rr[i] for i in range(n)]
    d = [rw[i] - rl[i] for i in range(n)]
    out = []
    for i in range(n):
        z = beta * d[i]
        if kind == "sigmoid":
            out.append(-log_sigmoid(z))
        elif kind == "hinge":
            out.append(max(0.0, 1 - z))
        elif kind == "ipo":
            out.append((rw[i] / lc[i] - rl[i] / lr[i] - 1 / (2 * beta)) ** 2)
        elif kind == "exo_pair":  # KL between [q, 1-q] and [1-eps, eps]
            q, log_q, log_1mq = sigmoid(z), log_sigmoid(z), log_sigmoid(-z)  # logs taken stably: 1 - q underflows
            out.append(q * (log_q - math.log(1 - eps)) + (1 - q) * (log_1mq - math.log(eps)))
        elif kind == "nca_pair":
            out.append(-log_sigmoid(beta * rw[i]) - 0.5 * log_sigmoid(-beta * rw[i]) - 0.5 * log_sigmoid(-beta * rl[i]))
        elif kind == "robust":
            out.append(((1 - eps) * -log_sigmoid(z) + eps * log_sigmoid(-z)) / (1 - 2 * eps))
        elif kind == "bco_pair":
            out.append(-log_sigmoid(beta * rw[i]) - log_sigmoid(-beta * rl[i]))
        elif kind == "sppo_hard":
            out.append((rw[i] - 1 / (2 * beta)) ** 2 + (rl[i] + 1 / (2 * beta)) ** 2)
        elif kind == "aot":
            pol = sorted(pc[j] - pr[j] for j in range(n))
            ref = sorted(rc[j] - rr[j] for j in range(n))
            out.append(smoothed(beta * (pol[i] - ref[i]), eps))
        elif kind == "aot_unpaired":
            out.append(smoothed(beta * (sorted(rw)[i] - sorted(rl)[i]), eps))
        elif kind == "apo_zero":
            out.append(1 - sigmoid(beta * rw[i]) + sigmoid(beta * rl[i]))
        elif kind == "apo_down":
            out.append(sigmoid(beta * rw[i]) + 1 - sigmoid(beta * (rw[i] - rl[i])))
        elif kind == "discopop":
            m = sigmoid(z / tau)
            out.append((1 - m) * -log_sigmoid(z) + m * math.exp(-z))
        elif kind == "sft":
            out.append(-sum(pc) / sum(lc))
        elif kind == "sigmoid_norm":
            out.append(-log_sigmoid(beta * (rw[i] / lc[i] - rl[i] / lr[i])))
        elif kind == "simpo":
            out.append(smoothed(beta * (pc[i] / lc[i] - pr[i] / lr[i]) - gamma, eps))
        elif kind == "orpo":  # odds(p) = p / (1 - p) on the mean token probability
            pw, pl = math.exp(pc[i] / lc[i]), math.exp(pr[i] / lr[i])
            log_odds = math.log(pw / (1 - pw)) - math.log(pl / (1 - pl))
            out.append(nll - beta * log_sigmoid(log_odds))
        else:
            raise AssertionError(kind)
    return out


@pytest.fixture
def logps():
    g = torch.Generator().manual_seed(0)
    n = 16
    return (
        -torch.rand(n, generator=g, dtype=torch.float64) * 40,
        -torch.rand(n, generator=g, dtype=torch.float64) * 40,
        -torch.rand(n, generator=g, dtype=torch.float64) * 40,
        -torch.rand(n, generator=g, dtype=torch.float64) * 40,
        torch.randint(1, 30, (n,), generator=g).double(),
        torch.randint(1, 30, (n,), generator=g).double(),
    )


def _floats(logps):
    return [t.tolist() for t in logps]


@pytest.mark.parametrize("kind", LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0])
def test_loss_matches_formula(kind, beta, logps):
    eps = EPS.get(kind, 0.0)
    nll = torch.tensor(2.5, dtype=torch.float64)
    loss = PreferenceLoss(type=kind, beta=beta, label_smoothing=eps)
    out = loss(*logps, chosen_sequence_nll=nll)
    expected = reference_losses(kind, beta, eps, *_floats(logps), nll=2.5)
    assert torch.allclose(out.losses.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-9)
    assert out.loss.item() == pytest.approx(sum(expected) / len(expected), rel=1e-6)
    pc, pr, rc, rr, lc, lr = logps
    if kind in ("simpo", "orpo"):  # reference-free: the mean token log-prob is the reward
        assert torch.allclose(out.chosen_rewards, beta * pc / lc) and torch.allclose(out.rejected_rewards, beta * pr / lr)
    else:
        assert torch.allclose(out.chosen_rewards, beta * (pc - rc)) and torch.allclose(out.rejected_rewards, beta * (pr - rr))


def test_weighted_combination_is_the_weighted_sum_of_batch_means(logps):
    """MPO-style: loss.type=[sigmoid, sft, bco_pair] with loss.weights=[0.8, 0.2, 1.0]."""
    out = PreferenceLoss(type=["sigmoid", "sft", "bco_pair"], weights=[0.8, 0.2, 1.0], beta=0.1)(*logps)
    means = {k: sum(reference_losses(k, 0.1, 0.0, *_floats(logps))) / len(logps[0]) for k in ("sigmoid", "sft", "bco_pair")}
    assert out.loss.item() == pytest.approx(0.8 * means["sigmoid"] + 0.2 * means["sft"] + means["bco_pair"], rel=1e-9)


@pytest.mark.parametrize("divergence", ["forward_kl", "js_divergence", "alpha_divergence"])
def test_f_divergence_replaces_the_log_ratio_by_f_prime(divergence, logps):
    """f'(t) at t = pi/ref: forward KL 1 - 1/t; JS log(2t / (1 + t)); alpha (t^(alpha-1) - 1)/(alpha - 1)."""
    pc, pr, rc, rr, _, _ = _floats(logps)
    alpha = 0.3

    def f_prime(logratio):
        t = math.exp(logratio)
        if divergence == "forward_kl":
            return 1 - 1 / t
        if divergence == "js_divergence":
            return math.log(2 * t / (1 + t))
        return (t ** (alpha - 1) - 1) / (alpha - 1)

    out = PreferenceLoss(beta=0.5, f_divergence=divergence, f_alpha=alpha)(*logps)
    expected = [-log_sigmoid(0.5 * (f_prime(pc[i] - rc[i]) - f_prime(pr[i] - rr[i]))) for i in range(len(pc))]
    assert torch.allclose(out.losses, torch.tensor(expected, dtype=torch.float64), rtol=1e-6)
    assert torch.allclose(out.chosen_rewards, 0.5 * (logps[0] - logps[2]))  # rewards stay beta * log-ratio


def test_orpo_completion_nll_uses_the_chosen_completion_tokens(logps):
    pc, _, _, _, lc, _ = _floats(logps)
    out = PreferenceLoss(type="orpo", orpo_nll="completion", beta=0.1)(*logps)
    expected = reference_losses("orpo", 0.1, 0.0, *_floats(logps), nll=-sum(pc) / sum(lc))
    assert torch.allclose(out.losses.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6)


def test_reference_free_uses_zero_reference(logps):
    pc, pr, rc, rr, lc, lr = logps
    free = PreferenceLoss(beta=0.1, reference_free=True)(pc, pr, rc, rr, lc, lr)
    zero = PreferenceLoss(beta=0.1)(pc, pr, torch.zeros_like(rc), torch.zeros_like(rr), lc, lr)
    assert torch.equal(free.losses, zero.losses)
    assert torch.allclose(free.chosen_rewards, 0.1 * pc)


@pytest.mark.parametrize(
    "kind, needs",
    [("sigmoid", True), ("sft", True), ("simpo", False), ("orpo", False), (["simpo", "orpo"], False), (["simpo", "sigmoid"], True)],
)
def test_which_losses_need_a_reference(kind, needs):
    assert PreferenceLoss(type=kind).needs_reference is needs
    assert PreferenceLoss(type=kind, reference_free=True).needs_reference is False


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
        ({"beta": "abc"}, "loss.beta"),
        ({"type": "dpo++"}, "loss.type"),
        ({"type": []}, "loss.type"),
        ({"type": ["sigmoid", "sigmoid"]}, "loss.type"),
        ({"type": ["sigmoid", "sft"], "weights": [1.0]}, "loss.weights"),
        ({"type": "sigmoid", "weights": [float("nan")]}, "loss.weights"),
        ({"type": "sigmoid", "label_smoothing": 0.1}, "loss.label_smoothing"),
        ({"type": "robust", "label_smoothing": 0.5}, "loss.label_smoothing"),
        ({"type": "exo_pair"}, "loss.label_smoothing"),
        ({"type": "apo_zero", "f_divergence": "js_divergence"}, "loss.f_divergence"),
        ({"f_divergence": "hellinger"}, "loss.f_divergence"),
        ({"type": "discopop", "discopop_tau": 0.0}, "loss.discopop_tau"),
        ({"type": "orpo", "orpo_nll": "prompt"}, "loss.orpo_nll"),
        ({"kl_gamma": -0.1}, "loss.kl_gamma"),
        ({"kl_gamma": 0.1, "reference_free": True}, "loss.kl_gamma"),
        ({"kl_gamma": 0.1, "type": "simpo"}, "loss.kl_gamma"),
    ],
)
def test_invalid_loss_config_names_the_key(kwargs, key):
    with pytest.raises(ConfigError) as info:
        PreferenceLoss(**kwargs)
    assert info.value.key == key and key in str(info.value)
