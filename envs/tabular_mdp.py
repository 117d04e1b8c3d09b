"""Random tabular MDPs as in RL² (Duan et al. 2016), batched in torch.

Task: {"P": [B, S, A, S] transition probabilities ~ flat Dirichlet, "R": [B, S, A] mean
rewards ~ N(1, 1)}. Rewards are N(R[s, a], 1). Episodes last `horizon` (10) steps and start
in state 0; a trial is n episodes in the same MDP. Observation: one-hot state [S].
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
class TabularMDPConfig:
    n: int = option(10, "episodes per trial", ge=1)
    states: int = option(10, "number of states", ge=1)
    actions: int = option(5, "number of actions", ge=2)
    horizon: int = option(10, "steps per episode", ge=1)


class TabularMDPDistribution(TaskDistribution):
    def __init__(self, states: int, actions: int):
        self.S, self.A = states, actions

    def sample(self, n: int, generator: torch.Generator, split: str = "train") -> Tasks:
        dev = generator.device
        # flat Dirichlet = normalised i.i.d. Exp(1) draws
        e = torch.empty(n, self.S, self.A, self.S, device=dev).exponential_(generator=generator)
        P = e / e.sum(-1, keepdim=True)
        R = 1.0 + torch.randn(n, self.S, self.A, generator=generator, device=dev)
        return {"P": P, "R": R}


class TabularMDPEnv(BatchedEnv):
    has_mean_reward = True
    def __init__(self, cfg: TabularMDPConfig, num_envs: int, device, generator: torch.Generator):
        self.S, self.A, self.horizon, self.num_envs = cfg.states, cfg.actions, cfg.horizon, num_envs
        self.device = torch.device(device)
        self.gen = generator
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.S,), np.float32)
        self.action_space = gym.spaces.Discrete(self.A)
        P = torch.full((num_envs, self.S, self.A, self.S), 1.0 / self.S, device=self.device)
        self.set_tasks({"P": P, "R": torch.ones(num_envs, self.S, self.A, device=self.device)})
        self._eye = torch.eye(self.S, device=self.device)
        self._arange = torch.arange(num_envs, device=self.device)
        self._done = torch.ones(num_envs, dtype=torch.bool, device=self.device)
        self._not_done = torch.zeros(num_envs, dtype=torch.bool, device=self.device)
        self.reset()

    def set_tasks(self, tasks: Tasks) -> None:
        P, R = tasks["P"], tasks["R"]
        if P.shape != (self.num_envs, self.S, self.A, self.S) or R.shape != (self.num_envs, self.S, self.A):
            raise ValueError(f"tasks must be P [{self.num_envs},{self.S},{self.A},{self.S}] and "
                             f"R [{self.num_envs},{self.S},{self.A}], got {list(P.shape)} and {list(R.shape)}")
        self.P = P.to(self.device, torch.float32)
        self.cumP = self.P.cumsum(-1)  # [B, S, A, S] for inverse-CDF sampling
        self.R = R.to(self.device, torch.float32)

    def task_features(self) -> torch.Tensor:
        """[B, S*A + S*A*S]: mean rewards and transition probabilities."""
        return torch.cat([self.R.flatten(1), self.P.flatten(1)], 1)

    def reset(self) -> torch.Tensor:
        self.t = 0
        self.state = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        return self._eye[self.state]

    def step(self, actions: torch.Tensor):
        b, s = self._arange, self.state
        self.mean_reward = self.R[b, s, actions]
        reward = self.mean_reward + torch.randn(self.num_envs, generator=self.gen, device=self.device)
        u = torch.rand(self.num_envs, 1, generator=self.gen, device=self.device)
        nxt = torch.searchsorted(self.cumP[b, s, actions], u).squeeze(1).clamp_(max=self.S - 1)
        self.t += 1
        if self.t >= self.horizon:
            return self.reset(), reward, self._done
        self.state = nxt
        return self._eye[nxt], reward, self._not_done


TABULAR_MDP = EnvSpec(
    "tabular-mdp", TabularMDPConfig, ("mdp",),
    lambda cfg: TabularMDPDistribution(cfg.states, cfg.actions),
    lambda cfg, num_envs, device, generator: TabularMDPEnv(cfg, num_envs, device, generator),
    lambda cfg: cfg.n)
