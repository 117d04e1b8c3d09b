"""Adversarial query inputs for robust few-shot evaluation: after a classifier has adapted on
its clean support set, its query images are perturbed within an L-infinity ball of radius eps
to raise its query loss (FGSM: one signed-gradient step of eps; PGD, Madry et al. 2018: `steps`
signed steps of 2.5 eps / steps from a random start, projected back onto the ball), pixels kept
in [0, 1]. Robust accuracy is the adapted model's accuracy on those inputs."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from metarl.errors import UserError
from metarl.fewshot.core import task_loss

ATTACKS = ("fgsm", "pgd")


@dataclass(frozen=True)
class Attack:
    kind: str       # "fgsm" or "pgd"
    eps: float      # L-infinity radius, in pixel units of [0, 1] images
    steps: int = 10  # PGD steps (FGSM takes one)

    def __post_init__(self):
        if self.kind not in ATTACKS:
            raise UserError(f"--attack must be one of {', '.join(ATTACKS)}, got {self.kind!r}")
        if not self.eps > 0:
            raise UserError(f"--eps must be > 0, got {self.eps}")
        if self.steps < 1:
            raise UserError(f"--attack-steps must be >= 1, got {self.steps}")

    @property
    def label(self) -> str:
        return f"{self.kind} eps={self.eps:g}" + (f", {self.steps} steps" if self.kind == "pgd" else "")

    def perturb(self, learner, state, xq: torch.Tensor, yq: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Adversarial query images [N, Q, C, H, W] for the adapted `state` (no gradient to the learner)."""
        steps, size = (1, self.eps) if self.kind == "fgsm" else (self.steps, 2.5 * self.eps / self.steps)
        x = xq.detach()
        if self.kind == "pgd":  # random start inside the ball
            noise = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device) * 2 - 1
            x = (xq + self.eps * noise).clamp(0, 1)
        for _ in range(steps):
            with torch.enable_grad():
                x = x.detach().requires_grad_()
                loss = task_loss("classification", learner.predict(state, x), yq).sum()
                (g,) = torch.autograd.grad(loss, x)
            x = torch.min(torch.max(x + size * g.sign(), xq - self.eps), xq + self.eps).clamp(0, 1)
        return x.detach()
