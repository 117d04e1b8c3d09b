"""k-armed bandits, batched in torch: each of B sub-envs plays its own arm means.

Task: {"means": [B, k]} with arm means ~ U[0, 1]. One episode is the whole trial of n
pulls (episodes_per_trial = 1). The observation carries no information (a constant 0), so
everything the agent knows comes from its own actions and rewards.
"""
from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from metarl.config import option
from metarl.rl.batched_env import BatchedEnv, EnvSpec
from metarl.tasks import TaskDistribution, Tasks


@dataclass
class BanditConfig:
    k: int = option(5, "number of arms", ge=2)
    n: int = option(10, "pulls per trial", ge=1)
    sigma: float = option(1.0, "reward noise std (Gaussian bandit only)", gt=0.0)


class BanditDistribution(TaskDistribution):
    def __init__(self, k: int):
        self.k = k

    def sample(self, n: int, generator: torch.Generator, split: str = "train") -> Tasks:
        return {"means": torch.rand(n, self.k, generator=generator, device=generator.device)}


class BanditEnv(BatchedEnv):
    """B bandits stepped at once. reward: Bernoulli(mean) or mean + sigma * N(0, 1)."""
    has_mean_reward = True

    def __init__(self, k: int, n: int, num_envs: int, device, generator: torch.Generator,
                 gaussian: bool = False, sigma: float = 1.0):
        self.k, self.horizon, self.num_envs = k, n, num_envs
        self.device = torch.device(device)
        self.gen = generator
        self.gaussian, self.sigma = gaussian, sigma
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(k)
        self.means = torch.full((num_envs, k), 0.5, device=self.device)
        self._obs = torch.zeros(num_envs, 1, device=self.device)
        self._done = torch.ones(num_envs, dtype=torch.bool, device=self.device)
        self._not_done = torch.zeros(num_envs, dtype=torch.bool, device=self.device)
        self.t = 0

    def set_tasks(self, tasks: Tasks) -> None:
        means = tasks["means"]
        if means.shape != (self.num_envs, self.k):
            raise ValueError(f"means must be [{self.num_envs}, {self.k}], got {list(means.shape)}")
        self.means = means.to(self.device, torch.float32)

    def reset(self) -> torch.Tensor:
        self.t = 0
        return self._obs

    def task_features(self) -> torch.Tensor:
        return self.means  # [B, k]

    def step(self, actions: torch.Tensor):
        mu = self.means.gather(1, actions.view(-1, 1)).squeeze(1)
        if self.gaussian:
            reward = mu + self.sigma * torch.randn(self.num_envs, generator=self.gen, device=self.device)
        else:
            reward = (torch.rand(self.num_envs, generator=self.gen, device=self.device) < mu).float()
        self.mean_reward = mu
        self.t += 1
        if self.t >= self.horizon:
            self.t = 0
            return self._obs, reward, self._done
        return self._obs, reward, self._not_done


def _make(gaussian: bool):
    def make_env(cfg: BanditConfig, num_envs: int, device, generator) -> BanditEnv:
        return BanditEnv(cfg.k, cfg.n, num_envs, device, generator, gaussian=gaussian, sigma=cfg.sigma)
    return make_env


BERNOULLI_BANDIT = EnvSpec("bandit", BanditConfig, ("bandit", "bernoulli"),
                           lambda cfg: BanditDistribution(cfg.k), _make(False), lambda cfg: 1)
GAUSSIAN_BANDIT = EnvSpec("gaussian-bandit", BanditConfig, ("bandit", "gaussian"),
                          lambda cfg: BanditDistribution(cfg.k), _make(True), lambda cfg: 1)
