"""2D point navigation, as in the MAML paper (Finn et al. 2017, section 5.3), batched in torch.

Task: {"goal": [B, 2]} ~ U[-0.5, 0.5]^2. The agent starts at the origin; an action [B, 2] is a
displacement, clipped to [-0.1, 0.1] per coordinate; the reward is minus the distance to the
goal. An episode lasts `horizon` (100) steps; as in the paper the episode ends once the agent
is within 0.01 of the goal in both coordinates: here the agent then stays put and later steps
give 0 reward, so every episode keeps the fixed length the batched samplers rely on and the
return equals the paper's. Observation: the position [B, 2].
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
class NavigationConfig:
    horizon: int = option(100, "steps per episode", ge=1)
    episodes: int = option(2, "episodes per trial (RL²); MAML agents set their own rollout counts", ge=1)
    goal_low: float = option(-0.5, "goals ~ U[goal_low, goal_high]^2")
    goal_high: float = option(0.5, "goals ~ U[goal_low, goal_high]^2")
    max_action: float = option(0.1, "actions are clipped to [-max_action, max_action]", gt=0.0)
    goal_radius: float = option(0.01, "the episode ends within this distance of the goal (per coordinate)", ge=0.0)


class GoalDistribution(TaskDistribution):
    def __init__(self, low: float, high: float):
        if not high > low:
            from metarl.errors import UserError
            raise UserError(f"env.goal_high={high} must be greater than env.goal_low={low}")
        self.low, self.high = low, high

    def sample(self, n: int, generator: torch.Generator, split: str = "train") -> Tasks:
        u = torch.rand(n, 2, generator=generator, device=generator.device)
        return {"goal": self.low + (self.high - self.low) * u}


class NavigationEnv(BatchedEnv):
    def __init__(self, cfg: NavigationConfig, num_envs: int, device, generator: torch.Generator | None = None):
        self.cfg, self.num_envs, self.horizon = cfg, num_envs, cfg.horizon
        self.device = torch.device(device)
        reach = cfg.horizon * cfg.max_action  # farthest the agent can get from the origin
        self.observation_space = gym.spaces.Box(-reach, reach, (2,), np.float32)
        self.action_space = gym.spaces.Box(-cfg.max_action, cfg.max_action, (2,), np.float32)
        self._done = torch.ones(num_envs, dtype=torch.bool, device=self.device)
        self._not_done = torch.zeros(num_envs, dtype=torch.bool, device=self.device)
        self.set_tasks({"goal": torch.zeros(num_envs, 2, device=self.device)})
        self.reset()

    def set_tasks(self, tasks: Tasks) -> None:
        goal = tasks["goal"]
        if goal.shape != (self.num_envs, 2):
            raise ValueError(f"tasks must be goal [{self.num_envs}, 2], got {list(goal.shape)}")
        self.goal = goal.to(self.device, torch.float32)

    def task_features(self) -> torch.Tensor:
        return self.goal

    def reset(self) -> torch.Tensor:
        self.t = 0
        self.pos = torch.zeros(self.num_envs, 2, device=self.device)
        self.reached = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return self.pos.clone()

    def step(self, actions: torch.Tensor):
        a = actions.to(self.device, torch.float32).clamp(-self.cfg.max_action, self.cfg.max_action)
        live = ~self.reached
        self.pos = torch.where(live.unsqueeze(1), self.pos + a, self.pos)
        diff = self.pos - self.goal
        reward = -diff.norm(dim=1) * live
        self.reached = self.reached | (diff.abs() < self.cfg.goal_radius).all(1)
        self.t += 1
        if self.t >= self.horizon:
            return self.reset(), reward, self._done
        return self.pos.clone(), reward, self._not_done


NAVIGATION = EnvSpec(
    "navigation-2d", NavigationConfig, ("navigation", "continuous"),
    lambda cfg: GoalDistribution(cfg.goal_low, cfg.goal_high),
    lambda cfg, num_envs, device, generator: NavigationEnv(cfg, num_envs, device, generator),
    lambda cfg: cfg.episodes)
