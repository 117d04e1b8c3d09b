"""Bayesian baselines for random tabular MDPs, batched over B MDPs.

Both keep the exact conjugate posterior of the task prior: transitions Dirichlet(1 + counts),
mean rewards Normal with prior N(1, 1) and unit noise. At the start of each episode they plan
a finite-horizon policy (value iteration over the episode's steps) on an MDP taken from the
posterior: a sample (PSRL, Osband et al. 2013) or the posterior mean (certainty equivalence).
"""
from __future__ import annotations

import numpy as np
import torch

from metarl.rl.batched_env import BatchedEnv
from metarl.seeding import make_generator


def optimal_q(P: torch.Tensor, R: torch.Tensor, horizon: int) -> torch.Tensor:
    """Finite-horizon value iteration. P [B, S, A, S], R [B, S, A] -> Q [horizon, B, S, A]:
    row t holds the action values with horizon - t steps to go."""
    B, S, A, _ = P.shape
    V = torch.zeros(B, S, device=P.device)
    qs = []
    for _ in range(horizon):
        Q = R + torch.einsum("bsan,bn->bsa", P, V)
        V = Q.max(-1).values
        qs.append(Q)
    return torch.stack(qs[::-1])


def plan(P: torch.Tensor, R: torch.Tensor, horizon: int) -> torch.Tensor:
    """The optimal finite-horizon policy: greedy actions [horizon, B, S], row t with
    horizon - t steps to go."""
    return optimal_q(P, R, horizon).argmax(-1)


class _MDPPosterior:
    def __init__(self, env: BatchedEnv, env_cfg, seed: int):
        self.S, self.A, self.H = env.obs_dim, env.num_actions, env.horizon
        self.rng = np.random.default_rng(seed)  # Dirichlet/Gamma draws (no seeded torch sampler)
        self.gen = make_generator(seed, f"baseline-{type(self).__name__}", env.device)

    def reset(self, num_envs: int, device) -> None:
        self.trans = torch.zeros(num_envs, self.S, self.A, self.S, device=device)
        self.n = torch.zeros(num_envs, self.S, self.A, device=device)
        self.rsum = torch.zeros(num_envs, self.S, self.A, device=device)
        self.policy = None

    def act(self, obs):
        if self.policy is None:  # start of an episode: plan on an MDP from the posterior
            self.policy = plan(*self.mdp(), self.H)
            self.step = 0
        state = obs.argmax(1)
        a = self.policy[self.step].gather(1, state.view(-1, 1)).squeeze(1)
        self.state = state
        return a

    def observe(self, actions, rewards, dones, next_obs) -> None:
        b = torch.arange(actions.shape[0], device=actions.device)
        s, a = self.state, actions
        self.n[b, s, a] += 1
        self.rsum[b, s, a] += rewards
        # next_obs after `done` is the next episode's start, not a transition of this one
        s2 = next_obs.argmax(1)
        live = ~dones
        self.trans[b[live], s[live], a[live], s2[live]] += 1
        self.step += 1
        if bool(dones.all()):
            self.policy = None

    def reward_posterior(self):
        """Posterior of mean rewards with prior N(1, 1), noise var 1: (mean, var) [B, S, A]."""
        var = 1.0 / (1.0 + self.n)
        return (1.0 + self.rsum) * var, var


class PSRL(_MDPPosterior):
    def mdp(self):
        alpha = (1.0 + self.trans).cpu().numpy()
        g = self.rng.standard_gamma(alpha)
        P = torch.as_tensor(g / g.sum(-1, keepdims=True), dtype=torch.float32, device=self.trans.device)
        mean, var = self.reward_posterior()
        R = mean + var.sqrt() * torch.randn(mean.shape, generator=self.gen, device=mean.device)
        return P, R


class CertaintyEquivalent(_MDPPosterior):
    """'Greedy': the optimal policy of the posterior-mean MDP."""

    def mdp(self):
        P = (1.0 + self.trans) / (1.0 + self.trans).sum(-1, keepdim=True)
        return P, self.reward_posterior()[0]
