"""The PPO clipped objective (Schulman et al. 2017) and the running return normaliser."""
from __future__ import annotations

import torch


def ppo_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, values: torch.Tensor,
             returns: torch.Tensor, entropy: torch.Tensor, clip: float, vf_coef: float, ent_coef: float):
    """All inputs flat [N]. Returns (total loss, stats dict of floats-as-tensors)."""
    ratio = (logp - old_logp).exp()
    pg = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()
    vf = 0.5 * (values - returns).pow(2).mean()
    ent = entropy.mean()
    loss = pg + vf_coef * vf - ent_coef * ent
    with torch.no_grad():
        approx_kl = ((ratio - 1) - (logp - old_logp)).mean()
        clip_frac = ((ratio - 1).abs() > clip).float().mean()
    return loss, {"policy_loss": pg.detach(), "value_loss": vf.detach(), "entropy": ent.detach(),
                  "approx_kl": approx_kl, "clip_frac": clip_frac}


class RunningMeanStd:
    """Running mean/variance (parallel Welford) used to normalise value targets."""

    def __init__(self, device="cpu"):
        self.mean = torch.zeros((), dtype=torch.float64, device=device)
        self.var = torch.ones((), dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        n, m, v = x.numel(), x.mean(), x.var(unbiased=False)
        tot = self.count + n
        delta = m - self.mean
        self.mean = self.mean + delta * n / tot
        self.var = (self.var * self.count + v * n + delta.pow(2) * self.count * n / tot) / tot
        self.count = tot

    @property
    def std(self) -> torch.Tensor:
        return self.var.clamp_min(1e-8).sqrt()

    def state_dict(self):
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, d):
        self.mean, self.var, self.count = d["mean"], d["var"], d["count"]
