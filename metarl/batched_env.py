"""The batched env interface: B sub-envs, each running its own task, stepped as one.

Tensors in and out live on `env.device`, so a pure-torch env steps on the GPU with the
policy and nothing is copied per step. Sub-envs auto-reset: when `done[i]` is true the
returned `obs[i]` is already the first observation of the next episode (as in SB3's
VecEnv). Episodes of the envs here have a fixed length `horizon`, so all sub-envs finish
together and a trial of `episodes_per_trial` episodes is `trial_length` steps.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import torch

from metarl.tasks import TaskDistribution, Tasks


class BatchedEnv(ABC):
    num_envs: int
    device: torch.device
    horizon: int  # steps per episode
    observation_space: gym.spaces.Box  # of one sub-env
    action_space: gym.spaces.Space  # of one sub-env: Discrete or 1-D Box

    @abstractmethod
    def set_tasks(self, tasks: Tasks) -> None:
        """Give every sub-env its task; tensors shaped [num_envs, ...]."""

    @abstractmethod
    def reset(self) -> torch.Tensor:
        """Start a new episode in every sub-env; returns obs [B, obs_dim]."""

    @abstractmethod
    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """actions [B] (long, Discrete) or [B, act_dim] (float, Box) -> obs [B, obs_dim],
        reward [B] (float), done [B] (bool)."""

    def close(self) -> None:
        """Release workers or other resources (nothing for pure-tensor envs)."""

    def rollout_context(self):
        """Context a sampler steps this env in (multi-process envs pin the main process to one
        thread there); a no-op for pure-tensor envs."""
        return contextlib.nullcontext()

    # Privileged training signals, optional: an env that knows its tasks' parameters may expose
    # them so a meta-learner can lower the variance of its training (an asymmetric critic,
    # expected rewards). The evaluated policy never sees them.
    has_mean_reward: bool = False  # True if step() sets mean_reward
    mean_reward: torch.Tensor | None = None  # [B] E[reward | task, state, action] of the last step

    # Per-step signals beyond the reward, e.g. Meta-World's {"success": [B]} of the last step
    # (the step that ended an episode included). Envs replace the dict, never mutate it.
    info: dict[str, torch.Tensor] = {}

    def task_features(self) -> torch.Tensor | None:
        """[B, F] a fixed description of each sub-env's current task, or None if not exposed."""
        return None

    @property
    def obs_dim(self) -> int:
        return int(self.observation_space.shape[0])

    @property
    def discrete(self) -> bool:
        return isinstance(self.action_space, gym.spaces.Discrete)

    @property
    def num_actions(self) -> int:
        """Discrete action count; for a Box, the action vector's size."""
        return int(self.action_space.n) if self.discrete else int(self.action_space.shape[0])


@dataclass(frozen=True)
class EnvSpec:
    """What the registry returns for an env name: how to build its tasks and batched env.

    families: tags that decide which baselines apply (e.g. ("bandit", "bernoulli")).
    """
    name: str
    config_cls: type
    families: tuple[str, ...]
    make_distribution: Callable[[Any], TaskDistribution]
    make_env: Callable[..., BatchedEnv]   # (cfg, num_envs, device, generator) -> BatchedEnv
    episodes_per_trial: Callable[[Any], int]

    def trial_length(self, cfg) -> int:
        env = self.make_env(cfg, 1, torch.device("cpu"), torch.Generator())
        return env.horizon * self.episodes_per_trial(cfg)
