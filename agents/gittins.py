"""Gittins index policy for Bernoulli bandits: the discounted index (Gittins 1979) used as an
approximation to the finite-horizon problem of n pulls.

The index of an arm with Beta(a, b) posterior is the retirement reward lambda at which one is
indifferent between retiring (lambda per step forever) and pulling once more with the option
to retire later. `gittins_table` computes it for all states at once on a grid of lambda, by
backward induction over the diagonals a + b = s, truncated `depth` pulls ahead where the value
is approximated by max(lambda, p) / (1 - gamma); the grid root is refined by linear interpolation.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from metarl.agents.bandit_baselines import BanditBaseline


@lru_cache(maxsize=8)
def gittins_table(max_pulls: int, gamma: float, grid: int = 2001, tol: float = 1e-4) -> np.ndarray:
    """Index table G [max_pulls + 2, max_pulls + 2]; G[a, b] is the index of Beta(a, b) for
    a, b >= 1 and a + b <= max_pulls + 2 (NaN elsewhere)."""
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma must be in (0, 1), got {gamma}")
    depth = min(int(math.ceil(math.log(tol) / math.log(gamma))), 3000)
    top = max_pulls + 2
    N = top + depth
    lam = np.linspace(0.0, 1.0, grid)
    retire = lam / (1.0 - gamma)                                   # [G]
    a = np.arange(1, N, dtype=np.float64)
    V = np.maximum(lam[None, :], (a / N)[:, None]) / (1.0 - gamma)  # diagonal s = N: [N - 1, G]
    table = np.full((top, top), np.nan)
    for s in range(N - 1, 1, -1):
        a = np.arange(1, s, dtype=np.float64)
        p = (a / s)[:, None]
        cont = p * (1.0 + gamma * V[1:s]) + (1.0 - p) * gamma * V[0:s - 1]   # [s - 1, G]
        if s <= top:
            f = retire[None, :] - cont           # increasing in lambda; root is the index
            i = np.clip((f < 0).sum(1), 1, grid - 1)
            rows = np.arange(s - 1)
            f0, f1 = f[rows, i - 1], f[rows, i]
            idx = lam[i - 1] + (lam[i] - lam[i - 1]) * (-f0) / np.where(f1 - f0 > 0, f1 - f0, 1.0)
            ai = np.arange(1, s)
            table[ai, s - ai] = idx
        V = np.maximum(retire[None, :], cont)
    return table


class GittinsPolicy(BanditBaseline):
    """Pull the arm with the largest Gittins index of its Beta posterior.

    gamma: discount of the index; None picks 1 - 1 / n (an effective horizon of n pulls)."""
    gamma: float | None = None

    def __init__(self, env, env_cfg, seed):
        super().__init__(env, env_cfg, seed)
        if self.gaussian:
            raise ValueError("the Gittins baseline supports Bernoulli bandits only")
        n = env.horizon
        gamma = self.gamma if self.gamma is not None else max(0.5, 1.0 - 1.0 / n)
        self.table = torch.as_tensor(gittins_table(n, gamma), dtype=torch.float32, device=env.device)
        self.top = self.table.shape[0]

    def act(self, obs):
        a = (1 + self.sums).long()
        b = (1 + self.counts - self.sums).long()
        return self.argmax(self.table.flatten()[a * self.top + b])
