"""Goal-conditioned MuJoCo task families of the MAML paper on gymnasium's v5 envs, stepped in
worker processes by metarl.sim.parallel.ParallelEnv (each sub-env has its own task).

    halfcheetah-vel  target velocity ~ U[0, 2];  r = -|v_x - v*| - 0.05 |a|^2
    halfcheetah-dir  direction +1 or -1;         r = d v_x - 0.05 |a|^2
    ant-dir          direction +1 or -1;         r = d v_x - 0.005 |a|^2 - contact + survive
    ant-goal         goal ~ U[-3, 3]^2;          r = -|xy - g|_1 - 0.005 |a|^2 - contact + survive

Control-cost weights follow the MAML code (0.5 * 0.1 for the cheetah, 0.5 * 0.01 for the ant).
Episodes have a fixed `horizon` (200, as in the paper); the ant is not terminated when it
falls (it just loses the survive bonus), so all sub-envs stay in step. The ant observes its
x, y position (needed for goals) and no contact forces.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from metarl.config import option
from metarl.errors import UserError
from metarl.rl.batched_env import EnvSpec
from metarl.sim.options import SimulationOptions
from metarl.tasks import TaskDistribution, Tasks

GYM_IDS = {"halfcheetah": "HalfCheetah-v5", "ant": "Ant-v5"}
GYM_KWARGS = {"halfcheetah": {},
              "ant": {"terminate_when_unhealthy": False, "exclude_current_positions_from_observation": False,
                      "include_cfrc_ext_in_observation": False}}
CTRL_WEIGHT = {"halfcheetah": 0.05, "ant": 0.005}


@dataclass
class MujocoTaskConfig(SimulationOptions):
    horizon: int = option(200, "steps per episode (the MAML paper uses 200)", ge=1)
    episodes: int = option(2, "episodes per trial (RL²); MAML agents set their own rollout counts", ge=1)


def _require_mujoco():
    try:
        import mujoco  # noqa: F401
        import gymnasium.envs.mujoco  # noqa: F401
    except ImportError:
        raise UserError("the MuJoCo task families need mujoco; install them with: pip install -e \".[mujoco]\"") \
            from None


class GoalMujoco:
    """One gymnasium MuJoCo env with a task-specific reward (a ParallelEnv sub-env)."""

    def __init__(self, robot: str, task: str):
        import gymnasium as gym
        self.env = gym.make(GYM_IDS[robot], **GYM_KWARGS[robot]).unwrapped
        self.robot, self.task, self.goal = robot, task, None

    def set_task(self, task: dict) -> None:
        self.goal = np.asarray(task["goal"], dtype=np.float64)

    def reset(self, seed: int) -> np.ndarray:
        obs, _ = self.env.reset(seed=seed)
        return obs

    def step(self, action: np.ndarray):
        obs, _, _, _, info = self.env.step(action)
        ctrl = CTRL_WEIGHT[self.robot] * float(np.square(action).sum())
        if self.task == "vel":
            r = -abs(info["x_velocity"] - self.goal[0])
        elif self.task == "dir":
            r = self.goal[0] * info["x_velocity"]
        else:  # goal
            r = -abs(info["x_position"] - self.goal[0]) - abs(info["y_position"] - self.goal[1])
        if self.robot == "ant":
            r += info["reward_contact"] + info["reward_survive"]  # reward_contact is <= 0
        return obs, r - ctrl

    def close(self):
        self.env.close()


def make_sub_env(robot: str, task: str) -> GoalMujoco:
    return GoalMujoco(robot, task)


class VelocityDistribution(TaskDistribution):
    def sample(self, n, generator, split: str = "train") -> Tasks:
        return {"goal": 2.0 * torch.rand(n, 1, generator=generator, device=generator.device)}


class DirectionDistribution(TaskDistribution):
    def sample(self, n, generator, split: str = "train") -> Tasks:
        bit = torch.randint(2, (n, 1), generator=generator, device=generator.device)
        return {"goal": (2 * bit - 1).float()}


class GoalDistribution(TaskDistribution):
    def sample(self, n, generator, split: str = "train") -> Tasks:
        return {"goal": 6.0 * torch.rand(n, 2, generator=generator, device=generator.device) - 3.0}


def make_env(robot: str, task: str, cfg: MujocoTaskConfig, num_envs: int, device, generator):
    _require_mujoco()
    import gymnasium as gym
    from metarl.sim.parallel import ParallelEnv
    probe = gym.make(GYM_IDS[robot], **GYM_KWARGS[robot])
    # float32 spaces: the batched tensors are float32
    obs_space = gym.spaces.Box(probe.observation_space.low.astype(np.float32),
                               probe.observation_space.high.astype(np.float32), dtype=np.float32)
    act_space = gym.spaces.Box(probe.action_space.low.astype(np.float32), probe.action_space.high.astype(np.float32),
                               dtype=np.float32)
    probe.close()
    env = ParallelEnv(functools.partial(make_sub_env, robot, task), num_envs, cfg.horizon, obs_space, act_space,
                      device, generator, task_features=(2 if task == "goal" else 1, _goal_features),
                      **cfg.pool_options())
    return env


def _goal_features(tasks) -> torch.Tensor:
    """[B, goal_dim] each sub-env's goal (velocity [B, 1], direction [B, 1] or position [B, 2])."""
    return tasks["goal"]


def _spec(name: str, robot: str, task: str, dist: type) -> EnvSpec:
    return EnvSpec(name, MujocoTaskConfig, ("mujoco", "continuous"), lambda cfg: dist(),
                   lambda cfg, num_envs, device, generator: make_env(robot, task, cfg, num_envs, device, generator),
                   lambda cfg: cfg.episodes)


HALFCHEETAH_VEL = _spec("halfcheetah-vel", "halfcheetah", "vel", VelocityDistribution)
HALFCHEETAH_DIR = _spec("halfcheetah-dir", "halfcheetah", "dir", DirectionDistribution)
ANT_DIR = _spec("ant-dir", "ant", "dir", DirectionDistribution)
ANT_GOAL = _spec("ant-goal", "ant", "goal", GoalDistribution)
