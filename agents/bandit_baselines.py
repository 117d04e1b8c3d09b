"""Classical bandit algorithms, batched over B bandits, as TrialPolicy objects.

Posteriors: Bernoulli arms use Beta(1 + successes, 1 + failures) (the uniform prior the
tasks are drawn from). Gaussian arms use a Normal prior N(0.5, 1/12) matching U[0, 1] in
mean and variance, with known noise std sigma.
"""
from __future__ import annotations

import numpy as np
import torch

from metarl.rl.batched_env import BatchedEnv
from metarl.seeding import make_generator

PRIOR_MEAN, PRIOR_VAR = 0.5, 1.0 / 12.0


class BanditBaseline:
    """Keeps per-arm pull counts and reward sums [B, k]; subclasses choose arms."""

    def __init__(self, env: BatchedEnv, env_cfg, seed: int):
        self.k = env.num_actions
        self.gaussian = bool(getattr(env, "gaussian", False))
        self.sigma = float(getattr(env_cfg, "sigma", 1.0))
        self.gen = make_generator(seed, f"baseline-{type(self).__name__}", env.device)

    def reset(self, num_envs: int, device) -> None:
        self.counts = torch.zeros(num_envs, self.k, device=device)
        self.sums = torch.zeros(num_envs, self.k, device=device)
        self.t = 0

    def observe(self, actions, rewards, dones, next_obs) -> None:
        idx = actions.view(-1, 1)
        self.counts.scatter_add_(1, idx, torch.ones_like(rewards).view(-1, 1))
        self.sums.scatter_add_(1, idx, rewards.view(-1, 1))
        self.t += 1

    def posterior_mean(self) -> torch.Tensor:
        if self.gaussian:
            prec = 1.0 / PRIOR_VAR + self.counts / self.sigma**2
            return (PRIOR_MEAN / PRIOR_VAR + self.sums / self.sigma**2) / prec
        return (1.0 + self.sums) / (2.0 + self.counts)

    def argmax(self, scores: torch.Tensor) -> torch.Tensor:
        """Argmax over arms with ties broken uniformly at random. scores [B, k] -> [B]."""
        noise = torch.rand(scores.shape, generator=self.gen, device=scores.device)
        best = scores >= scores.max(1, keepdim=True).values - 1e-9
        return torch.where(best, noise, torch.full_like(noise, -1.0)).argmax(1)

    def random_arms(self, n: int, device) -> torch.Tensor:
        return torch.randint(self.k, (n,), generator=self.gen, device=device)


class RandomPolicy:
    """Uniformly random actions, for any env: arms of a Discrete space, or uniform in a Box."""

    def __init__(self, env: BatchedEnv, env_cfg, seed: int):
        self.space, self.discrete = env.action_space, env.discrete
        self.gen = make_generator(seed, "baseline-RandomPolicy", env.device)
        if not self.discrete:
            self.low = torch.as_tensor(self.space.low, device=env.device)
            self.high = torch.as_tensor(self.space.high, device=env.device)

    def reset(self, num_envs: int, device) -> None:
        pass

    def observe(self, actions, rewards, dones, next_obs) -> None:
        pass

    def act(self, obs):
        B, dev = obs.shape[0], obs.device
        if self.discrete:
            return torch.randint(int(self.space.n), (B,), generator=self.gen, device=dev)
        return self.low + (self.high - self.low) * torch.rand(B, len(self.low), generator=self.gen, device=dev)


class Greedy(BanditBaseline):
    def act(self, obs):
        return self.argmax(self.posterior_mean())


class EpsilonGreedy(BanditBaseline):
    epsilon = 0.1

    def act(self, obs):
        greedy = self.argmax(self.posterior_mean())
        explore = torch.rand(obs.shape[0], generator=self.gen, device=obs.device) < self.epsilon
        return torch.where(explore, self.random_arms(obs.shape[0], obs.device), greedy)


class UCB1(BanditBaseline):
    """Each arm once, then empirical mean + c * sqrt(2 ln t / n_i) (Auer et al. 2002)."""
    c = 1.0

    def act(self, obs):
        n = self.counts.clamp_min(1.0)
        ucb = self.sums / n + self.c * torch.sqrt(2.0 * np.log(max(self.t, 1)) / n)
        ucb = torch.where(self.counts == 0, torch.full_like(ucb, float("inf")), ucb)
        return self.argmax(ucb)


class Thompson(BanditBaseline):
    """Act greedily on one draw from the posterior."""

    def __init__(self, env, env_cfg, seed):
        super().__init__(env, env_cfg, seed)
        self.rng = np.random.default_rng(seed)  # Beta draws (torch has no seeded Beta sampler)

    def act(self, obs):
        if self.gaussian:
            prec = 1.0 / PRIOR_VAR + self.counts / self.sigma**2
            draw = self.posterior_mean() + prec.rsqrt() * torch.randn(
                self.counts.shape, generator=self.gen, device=obs.device)
        else:
            a = (1.0 + self.sums).cpu().numpy()
            b = (1.0 + self.counts - self.sums).cpu().numpy()
            draw = torch.as_tensor(self.rng.beta(a, b), dtype=torch.float32, device=obs.device)
        return self.argmax(draw)
