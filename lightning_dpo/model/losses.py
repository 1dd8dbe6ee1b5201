"""The preference-loss table: one function per `loss.type`, on per-sequence log-probs.

Notation (as in TRL's docs): for each pair, summed completion log-probs under the policy
(`policy_chosen`, `policy_rejected`) and the frozen reference (`ref_chosen`, `ref_rejected`);
the log-ratios rho_w = policy_chosen - ref_chosen and rho_l = policy_rejected - ref_rejected;
Delta = rho_w - rho_l; eps = label_smoothing; sigma = the logistic function.

| type      | per-pair loss                                                              |
|-----------|----------------------------------------------------------------------------|
| sigmoid   | -log sigma(beta * Delta)                                   (DPO)           |
| ipo       | (Delta_norm - 1 / (2 beta))^2, Delta_norm = rho_w/len_w - rho_l/len_l      |
| hinge     | relu(1 - beta * Delta)                                     (SLiC)          |
| robust    | (-(1 - eps) log sigma(beta Delta) + eps log sigma(-beta Delta)) / (1 - 2 eps) |

`reference_free=True` sets the reference log-probs to 0 (an implicit uniform reference) for any
type. Rewards are always beta * rho, detached. The optional regulariser `kl_gamma` (Yang et al.)
adds kl_gamma * (KL(ref || policy) on chosen + on rejected), each the mean over completion tokens
(the published code also averaged over prompt and pad positions; we do not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lightning_dpo.utils.errors import ConfigError

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def sigmoid_loss(delta: torch.Tensor, beta: float) -> torch.Tensor:
    return -F.logsigmoid(beta * delta)


def ipo_loss(delta_norm: torch.Tensor, beta: float) -> torch.Tensor:
    return (delta_norm - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(delta: torch.Tensor, beta: float) -> torch.Tensor:
    return torch.relu(1.0 - beta * delta)


def robust_loss(delta: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    return (-(1.0 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1.0 - 2.0 * eps)


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, what is optimised
    losses: torch.Tensor  # per pair, before the KL regulariser
    chosen_rewards: torch.Tensor  # beta * rho_w, detached
    rejected_rewards: torch.Tensor  # beta * rho_l, detached


class PreferenceLoss:
    """The configured loss (`loss.*` in the Hydra config), validated on construction."""

    def __init__(
        self,
        type: str = "sigmoid",
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        reference_free: bool = False,
        kl_gamma: float = 0.0,
    ):
        if type not in LOSS_TYPES:
            raise ConfigError("loss.type", f"unknown loss {type!r}; accepted: {list(LOSS_TYPES)}")
        if not beta > 0:
            raise ConfigError("loss.beta", f"must be > 0, got {beta}")
        if not 0.0 <= label_smoothing < 0.5:
            raise ConfigError("loss.label_smoothing", f"must be in [0, 0.5), got {label_smoothing}")
        if label_smoothing and type != "robust":
            raise ConfigError("loss.label_smoothing", f"is used only by loss.type=robust, not {type!r}")
        if kl_gamma < 0:
            raise ConfigError("loss.kl_gamma", f"must be >= 0, got {kl_gamma}")
        if kl_gamma and reference_free:
            raise ConfigError("loss.kl_gamma", "a KL regulariser needs a reference model (loss.reference_free=true)")
        self.type, self.beta, self.label_smoothing = type, float(beta), float(label_smoothing)
        self.reference_free, self.kl_gamma = bool(reference_free), float(kl_gamma)

    @property
    def needs_reference(self) -> bool:
        return not self.reference_free

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("type", "beta", "label_smoothing", "reference_free", "kl_gamma")}

    def __call__(
        self,
        policy_chosen: torch.Tensor,
        policy_rejected: torch.Tensor,
        ref_chosen: torch.Tensor | None,
        ref_rejected: torch.Tensor | None,
        chosen_lengths: torch.Tensor,
        rejected_lengths: torch.Tensor,
        kl_penalty: torch.Tensor | None = None,
    ) -> LossOutput:
        if self.reference_free or ref_chosen is None:
            ref_chosen = torch.zeros_like(policy_chosen)
            ref_rejected = torch.zeros_like(policy_rejected)
        rho_w = policy_chosen - ref_chosen
        rho_l = policy_rejected - ref_rejected
        delta = rho_w - rho_l
        if self.type == "sigmoid":
            losses = sigmoid_loss(delta, self.beta)
        elif self.type == "ipo":
            delta_norm = rho_w / chosen_lengths.clamp(min=1) - rho_l / rejected_lengths.clamp(min=1)
            losses = ipo_loss(delta_norm, self.beta)
        elif self.type == "hinge":
            losses = hinge_loss(delta, self.beta)
        else:
            losses = robust_loss(delta, self.beta, self.label_smoothing)
        loss = losses.mean()
        if self.kl_gamma and kl_penalty is not None:
            loss = loss + self.kl_gamma * kl_penalty.mean()
        return LossOutput(loss, losses, (self.beta * rho_w).detach(), (self.beta * rho_l).detach())
