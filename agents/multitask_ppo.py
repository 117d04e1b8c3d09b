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

from dataclasses import dataclass

import numpy as np
import torch

from metarl.config import option
from metarl.rl.batched_env import EnvSpec
from metarl.training import AgentSpec

from metarl.agents.sb3_baselines import SB3Trainer, _sb3, to_env_actions
from metarl.agents.sb3_scratch import PPOFromScratch
from metarl.rl.distributions import box_bounds


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


class MultitaskPPOTrainer(SB3Trainer):
    """One iteration = one episode in each of num_envs fresh training tasks, then SB3's update."""
    policy, metric, obs_only = "MlpPolicy", "episode_return", True

    @staticmethod
    def algo_cls() -> type:
        _sb3()
        from stable_baselines3 import PPO
        return PPO

    @staticmethod
    def policy_kwargs(cfg) -> dict:
        return {"net_arch": [cfg.hidden_size, cfg.hidden_size]}


class ZeroShot:
    """The pretrained policy on held-out tasks, no updates (sampled actions, as every method's
    evaluation). A TrialPolicy."""

    def __init__(self, policy, env):
        self.policy, self.discrete = policy, env.discrete
        if not self.discrete:
            self.low, self.high = box_bounds(env.action_space)

    def reset(self, num_envs: int, device) -> None:
        pass

    @torch.no_grad()
    def act(self, obs):
        a, _ = self.policy.predict(obs.cpu().numpy().astype(np.float32), deterministic=False)
        return to_env_actions(a, self, obs.device)

    def observe(self, actions, rewards, dones, next_obs) -> None:
        pass


def load_eval_policy(checkpoint: dict, env_spec: EnvSpec, env_cfg, cfg: MultitaskPPOConfig, device, seed: int):
    """Fine-tuned: on every held-out task an SB3 PPO starts from the pretrained weights (new
    copies at each reset, i.e. each batch of tasks), with the pretraining's discount and GAE
    lambda and ppo-scratch's update schedule."""
    torch.manual_seed(seed)
    env = env_spec.probe(env_cfg)
    try:
        return PPOFromScratch(env, env_cfg, seed, init=checkpoint["trainer"]["policy"],
                              policy_kwargs=MultitaskPPOTrainer.policy_kwargs(cfg),
                              ppo_kwargs={"gamma": cfg.gamma, "gae_lambda": cfg.gae_lambda})
    finally:
        env.close()


def extra_eval_policies(checkpoint: dict, env_spec: EnvSpec, env_cfg, cfg: MultitaskPPOConfig, device,
                        seed: int) -> dict:
    """{label: make_policy(env)} evaluated beside the headline figure."""
    env = env_spec.probe(env_cfg)
    try:
        policy = MultitaskPPOTrainer.eval_policy(checkpoint, cfg, env, env.obs_dim, seed)
    finally:
        env.close()
    return {"zero-shot": lambda env: ZeroShot(policy, env)}


MULTITASK_PPO = AgentSpec("multitask-ppo", MultitaskPPOConfig, MultitaskPPOTrainer, load_eval_policy,
                          curve_keys=("episode_return",), extra_eval=extra_eval_policies)
