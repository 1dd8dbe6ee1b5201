"""The preference-loss table: TRL 1.16's pairwise losses under TRL's names, plus SimPO and ORPO.

Each row below equals TRL 1.16 on the same weights and token ids (tests/test_losses_vs_trl.py
runs TRL itself). Notation, per pair: summed completion log-probs under the policy (pi_w, pi_l)
and the frozen reference (ref_w, ref_l); completion lengths len_w, len_l; the log-ratios
rho_w = pi_w - ref_w, rho_l = pi_l - ref_l; the scores s_w, s_l = f'(exp rho) of the chosen
f-divergence (reverse KL, DPO's default: s = rho); Delta = s_w - s_l; eps = label_smoothing;
sigma = the logistic function.

| type         | per-pair loss                                                              |
|--------------|----------------------------------------------------------------------------|
| sigmoid      | -log sigma(beta Delta)                        (DPO; `dpo` is accepted as a name for it) |
| hinge        | relu(1 - beta Delta)                                            (SLiC)     |
| ipo          | (s_w/len_w - s_l/len_l - 1/(2 beta))^2                          (IPO)      |
| exo_pair     | KL([q, 1-q] || [1-eps, eps]), q = sigma(beta Delta)             (EXO)      |
| nca_pair     | -log sigma(beta rho_w) - 0.5 log sigma(-beta rho_w) - 0.5 log sigma(-beta rho_l) |
| robust       | (-(1-eps) log sigma(beta Delta) + eps log sigma(-beta Delta)) / (1 - 2 eps) |
| bco_pair     | -log sigma(beta rho_w) - log sigma(-beta rho_l)    (stateless in TRL 1.16) |
| sppo_hard    | (rho_w - 1/(2 beta))^2 + (rho_l + 1/(2 beta))^2                            |
| aot          | label-smoothed sigmoid on sort(pi_w - pi_l) - sort(ref_w - ref_l) over the batch |
| aot_unpaired | label-smoothed sigmoid on sort(rho_w) - sort(rho_l) over the batch         |
| apo_zero     | 1 - sigma(beta rho_w) + sigma(beta rho_l)                                  |
| apo_down     | sigma(beta rho_w) + 1 - sigma(beta (rho_w - rho_l))                        |
| discopop     | (1-m) (-log sigma(z)) + m exp(-z), z = beta Delta, m = sigma(z / tau)      |
| sft          | mean over the batch's chosen completion tokens of -log p  (same for every pair) |
| sigmoid_norm | -log sigma(beta (s_w/len_w - s_l/len_l))                                   |
| simpo        | label-smoothed -log sigma(beta (pi_w/len_w - pi_l/len_l) - gamma)  (no reference; TRL's CPOTrainer, cpo_alpha=0) |
| orpo         | NLL(chosen) - beta log sigma(log odds(p_w) - log odds(p_l)), p = exp(pi/len)  (no reference; TRL's ORPOTrainer) |

A list of types (`loss.type=[sigmoid,sft] loss.weights=[1.0,0.2]`, as in MPO) optimises the
weighted sum of their batch means. Rewards are beta * rho (detached), as TRL's DPOTrainer logs
them; when every type is reference-free (simpo, orpo) they are beta * pi / len, as TRL's CPO and
ORPO trainers log them. `reference_free=True` sets the reference log-probs to 0 for any type.
The optional regulariser `kl_gamma` (Yang et al.) adds kl_gamma * (KL(ref || policy) on chosen +
on rejected), each the mean over completion tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from lightning_dpo.utils.errors import ConfigError

LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm", "simpo", "orpo",
)
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
# the types whose Delta goes through the f-divergence scores (the set TRL 1.16 accepts)
F_DIVERGENCE_TYPES = frozenset({"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"})
REFERENCE_FREE_TYPES = frozenset({"simpo", "orpo"})
LABEL_SMOOTHING_TYPES = frozenset({"robust", "exo_pair", "aot", "aot_unpaired", "simpo"})
ORPO_NLL = ("sequence", "completion")


@dataclass
class PairLogps:
    """What a batch gives the loss; every tensor is (n,) for n pairs unless noted."""

    policy_chosen: torch.Tensor  # summed completion log-probs
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor | None
    ref_rejected: torch.Tensor | None
    chosen_lengths: torch.Tensor  # completion tokens
    rejected_lengths: torch.Tensor
    chosen_sequence_nll: torch.Tensor | None = None  # scalar: mean -log p over prompt+chosen tokens (ORPO)


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, what is optimised
    losses: torch.Tensor  # per pair, before the KL regulariser; its mean is the loss
    chosen_rewards: torch.Tensor  # detached
    rejected_rewards: torch.Tensor  # detached


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, without cancellation (branch at -ln 2)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def f_divergence_scores(logratio: torch.Tensor, kind: str, alpha: float) -> torch.Tensor:
    """f'(t) at t = exp(logratio): the score that replaces the log-ratio in Delta."""
    if kind == "reverse_kl" or (kind == "alpha_divergence" and abs(alpha - 1.0) < 1e-6):
        return logratio
    if kind == "forward_kl":
        return 1 - torch.exp(-logratio)
    if kind == "js_divergence":
        return math.log(2) + F.logsigmoid(logratio)
    # alpha divergence: (t^(alpha-1) - 1) / (alpha - 1), exp clamped so it stays representable
    t = (alpha - 1.0) * logratio
    clamp_max = {torch.float16: 11.0, torch.bfloat16: 80.0}.get(t.dtype, 80.0)
    return (torch.exp(torch.clamp(t.float(), max=clamp_max)) - 1.0).to(t.dtype) / (alpha - 1.0)


def _smoothed_sigmoid(z: torch.Tensor, eps: float) -> torch.Tensor:
    return -F.logsigmoid(z) * (1 - eps) - F.logsigmoid(-z) * eps


class PreferenceLoss:
    """The configured loss (`loss.*` in the Hydra config), validated on construction."""

    def __init__(
        self,
        type: str | Sequence[str] = "sigmoid",
        beta: float = 0.1,
        weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        f_divergence: str = "reverse_kl",
        f_alpha: float = 0.5,
        discopop_tau: float = 0.05,
        simpo_gamma: float = 0.5,
        orpo_nll: str = "sequence",
        reference_free: bool = False,
        kl_gamma: float = 0.0,
    ):
        types = [type] if isinstance(type, str) else [str(t) for t in type]
        self.types = _check_types(types)
        self.weights = _check_weights(weights, len(self.types))
        _check_number("loss.beta", beta, low=0.0, strict=True)
        self.beta = float(beta)
        self.label_smoothing = _check_label_smoothing(float(label_smoothing), set(self.types))
        if f_divergence not in F_DIVERGENCES:
            raise ConfigError("loss.f_divergence", f"got {f_divergence!r}; accepted: {list(F_DIVERGENCES)}")
        if f_divergence != "reverse_kl" and not set(self.types) <= F_DIVERGENCE_TYPES:
            raise ConfigError("loss.f_divergence", f"{f_divergence} works only with loss.type in "
                              f"{sorted(F_DIVERGENCE_TYPES)}; got {self.types}")
        self.f_divergence, self.f_alpha = f_divergence, float(f_alpha)
        _check_number("loss.f_alpha", f_alpha)
        _check_number("loss.discopop_tau", discopop_tau, low=0.0, strict=True)
        _check_number("loss.simpo_gamma", simpo_gamma)
        self.discopop_tau, self.simpo_gamma = float(discopop_tau), float(simpo_gamma)
        if orpo_nll not in ORPO_NLL:
            raise ConfigError("loss.orpo_nll", f"got {orpo_nll!r}; accepted: {list(ORPO_NLL)}")
        self.orpo_nll = orpo_nll
        _check_number("loss.kl_gamma", kl_gamma, low=0.0)
        self.reference_free, self.kl_gamma = bool(reference_free), float(kl_gamma)
        if kl_gamma and not self.needs_reference:
            raise ConfigError("loss.kl_gamma", "a KL regulariser needs a reference model "
                              "(loss.reference_free=false and a loss.type other than simpo/orpo)")

    @property
    def type(self) -> str | list[str]:
        return self.types[0] if len(self.types) == 1 else list(self.types)

    @property
    def needs_reference(self) -> bool:
        return not self.reference_free and not set(self.types) <= REFERENCE_FREE_TYPES

    @property
    def needs_sequence_nll(self) -> bool:
        """ORPO's NLL over the prompt too: the policy's log-probs at prompt positions are needed."""
        return "orpo" in self.types and self.orpo_nll == "sequence"

    def to_dict(self) -> dict:
        keys = ("type", "beta", "weights", "label_smoothing", "f_divergence", "f_alpha", "discopop_tau",
                "simpo_gamma", "orpo_nll", "reference_free", "kl_gamma")
        return {k: getattr(self, k) for k in keys}

    def __call__(
        self,
        policy_chosen: torch.Tensor,
        policy_rejected: torch.Tensor,
        ref_chosen: torch.Tensor | None,
        ref_rejected: torch.Tensor | None,
        chosen_lengths: torch.Tensor,
        rejected_lengths: torch.Tensor,
        kl_penalty: torch.Tensor | None = None,
        chosen_sequence_nll: torch.Tensor | None = None,
    ) -> LossOutput:
        x = PairLogps(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_lengths, rejected_lengths,
                      chosen_sequence_nll)
        if self.reference_free or x.ref_chosen is None:
            x.ref_chosen, x.ref_rejected = torch.zeros_like(policy_chosen), torch.zeros_like(policy_rejected)
        losses = sum(w * self.per_pair(kind, x) for kind, w in zip(self.types, self.weights))
        loss = losses.mean()
        if self.kl_gamma and kl_penalty is not None:
            loss = loss + self.kl_gamma * kl_penalty.mean()
        if set(self.types) <= REFERENCE_FREE_TYPES:  # SimPO/ORPO: the length-normalised log-prob is the reward
            chosen, rejected = _average(x.policy_chosen, x.chosen_lengths), _average(x.policy_rejected, x.rejected_lengths)
        else:
            chosen, rejected = x.policy_chosen - x.ref_chosen, x.policy_rejected - x.ref_rejected
        return LossOutput(loss, losses, (self.beta * chosen).detach(), (self.beta * rejected).detach())

    def per_pair(self, kind: str, x: PairLogps) -> torch.Tensor:
        """One type's per-pair loss (n,)."""
        beta, eps = self.beta, self.label_smoothing
        rho_w, rho_l = x.policy_chosen - x.ref_chosen, x.policy_rejected - x.ref_rejected
        s_w = f_divergence_scores(rho_w, self.f_divergence, self.f_alpha)
        s_l = f_divergence_scores(rho_l, self.f_divergence, self.f_alpha)
        delta = s_w - s_l
        if kind == "sigmoid":
            return -F.logsigmoid(beta * delta)
        if kind == "hinge":
            return torch.relu(1 - beta * delta)
        if kind == "ipo":
            return (_average(s_w, x.chosen_lengths) - _average(s_l, x.rejected_lengths) - 1 / (2 * beta)) ** 2
        if kind == "exo_pair":
            z = beta * delta
            return (torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps))
                    + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps)))
        if kind == "nca_pair":
            return -F.logsigmoid(beta * rho_w) - 0.5 * F.logsigmoid(-beta * rho_w) - 0.5 * F.logsigmoid(-beta * rho_l)
        if kind == "robust":
            return (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)
        if kind == "bco_pair":
            return -F.logsigmoid(beta * rho_w) - F.logsigmoid(-beta * rho_l)
        if kind == "sppo_hard":
            return (rho_w - 0.5 / beta) ** 2 + (rho_l + 0.5 / beta) ** 2
        if kind == "aot":  # optimal transport over the batch: sorted margins against sorted reference margins
            sorted_policy = torch.sort(x.policy_chosen - x.policy_rejected, dim=0).values
            sorted_ref = torch.sort(x.ref_chosen - x.ref_rejected, dim=0).values
            return _smoothed_sigmoid(beta * (sorted_policy - sorted_ref), eps)
        if kind == "aot_unpaired":
            return _smoothed_sigmoid(beta * (torch.sort(rho_w, dim=0).values - torch.sort(rho_l, dim=0).values), eps)
        if kind == "apo_zero":
            return 1 - torch.sigmoid(beta * rho_w) + torch.sigmoid(beta * rho_l)
        if kind == "apo_down":
            return torch.sigmoid(beta * rho_w) + 1 - torch.sigmoid(beta * (rho_w - rho_l))
        if kind == "discopop":
            z = beta * delta
            mix = torch.sigmoid(z / self.discopop_tau)
            return -F.logsigmoid(z) * (1 - mix) + torch.exp(-z) * mix
        if kind == "sft":  # a token mean over the batch, the same value for every pair
            return (-x.policy_chosen.sum() / x.chosen_lengths.sum().clamp(min=1)).expand_as(x.policy_chosen)
        if kind == "sigmoid_norm":
            return -F.logsigmoid(beta * (_average(s_w, x.chosen_lengths) - _average(s_l, x.rejected_lengths)))
        avg_w, avg_l = _average(x.policy_chosen, x.chosen_lengths), _average(x.policy_rejected, x.rejected_lengths)
        if kind == "simpo":
            return _smoothed_sigmoid(beta * (avg_w - avg_l) - self.simpo_gamma, eps)
        # orpo: odds ratio on the average token probability, plus the chosen NLL
        avg_w, avg_l = avg_w.float(), avg_l.float()
        log_odds = (avg_w - avg_l) - (log1mexp(avg_w) - log1mexp(avg_l))
        if self.orpo_nll == "sequence":
            if x.chosen_sequence_nll is None:
                raise ValueError("orpo with orpo_nll=sequence needs chosen_sequence_nll (the prompt+chosen NLL)")
            nll = x.chosen_sequence_nll
        else:
            nll = -x.policy_chosen.sum() / x.chosen_lengths.sum().clamp(min=1)
        return nll - beta * F.logsigmoid(log_odds)


def _average(summed: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return summed / lengths.clamp(min=1)


# other names for a type: `dpo` is what the paper (and `loss=dpo`) calls TRL's `sigmoid`
ALIASES = {"dpo": "sigmoid"}


def _check_types(types: list[str]) -> list[str]:
    import difflib

    if not types:
        raise ConfigError("loss.type", "is an empty list; name at least one loss")
    types = [ALIASES.get(kind, kind) for kind in types]
    for kind in types:
        if kind not in LOSS_TYPES:
            close = difflib.get_close_matches(kind, [*LOSS_TYPES, *ALIASES], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError("loss.type", f"unknown loss {kind!r}{hint} accepted: {list(LOSS_TYPES)} (and 'dpo' for sigmoid)")
    if len(set(types)) != len(types):
        raise ConfigError("loss.type", f"names a loss twice: {types}; weight it once in loss.weights instead")
    return types


def _check_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    weights = list(weights)
    if len(weights) != count:
        raise ConfigError("loss.weights", f"has {len(weights)} weights for {count} loss types; give one per loss.type")
    for w in weights:
        _check_number("loss.weights", w)
    return [float(w) for w in weights]


def _check_number(key: str, value: object, low: float | None = None, strict: bool = False) -> None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(key, f"must be finite, got {value!r}")
    if low is not None and (number <= low if strict else number < low):
        raise ConfigError(key, f"must be {'>' if strict else '>='} {low:g}, got {value}")


def _check_label_smoothing(eps: float, types: set[str]) -> float:
    if not math.isfinite(eps):
        raise ConfigError("loss.label_smoothing", f"must be finite, got {eps}")
    if eps and not types & LABEL_SMOOTHING_TYPES:
        raise ConfigError("loss.label_smoothing", f"is used only by loss.type in {sorted(LABEL_SMOOTHING_TYPES)}, "
                          f"not {sorted(types)}")
    if "exo_pair" in types and not 0.0 < eps < 1.0:
        raise ConfigError("loss.label_smoothing", f"exo_pair needs a value in (0, 1) (EXO's epsilon, e.g. 1e-3), got {eps}")
    if types & {"robust", "aot", "aot_unpaired", "simpo"} and not 0.0 <= eps < 0.5:
        raise ConfigError("loss.label_smoothing", f"must be in [0, 0.5), got {eps}")
    return eps
