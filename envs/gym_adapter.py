"""One task at a time as a Gymnasium env, built on the batched env with B = 1.

A Gymnasium episode is one trial: a task is drawn from the distribution at every reset
(or fixed with `options={"task": {...}}`), and the trial runs `episodes_per_trial` inner
episodes; `info["episode_end"]` marks the end of each inner episode.

With `rl2_inputs=True` the observation is what an RL² agent sees (metarl.rl.trial.RL2Input):
[obs, previous action (one-hot when discrete), previous reward, previous done, t / trial
length], so an off-the-shelf recurrent agent (sb3-contrib's RecurrentPPO) can learn to adapt
within a trial: `gym.make("metarl/BernoulliBandit-v0", k=5, n=100, rl2_inputs=True)`.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from metarl.config import build
from metarl.registry import ENVS, lookup
from metarl.rl.trial import RL2History, RL2Input

GYM_IDS = {"metarl/BernoulliBandit-v0": "bandit", "metarl/GaussianBandit-v0": "gaussian-bandit",
           "metarl/TabularMDP-v0": "tabular-mdp", "metarl/Navigation2D-v0": "navigation-2d"}
# MuJoCo families (mujoco extra): simulated in the calling process, no workers.
MUJOCO_GYM_IDS = {"metarl/HalfCheetahVel-v0": "halfcheetah-vel", "metarl/HalfCheetahDir-v0": "halfcheetah-dir",
                  "metarl/AntDir-v0": "ant-dir", "metarl/AntGoal-v0": "ant-goal"}
# Meta-World (metaworld extra): a training task of the benchmark per reset (ML1: env.task picks
# the task, e.g. gym.make("metarl/ML1-v0", task="push-v3")); simulated in the calling process.
METAWORLD_GYM_IDS = {"metarl/ML1-v0": "ml1", "metarl/ML10-v0": "ml10", "metarl/ML25-v0": "ml25",
                     "metarl/ML45-v0": "ml45"}


class SingleTaskEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, env_name: str, rl2_inputs: bool = False, **config):
        spec = lookup("env", ENVS, env_name)
        self.cfg = build(spec.config_cls, config, "env")
        self.dist = spec.make_distribution(self.cfg)
        self._gen = torch.Generator()
        self.env = spec.make_env(self.cfg, 1, torch.device("cpu"), self._gen)
        self.trial_length = self.env.horizon * spec.episodes_per_trial(self.cfg)
        self.action_space = self.env.action_space
        self.rl2 = rl2_inputs
        self.history = RL2History(RL2Input(self.env.num_actions, self.trial_length))
        if rl2_inputs:
            n = self.history.spec.dim(self.env.obs_dim)
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (n,), np.float32)
        else:
            self.observation_space = self.env.observation_space
        self.task = None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._gen.manual_seed(int(self.np_random.integers(2**62)))
        if options and "task" in options:
            self.task = {k: torch.as_tensor(v, dtype=torch.float32).unsqueeze(0) for k, v in options["task"].items()}
        else:
            # Meta-World draws class-major batches; one task at a time takes any class
            self.task = getattr(self.dist, "sample_any", self.dist.sample)(1, self._gen)
        self.env.set_tasks(self.task)
        self.history.start()
        obs = self._obs(self.env.reset())
        return obs, {"task": {k: v[0].numpy() for k, v in self.task.items()}}

    def _obs(self, obs) -> np.ndarray:
        if self.rl2:
            obs = self.history.inputs(obs)
        return obs[0].numpy().astype(np.float32)

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        a = (torch.tensor([int(action)]) if self.env.discrete else
             torch.as_tensor(np.asarray(action, dtype=np.float32)).view(1, -1))
        obs, reward, done = self.env.step(a)
        self.history.record(a.view(-1) if self.env.discrete else a, reward, done)
        terminated = self.history.t >= self.trial_length
        return self._obs(obs), float(reward[0]), terminated, False, {"episode_end": bool(done[0])}

    def close(self):
        self.env.close()


def register_gym_envs() -> None:
    inline = {"backend": "inline"}  # one env, no worker processes (a plain script needs no __main__ guard)
    for ids, extra in ((GYM_IDS, {}), (MUJOCO_GYM_IDS, inline), (METAWORLD_GYM_IDS, inline)):
        for gym_id, name in ids.items():
            if gym_id not in gym.registry:
                gym.register(gym_id, entry_point="metarl.envs.gym_adapter:SingleTaskEnv",
                             kwargs={"env_name": name, **extra})
