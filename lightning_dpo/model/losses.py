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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lightning_dpo.utils.errors import ConfigError

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
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


# -- the loss table: a registry (an extension point) -------------------------------------------------
@dataclass
class LossTerms:
    """What every per-pair loss receives, computed once per batch."""

    x: PairLogps
    beta: float
    eps: float  # label_smoothing
    rho_w: torch.Tensor  # policy - reference log-ratio, chosen (n,)
    rho_l: torch.Tensor
    s_w: torch.Tensor  # f-divergence scores (reverse KL: = rho)
    s_l: torch.Tensor
    delta: torch.Tensor  # s_w - s_l
    settings: PreferenceLoss  # the other knobs (discopop_tau, simpo_gamma, orpo_nll, ...)


LossFn = Callable[[LossTerms], torch.Tensor]


@dataclass(frozen=True)
class LossSpec:
    fn: LossFn
    reference_free: bool = False  # needs no reference model (SimPO, ORPO)
    label_smoothing: bool = False  # reads loss.label_smoothing
    f_divergence: bool = False  # TRL accepts loss.f_divergence for it
    sequence_nll: bool = False  # needs the NLL over the chosen prompt too (ORPO)


LOSSES: dict[str, LossSpec] = {}


def register_loss(
    name: str, *, reference_free: bool = False, label_smoothing: bool = False, f_divergence: bool = False, sequence_nll: bool = False
) -> Callable[[LossFn], LossFn]:
    """Add a per-pair loss `fn(terms) -> (n,)` to the table under `name` (`loss.type=name`). From a
    user's module: `@register_loss("mine")`, or name the function by its dotted path
    (`loss.type=my_module.my_loss`), which registers it on first use."""

    def add(fn: LossFn) -> LossFn:
        LOSSES[name] = LossSpec(fn, reference_free, label_smoothing, f_divergence, sequence_nll)
        return fn

    return add


def lookup(name: str) -> LossSpec:
    """The registered loss `name`, or a function named by its dotted path (registered on first use)."""
    if name in LOSSES:
        return LOSSES[name]
    if "." in name:
        from hydra.utils import get_object

        try:
            fn = get_object(name)
        except Exception as exc:
            raise ConfigError("loss.type", f"cannot import the loss {name!r}: {exc}") from None
        if not callable(fn):
            raise ConfigError("loss.type", f"{name!r} is not a function")
        register_loss(name, reference_free=bool(getattr(fn, "reference_free", False)))(fn)
        return LOSSES[name]
    raise KeyError(name)


@register_loss("sigmoid", f_divergence=True)
def _sigmoid(t: LossTerms) -> torch.Tensor:
    return -F.logsigmoid(t.beta * t.delta)


@register_loss("hinge", f_divergence=True)
def _hinge(t: LossTerms) -> torch.Tensor:
    return torch.relu(1 - t.beta * t.delta)


@register_loss("ipo", f_divergence=True)
def _ipo(t: LossTerms) -> torch.Tensor:
    return (_average(t.s_w, t.x.chosen_lengths) - _average(t.s_l, t.x.rejected_lengths) - 1 / (2 * t.beta)) ** 2


@register_loss("exo_pair", label_smoothing=True, f_divergence=True)
def _exo_pair(t: LossTerms) -> torch.Tensor:
    z = t.beta * t.delta
    return torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-t.eps)) + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(t.eps))


@register_loss("nca_pair")
def _nca_pair(t: LossTerms) -> torch.Tensor:
    return -F.logsigmoid(t.beta * t.rho_w) - 0.5 * F.logsigmoid(-t.beta * t.rho_w) - 0.5 * F.logsigmoid(-t.beta * t.rho_l)


@register_loss("robust", label_smoothing=True, f_divergence=True)
def _robust(t: LossTerms) -> torch.Tensor:
    return (-(1 - t.eps) * F.logsigmoid(t.beta * t.delta) + t.eps * F.logsigmoid(-t.beta * t.delta)) / (1 - 2 * t.eps)


@register_loss("bco_pair")
def _bco_pair(t: LossTerms) -> torch.Tensor:
    return -F.logsigmoid(t.beta * t.rho_w) - F.logsigmoid(-t.beta * t.rho_l)


@register_loss("sppo_hard")
def _sppo_hard(t: LossTerms) -> torch.Tensor:
    return (t.rho_w - 0.5 / t.beta) ** 2 + (t.rho_l + 0.5 / t.beta) ** 2


@register_loss("aot", label_smoothing=True)
def _aot(t: LossTerms) -> torch.Tensor:  # optimal transport over the batch: sorted margins against sorted reference margins
    sorted_policy = torch.sort(t.x.policy_chosen - t.x.policy_rejected, dim=0).values
    sorted_ref = torch.sort(t.x.ref_chosen - t.x.ref_rejected, dim=0).values
    return _smoothed_sigmoid(t.beta * (sorted_policy - sorted_ref), t.eps)


@register_loss("aot_unpaired", label_smoothing=True)
def _aot_unpaired(t: LossTerms) -> torch.Tensor:
    return _smoothed_sigmoid(t.beta * (torch.sort(t.rho_w, dim=0).values - torch.sort(t.rho_l, dim=0).values), t.eps)


@register_loss("apo_zero")
def _apo_zero(t: LossTerms) -> torch.Tensor:
    return 1 - torch.sigmoid(t.beta * t.rho_w) + torch.sigmoid(t.beta * t.rho_l)


@register_loss("apo_down")
def _apo_down(t: LossTerms) -> torch.Tensor:
    return torch.sigmoid(t.beta * t.rho_w) + 1 - torch.sigmoid(t.beta * (t.rho_w - t.rho_l))


@register_loss("discopop", f_divergence=True)
def _discopop(t: LossTerms) -> torch.Tensor:
    z = t.beta * t.delta
    mix = torch.sigmoid(z / t.settings.discopop_tau)
    return -F.logsigmoid(z) * (1 - mix) + torch.exp(-z) * mix


@register_loss("sft", f_divergence=True)
def _sft(t: LossTerms) -> torch.Tensor:  # a token mean over the batch, the same value for every pair
    return (-t.x.policy_chosen.sum() / t.x.chosen_lengths.sum().clamp(min=1)).expand_as(t.x.policy_chosen)


@register_loss("sigmoid_norm", f_divergence=True)
def _sigmoid_norm(t: LossTerms) -> torch.Tensor:
    return -F.logsigmoid(t.beta * (_average(t.s_w, t.x.chosen_lengths) - _average(t.s_l, t.x.rejected_lengths)))


@register_loss("simpo", reference_free=True, label_smoothing=True)
def _simpo(t: LossTerms) -> torch.Tensor:
    avg_w, avg_l = _average(t.x.policy_chosen, t.x.chosen_lengths), _average(t.x.policy_rejected, t.x.rejected_lengths)
    return _smoothed_sigmoid(t.beta * (avg_w - avg_l) - t.settings.simpo_gamma, t.eps)


@register_loss("orpo", reference_free=True, sequence_nll=True)
def _orpo(t: LossTerms) -> torch.Tensor:  # odds ratio on the average token probability, plus the chosen NLL
    avg_w = _average(t.x.policy_chosen, t.x.chosen_lengths).float()
    avg_l = _average(t.x.policy_rejected, t.x.rejected_lengths).float()
    log_odds = (avg_w - avg_l) - (log1mexp(avg_w) - log1mexp(avg_l))
    if t.settings.orpo_nll == "sequence":
        if t.x.chosen_sequence_nll is None:
            raise ValueError("orpo with orpo_nll=sequence needs chosen_sequence_nll (the prompt+chosen NLL)")
        nll = t.x.chosen_sequence_nll
    else:
        nll = -t.x.policy_chosen.sum() / t.x.chosen_lengths.sum().clamp(min=1)
    return nll - t.beta * F.logsigmoid(log_odds)


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
        if f_divergence != "reverse_kl" and not all(lookup(t).f_divergence for t in self.types):
            raise ConfigError(
                "loss.f_divergence", f"{f_divergence} works only with loss.type in {sorted(F_DIVERGENCE_TYPES)}; got {self.types}"
            )
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
            raise ConfigError(
                "loss.kl_gamma",
                "a KL regulariser needs a reference model (loss.reference_free=false and a loss.type other than simpo/orpo)",
            )

    @property
    def type(self) -> str | list[str]:
        return self.types[0] if len(self.types) == 1 else list(self.types)

    @property
    def needs_reference(self) -> bool:
        return not self.reference_free and not all(lookup(t).reference_free for t in self.types)

    @property
    def needs_sequence_nll(self) -> bool:
        """ORPO's NLL over the prompt too: the policy's log-probs at prompt positions are needed."""
        return self.orpo_nll == "sequence" and any(lookup(t).sequence_nll for t in self.types)

    def to_dict(self) -> dict:
        keys = (
            "type",
            "beta",
            "weights",
            "label_smoothing",
            "f_divergence",
            "f_alpha",
            "discopop_tau",
            "simpo_gamma",
            "orpo_nll",
            "reference_free",
            "kl_gamma",
        )
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
        x = PairLogps(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_lengths, rejected_lengths, chosen_sequence_nll)
        if self.reference_free or x.ref_chosen is None:
            x.ref_chosen, x.ref_rejected = torch.zeros_like(policy_chosen), torch.zeros_like(policy_rejected)
        terms = [w * self.per_pair(kind, x) for kind, w in zip(self.types, self.weights)]  # each (n,)
        losses = terms[0]
        for term in terms[1:]:
            losses = losses + term
        loss = losses.mean()
        if self.kl_gamma and kl_penalty is not None:
            loss = loss + self.kl_gamma * kl_penalty.mean()
        if all(lookup(t).reference_free for t in self.types):  # SimPO/ORPO: the length-normalised log-prob is the reward
            chosen, rejected = _average(x.policy_chosen, x.chosen_lengths), _average(x.policy_rejected, x.rejected_lengths)
        else:
            chosen, rejected = x.policy_chosen - x.ref_chosen, x.policy_rejected - x.ref_rejected
        return LossOutput(loss, losses, (self.beta * chosen).detach(), (self.beta * rejected).detach())

    def per_pair(self, kind: str, x: PairLogps) -> torch.Tensor:
        """One type's per-pair loss (n,): the registered function of `kind`."""
        rho_w, rho_l = x.policy_chosen - x.ref_chosen, x.policy_rejected - x.ref_rejected
        s_w = f_divergence_scores(rho_w, self.f_divergence, self.f_alpha)
        s_l = f_divergence_scores(rho_l, self.f_divergence, self.f_alpha)
        return lookup(kind).fn(LossTerms(x, self.beta, self.label_smoothing, rho_w, rho_l, s_w, s_l, s_w - s_l, self))


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
        try:
            lookup(kind)
        except KeyError:
            close = difflib.get_close_matches(kind, [*LOSSES, *ALIASES], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                "loss.type",
                f"unknown loss {kind!r}{hint} accepted: {list(LOSSES)} (and 'dpo' for sigmoid), "
                "or a registered loss, or a function's dotted path (my_module.my_loss)",
            ) from None
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
    if eps and not any(lookup(t).label_smoothing for t in types):
        raise ConfigError("loss.label_smoothing", f"is used only by loss.type in {sorted(LABEL_SMOOTHING_TYPES)}, not {sorted(types)}")
    if "exo_pair" in types and not 0.0 < eps < 1.0:
        raise ConfigError("loss.label_smoothing", f"exo_pair needs a value in (0, 1) (EXO's epsilon, e.g. 1e-3), got {eps}")
    if types & {"robust", "aot", "aot_unpaired", "simpo"} and not 0.0 <= eps < 0.5:
        raise ConfigError("loss.label_smoothing", f"must be in [0, 0.5), got {eps}")
    return eps


# the built-in table (TRL 1.16's pairwise types, SimPO, ORPO), in its documented order, and the sets derived from it
LOSS_TYPES = tuple(LOSSES)
F_DIVERGENCE_TYPES = frozenset(n for n, spec in LOSSES.items() if spec.f_divergence)  # the set TRL 1.16 accepts
REFERENCE_FREE_TYPES = frozenset(n for n, spec in LOSSES.items() if spec.reference_free)
LABEL_SMOOTHING_TYPES = frozenset(n for n, spec in LOSSES.items() if spec.label_smoothing)
