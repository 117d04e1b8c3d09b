"""Per-task learners from stable-baselines3 for `metarl eval`: trained from scratch (or from
pretrained weights) on each held-out task during that task's trial, so they get exactly the
episodes the meta-learners get to adapt, and score the reward they collect meanwhile (what an
RL² trial counts). TrialPolicies; one network per task, so they are opt-in baselines.

- `ppo-scratch` (PPOFromScratch): PPO, any action space; multi-task PPO fine-tunes through it.
- `sac-scratch` (SACFromScratch): SAC, continuous control (navigation, MuJoCo, Meta-World).
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from metarl.errors import UserError

from metarl.agents.sb3_baselines import _sb3, quiet_logger, to_env_actions, unit_box
from metarl.rl.distributions import box_bounds, unit_to_bounds


class _Spaces(gym.Env):
    """A stand-in gymnasium env that only carries spaces: SB3 builds a model from it; the steps
    come from metarl's batched env."""

    def __init__(self, observation_space, action_space):
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        raise RuntimeError("stand-in env: not stepped")


class PPOFromScratch:
    """Baseline `ppo-scratch`: stable-baselines3's PPO trained from scratch on each held-out task
    during that task's trial, so it gets exactly the episodes the meta-learners get to adapt,
    and its score is the reward it collects meanwhile (what an RL² trial counts). One PPO per
    sub-env, each updated after every n_steps = min(32, max(4, horizon / 2)) steps of its own
    experience; SB3's other defaults. Continuous actions are learned in [-1, 1] and scaled to the
    env's bounds (SB3's convention). A TrialPolicy: `metarl eval RUN --baselines ppo-scratch`
    (opt-in: one network per task is slow for thousands of tasks).
    init, policy_kwargs, ppo_kwargs: a policy state_dict every per-task PPO starts from, the network
    it needs, and PPO options other than SB3's defaults (multi-task PPO fine-tuning)."""

    def __init__(self, env, env_cfg, seed: int, init: dict | None = None, policy_kwargs: dict | None = None,
                 ppo_kwargs: dict | None = None):
        _sb3()
        self.env, self.seed, self.init, self.policy_kwargs = env, seed, init, policy_kwargs
        self.ppo_kwargs = ppo_kwargs or {}
        self.discrete = env.discrete
        self.obs_space = gym.spaces.Box(-np.inf, np.inf, (env.obs_dim,), np.float32)
        self.n_steps = max(4, min(32, env.horizon // 2))
        if self.discrete:
            self.act_space = env.action_space
        else:
            self.low, self.high = box_bounds(env.action_space)
            self.act_space = unit_box(env.action_space)

    def reset(self, num_envs: int, device) -> None:
        from stable_baselines3 import PPO
        stand_in = _Spaces(self.obs_space, self.act_space)
        self.models = []
        for i in range(num_envs):
            m = PPO("MlpPolicy", stand_in, n_steps=self.n_steps, batch_size=self.n_steps, seed=self.seed + i,
                    device="cpu", policy_kwargs=self.policy_kwargs, **self.ppo_kwargs)
            if self.init is not None:
                m.policy.load_state_dict(self.init)
            m.set_logger(quiet_logger())
            self.models.append(m)
        self.starts = np.ones(num_envs, dtype=bool)  # [B] the next stored step begins an episode
        self.last = None

    @torch.no_grad()
    def act(self, obs):
        self.obs = obs.cpu().numpy().astype(np.float32)
        acts, self.last = [], []
        for m, o in zip(self.models, self.obs):
            a, v, logp = m.policy(torch.as_tensor(o).unsqueeze(0))
            acts.append(a[0])
            self.last.append((a.numpy(), v, logp))
        return to_env_actions(torch.stack(acts), self, obs.device)

    def observe(self, actions, rewards, dones, next_obs) -> None:
        r, d = rewards.cpu().numpy(), dones.cpu().numpy()
        nxt = next_obs.cpu().float()
        for i, (m, (a, v, logp)) in enumerate(zip(self.models, self.last)):
            m.rollout_buffer.add(self.obs[i:i + 1], a, r[i:i + 1], self.starts[i:i + 1], v, logp)
            if m.rollout_buffer.full:
                with torch.no_grad():
                    last_v = m.policy.predict_values(nxt[i:i + 1])
                m.rollout_buffer.compute_returns_and_advantage(last_v, d[i:i + 1])
                with torch.enable_grad():  # evaluation plays trials under no_grad
                    m.train()
                m.rollout_buffer.reset()
        self.starts = d.astype(bool)


class SACFromScratch:
    """Baseline `sac-scratch`: stable-baselines3's SAC trained from scratch on each held-out task
    during its trial (continuous control). One SAC per sub-env, with SB3's defaults (2x256 MLPs,
    automatic entropy tuning, batch 256, one gradient step per env step once 100 steps are
    stored) and a replay buffer holding the whole trial. Actions are learned in [-1, 1] and
    scaled to the env's bounds. An episode's last step counts as terminal (the batched env
    resets at once, so there is no final observation to bootstrap from), as for ppo-scratch."""

    def __init__(self, env, env_cfg, seed: int):
        _sb3()
        if env.discrete:
            raise UserError("sac-scratch needs continuous actions; use ppo-scratch for discrete ones")
        self.env, self.seed = env, seed
        self.obs_space = gym.spaces.Box(-np.inf, np.inf, (env.obs_dim,), np.float32)
        self.act_space = unit_box(env.action_space)
        self.low, self.high = box_bounds(env.action_space)
        # the longest trial any protocol plays: RL² episodes, or Meta-World's adaptation + evaluation episodes
        episodes = max(getattr(env_cfg, "episodes", 1),
                       getattr(env_cfg, "adapt_episodes", 0) + getattr(env_cfg, "eval_episodes", 0))
        self.buffer = env.horizon * episodes

    def reset(self, num_envs: int, device) -> None:
        from stable_baselines3 import SAC
        stand_in = _Spaces(self.obs_space, self.act_space)
        self.models = []
        for i in range(num_envs):
            m = SAC("MlpPolicy", stand_in, buffer_size=self.buffer + 1, seed=self.seed + i, device="cpu")
            m.set_logger(quiet_logger())
            self.models.append(m)
        self.steps = 0

    @torch.no_grad()
    def act(self, obs):
        self.obs = obs.cpu().numpy().astype(np.float32)
        if self.steps < self.models[0].learning_starts:  # SB3's warm-up: uniform actions
            self.a = np.stack([m.action_space.sample() for m in self.models])
        else:
            self.a = np.stack([m.predict(o, deterministic=False)[0] for m, o in zip(self.models, self.obs)])
        return unit_to_bounds(torch.as_tensor(self.a), self.low, self.high).to(obs.device)

    def observe(self, actions, rewards, dones, next_obs) -> None:
        r, d = rewards.cpu().numpy(), dones.cpu().numpy()
        nxt = next_obs.cpu().numpy().astype(np.float32)
        self.steps += 1
        for i, m in enumerate(self.models):
            m.replay_buffer.add(self.obs[i:i + 1], nxt[i:i + 1], self.a[i:i + 1], r[i:i + 1], d[i:i + 1], [{}])
            if self.steps >= m.learning_starts:
                with torch.enable_grad():  # evaluation plays trials under no_grad
                    m.train(gradient_steps=1, batch_size=m.batch_size)
