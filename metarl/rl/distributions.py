"""Action distributions for discrete and continuous action spaces, as pure functions of a
head's output, so they work inside torch.func transforms (vmap, grad) as well as eagerly.

A head maps features [..., H] to distribution parameters; `dist(out)` wraps them. Both kinds
expose sample / log_prob / entropy / kl with the same shapes: actions [...] (long) for
Categorical, [..., A] (float) for Gaussian; log_prob, entropy, kl -> [...].
"""
from __future__ import annotations

import math

import gymnasium as gym
import torch
import torch.nn as nn
import torch.nn.functional as F


class Categorical:
    def __init__(self, logits: torch.Tensor):
        self.logp_all = F.log_softmax(logits, -1)  # [..., A]

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        p = self.logp_all.exp()
        flat = p.reshape(-1, p.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).view(p.shape[:-1])

    def sample_with(self, noise: torch.Tensor) -> torch.Tensor:
        """The sample given Gumbel noise [..., A] (CategoricalHead.draw_noise): argmax(logp + g)."""
        return (self.logp_all + noise).argmax(-1)

    def mode(self) -> torch.Tensor:
        return self.logp_all.argmax(-1)

    def log_prob(self, a: torch.Tensor) -> torch.Tensor:
        return self.logp_all.gather(-1, a.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.logp_all.exp() * self.logp_all).sum(-1)

    def kl(self, other: "Categorical") -> torch.Tensor:
        """KL(self || other)."""
        return (self.logp_all.exp() * (self.logp_all - other.logp_all)).sum(-1)

    def detach(self) -> "Categorical":
        return Categorical(self.logp_all.detach())  # log_softmax of log-probs is the identity

    def __getitem__(self, idx) -> "Categorical":
        """The distributions of a slice of the batch dims."""
        return Categorical(self.logp_all[idx])


class DiagGaussian:
    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor):
        self.mean, self.log_std = mean, log_std.expand_as(mean)  # [..., A]

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.sample_with(eps)

    def sample_with(self, noise: torch.Tensor) -> torch.Tensor:
        """The sample given standard normal noise [..., A] (GaussianHead.draw_noise)."""
        return self.mean + self.log_std.exp() * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def log_prob(self, a: torch.Tensor) -> torch.Tensor:
        z = (a - self.mean) * torch.exp(-self.log_std)
        return (-0.5 * z.pow(2) - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (self.log_std + 0.5 * (1.0 + math.log(2 * math.pi))).sum(-1)

    def kl(self, other: "DiagGaussian") -> torch.Tensor:
        """KL(self || other)."""
        var, ovar = (2 * self.log_std).exp(), (2 * other.log_std).exp()
        return (other.log_std - self.log_std + (var + (self.mean - other.mean).pow(2)) / (2 * ovar) - 0.5).sum(-1)

    def detach(self) -> "DiagGaussian":
        return DiagGaussian(self.mean.detach(), self.log_std.detach())

    def __getitem__(self, idx) -> "DiagGaussian":
        """The distributions of a slice of the batch dims."""
        return DiagGaussian(self.mean[idx], self.log_std[idx])


class CategoricalHead(nn.Module):
    """features [..., H] -> logits [..., A]."""

    def __init__(self, hidden: int, num_actions: int):
        super().__init__()
        self.linear = nn.Linear(hidden, num_actions)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h)

    @staticmethod
    def dist(out: torch.Tensor) -> Categorical:
        return Categorical(out)

    def draw_noise(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Gumbel noise [*shape, A] for Categorical.sample_with: the sampling randomness drawn
        ahead, so whoever acts (e.g. a simulation worker) needs no generator of its own."""
        u = torch.rand((*shape, self.linear.out_features), generator=generator, device=generator.device)
        return -torch.log(-torch.log(u.clamp_min(1e-20)))


class GaussianHead(nn.Module):
    """features [..., H] -> [mean, log_std] [..., 2A]; the log std is a state-independent
    parameter (as in TRPO / MAML), broadcast to the batch so the output is one tensor."""

    def __init__(self, hidden: int, act_dim: int, init_std: float = 1.0):
        super().__init__()
        self.linear = nn.Linear(hidden, act_dim)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mean = self.linear(h)
        return torch.cat([mean, self.log_std.expand_as(mean)], -1)

    @staticmethod
    def dist(out: torch.Tensor) -> DiagGaussian:
        mean, log_std = out.chunk(2, -1)
        return DiagGaussian(mean, log_std)

    def draw_noise(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Standard normal noise [*shape, A] for DiagGaussian.sample_with (see CategoricalHead)."""
        return torch.randn((*shape, self.linear.out_features), generator=generator, device=generator.device)


class TanhGaussianHead(nn.Module):
    """features [..., H] -> tanh(linear) = [mean, log_std] [..., 2A]: a state-dependent log std
    bounded to (-1, 1) (std in (0.37, 2.7)) and a bounded mean, as Meta-World+'s RL² baseline
    builds its head (rainx0r/metaworld-algorithms); samples are not squashed."""

    def __init__(self, hidden: int, act_dim: int):
        super().__init__()
        self.linear = nn.Linear(hidden, 2 * act_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(h))

    dist = staticmethod(GaussianHead.dist)

    def draw_noise(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Standard normal noise [*shape, A] for DiagGaussian.sample_with."""
        return torch.randn((*shape, self.linear.out_features // 2), generator=generator, device=generator.device)


def make_head(hidden: int, space: gym.Space, init_std: float = 1.0,
              kind: str = "linear") -> CategoricalHead | GaussianHead | TanhGaussianHead:
    """The policy head for an action space: Categorical for Discrete, diagonal Gaussian for Box
    (kind "tanh": TanhGaussianHead, Box only)."""
    if kind == "tanh":
        if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1):
            raise ValueError(f"the tanh head is for 1-D Box actions, not {space}")
        return TanhGaussianHead(hidden, int(space.shape[0]))
    if isinstance(space, gym.spaces.Discrete):
        return CategoricalHead(hidden, int(space.n))
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return GaussianHead(hidden, int(space.shape[0]), init_std)
    raise ValueError(f"unsupported action space {space}; metarl supports Discrete and 1-D Box")


def box_bounds(space: gym.spaces.Box) -> tuple[torch.Tensor, torch.Tensor]:
    """(low [A], high [A]) of a Box as float32 tensors."""
    return torch.as_tensor(space.low, dtype=torch.float32), torch.as_tensor(space.high, dtype=torch.float32)


def unit_to_bounds(a: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Actions [..., A] of a policy that acts in [-1, 1] -> the env's box [low, high], clipped
    (rllab's normalize(), which the MAML paper's code wraps around every env; SB3's Gaussian
    policies are tuned for the same unit box)."""
    return low + (a.float().clamp(-1, 1) + 1) * 0.5 * (high - low)

