"""Baseline agent `multitask-ppo`: stable-baselines3's PPO pretrained on the training tasks.

Training: one memoryless MLP policy (SB3's MlpPolicy) on plain episodes of the batched env, a
fresh training task in every episode; it sees the env's observation alone (no task id, no RL²
inputs), so it learns the policy that is best on average over the task distribution.

Evaluation on the held-out tasks, the same tasks and trials as every other method:
- `multitask-ppo` (its headline figure): fine-tuned. On each held-out task an SB3 PPO starts
  from the pretrained weights and keeps learning during the task's trial, with ppo-scratch's
  update schedule, so it gets exactly the episodes the meta-learners get to adapt; the score is
  the reward collected meanwhile. Beside `metarl eval RUN --baselines ppo-scratch` it shows what
  pretraining buys over learning from scratch.
- `multitask-ppo (zero-shot)`: the pretrained policy as it is, no updates.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from metarl.batched_env import EnvSpec
from metarl.config import option
from metarl.errors import UserError
from metarl.training import AgentSpec

from metarl.agents.sb3_baselines import _sb3, trial_vec_env, unit_to_bounds
from metarl.agents.sb3_scratch import PPOFromScratch


@dataclass
class MultitaskPPOConfig:
    total_steps: int = option(2_000_000, "env steps to pretrain for (rounded up to whole rollouts of one episode "
                                         "per env)", ge=1)
    num_envs: int = option(64, "parallel episodes per rollout, each in a fresh training task", ge=1)
    hidden_size: int = option(64, "units of each of the policy's and value function's two hidden layers "
                                  "(SB3's MlpPolicy default: 64)", ge=1)
    lr: float = option(3e-4, "Adam learning rate", gt=0.0)
    gamma: float = option(0.99, "discount", ge=0.0, le=1.0)
    gae_lambda: float = option(0.95, "GAE lambda", ge=0.0, le=1.0)
    clip: float = option(0.2, "PPO ratio clip", gt=0.0)
    epochs: int = option(10, "PPO epochs per rollout (SB3's default)", ge=1)
    num_minibatches: int = option(4, "minibatches per epoch", ge=1)
    ent_coef: float = option(0.0, "entropy bonus (SB3's default)", ge=0.0)
    vf_coef: float = option(0.5, "value loss weight", ge=0.0)
    max_grad_norm: float = option(0.5, "gradient clipping norm", gt=0.0)
    checkpoint_every: int = option(10, "iterations between checkpoints", ge=1)


def _policy_kwargs(cfg: MultitaskPPOConfig) -> dict:
    return {"net_arch": [cfg.hidden_size, cfg.hidden_size]}


class MultitaskPPOTrainer:
    """One iteration = one episode in each of num_envs fresh training tasks, then SB3's update."""

    def __init__(self, env_spec: EnvSpec, env_cfg, cfg: MultitaskPPOConfig, seed: int, device: torch.device):
        _sb3()
        from stable_baselines3 import PPO
        self.PPO, self.cfg, self.device = PPO, cfg, device
        if device.type == "cpu":
            torch.set_num_threads(1)  # SB3 runs a small MLP per env step: one thread is fastest
        self.venv = trial_vec_env(env_spec, env_cfg, cfg.num_envs, seed, obs_only=True)
        H = self.venv.trial.trial_length  # one episode
        self.steps_per_iteration = cfg.num_envs * H
        if self.steps_per_iteration % cfg.num_minibatches:
            raise UserError(f"agent.num_minibatches={cfg.num_minibatches} must divide the {self.steps_per_iteration} "
                            f"steps of a rollout (num_envs x episode length)")
        self.iterations = -(-cfg.total_steps // self.steps_per_iteration)
        self.model = PPO("MlpPolicy", self.venv, n_steps=H, batch_size=self.steps_per_iteration // cfg.num_minibatches,
                         n_epochs=cfg.epochs, learning_rate=cfg.lr, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda,
                         clip_range=cfg.clip, ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef,
                         max_grad_norm=cfg.max_grad_norm, policy_kwargs=_policy_kwargs(cfg), seed=seed,
                         device=str(device))
        self.started = False

    def train_iteration(self, it: int) -> dict[str, float]:
        self.model.learn(self.steps_per_iteration, reset_num_timesteps=not self.started)  # exactly one rollout
        self.started = True
        returns = self.venv.pop_trial_returns()
        return {"episode_return": float(returns.mean()) if returns.numel() else float("nan")}

    def state_dict(self) -> dict:
        buf = io.BytesIO()
        self.model.save(buf)
        return {"model": buf.getvalue(), "venv": self.venv.state_dict(), "num_timesteps": self.model.num_timesteps}

    def load_state_dict(self, d: dict) -> None:
        self.model = self.PPO.load(io.BytesIO(d["model"]), env=self.venv, device=str(self.device))
        self.venv.load_state_dict(d["venv"])
        self.started = True


class ZeroShot:
    """The pretrained policy on held-out tasks, no updates (sampled actions, as every method's
    evaluation). A TrialPolicy."""

    def __init__(self, model, env):
        self.model, self.discrete = model, env.discrete
        if not self.discrete:
            self.low = torch.as_tensor(env.action_space.low, dtype=torch.float32)
            self.high = torch.as_tensor(env.action_space.high, dtype=torch.float32)

    def reset(self, num_envs: int, device) -> None:
        pass

    @torch.no_grad()
    def act(self, obs):
        a, _ = self.model.predict(obs.cpu().numpy().astype(np.float32), deterministic=False)
        a = torch.as_tensor(a)
        if self.discrete:
            return a.long().view(-1).to(obs.device)
        return unit_to_bounds(a, self.low, self.high).to(obs.device)

    def observe(self, actions, rewards, dones, next_obs) -> None:
        pass


def _load_model(checkpoint: dict, seed: int):
    from stable_baselines3 import PPO
    _sb3()
    torch.manual_seed(seed)  # SB3 samples actions from torch's global generator
    return PPO.load(io.BytesIO(checkpoint["trainer"]["model"]), device="cpu")


def load_eval_policy(checkpoint: dict, env_spec: EnvSpec, env_cfg, cfg: MultitaskPPOConfig, device, seed: int):
    """Fine-tuned: per-task SB3 PPO from the pretrained weights (built per eval batch by `metarl eval`)."""
    model = _load_model(checkpoint, seed)
    env = env_spec.make_env(env_cfg, 1, torch.device("cpu"), torch.Generator())
    try:
        return PPOFromScratch(env, env_cfg, seed, init=model.policy.state_dict(), policy_kwargs=_policy_kwargs(cfg))
    finally:
        env.close()


def extra_eval_policies(checkpoint: dict, env_spec: EnvSpec, env_cfg, cfg: MultitaskPPOConfig, device,
                        seed: int) -> dict:
    """{label: make_policy(env)} evaluated beside the headline figure."""
    model = _load_model(checkpoint, seed)
    return {"zero-shot": lambda env: ZeroShot(model, env)}


MULTITASK_PPO = AgentSpec("multitask-ppo", MultitaskPPOConfig, MultitaskPPOTrainer, load_eval_policy,
                          curve_keys=("episode_return",), extra_eval=extra_eval_policies)
