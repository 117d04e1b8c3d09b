"""Baselines from stable-baselines3 / sb3-contrib on metarl's task distributions.

`recurrent-ppo`: sb3-contrib's RecurrentPPO (LSTM actor and critic) on the RL² trial env, an
off-the-shelf peer of metarl's RL²: a whole trial (all its episodes in one task) is one SB3
episode, the observation is the RL² input [obs, previous action, previous reward, previous
done, t / trial length], and every trial draws a fresh training task. The batched env is
exposed to SB3 as a VecEnv (TrialVecEnv), so simulation stays batched; the learner is SB3's
own. Trained and evaluated through `metarl train` / `metarl eval` like any agent, so `metarl
compare` puts it beside RL² on the same held-out tasks.
"""
from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from metarl.config import option
from metarl.errors import UserError
from metarl.rl.batched_env import EnvSpec
from metarl.rl.distributions import box_bounds, unit_to_bounds
from metarl.rl.trial import RL2History, RL2Input, TrialEnv
from metarl.seeding import make_generator
from metarl.tasks import split_generator
from metarl.training import AgentSpec


def _sb3():
    """(RecurrentPPO, VecEnv), or the one-line install hint when the sb3 extra is missing."""
    try:
        from sb3_contrib import RecurrentPPO
        from stable_baselines3.common.vec_env import VecEnv
    except ImportError:
        raise UserError('the stable-baselines3 agents and baselines (recurrent-ppo, multitask-ppo, ppo-scratch, '
                        'sac-scratch) need stable-baselines3 and sb3-contrib: pip install -e ".[sb3]"') from None
    return RecurrentPPO, VecEnv


def quiet_logger():
    """An SB3 logger that writes nothing (SB3's configure(None, []) makes a temp folder per call)."""
    from stable_baselines3.common.logger import Logger
    return Logger(folder=None, output_formats=[])


def unit_box(space: gym.spaces.Box) -> gym.spaces.Box:
    """The [-1, 1] box of `space`'s shape: SB3's Gaussian policies learn there (unit_to_bounds maps back)."""
    return gym.spaces.Box(-1.0, 1.0, space.shape, np.float32)


@dataclass
class RecurrentPPOConfig:
    total_steps: int = option(2_000_000, "env steps to train for (rounded up to whole rollouts of one trial per env)",
                              ge=1)
    num_envs: int = option(64, "parallel trials per rollout, one task each", ge=1)
    hidden_size: int = option(128, "LSTM hidden units (actor and critic each have an LSTM, sb3-contrib's default)",
                              ge=1)
    lr: float = option(3e-4, "Adam learning rate", gt=0.0)
    gamma: float = option(0.99, "discount over the whole trial", ge=0.0, le=1.0)
    gae_lambda: float = option(0.95, "GAE lambda", ge=0.0, le=1.0)
    clip: float = option(0.2, "PPO ratio clip", gt=0.0)
    epochs: int = option(4, "PPO epochs per rollout", ge=1)
    num_minibatches: int = option(4, "minibatches per epoch", ge=1)
    ent_coef: float = option(0.01, "entropy bonus", ge=0.0)
    vf_coef: float = option(0.5, "value loss weight", ge=0.0)
    max_grad_norm: float = option(0.5, "gradient clipping norm", gt=0.0)
    checkpoint_every: int = option(10, "iterations between checkpoints", ge=1)


def sb3_spaces(env, input_dim: int) -> tuple[gym.spaces.Space, gym.spaces.Space]:
    """SB3's (observation, action) spaces for a batched env whose policy reads input_dim
    features: continuous actions exposed in the unit box (scaled by to_env_actions)."""
    actions = env.action_space if env.discrete else unit_box(env.action_space)
    return gym.spaces.Box(-np.inf, np.inf, (input_dim,), np.float32), actions


def trial_vec_env(env_spec: EnvSpec, env_cfg, num_envs: int, seed: int, obs_only: bool = False):
    """A TrialVecEnv (built lazily: SB3's VecEnv base class is an optional dependency).
    obs_only: plain episodes for a memoryless learner (multi-task PPO): one episode per SB3
    episode, the env's observation alone (no RL² inputs), a fresh training task each episode."""
    _, VecEnv = _sb3()

    class TrialVecEnv(VecEnv):
        """RL² trials of a batched env as an SB3 VecEnv of `num_envs` sub-envs. All trials start
        and end together (same length), so at each trial end every sub-env reports done with its
        terminal observation and trial return (info["episode"]) and a new trial starts in fresh
        training tasks. Continuous actions are exposed in [-1, 1] and scaled to the env's bounds."""
        render_mode = None

        def __init__(self):
            self.dist = env_spec.make_distribution(env_cfg)
            self.dist.sample(num_envs, torch.Generator())  # a bad batch size fails before workers start
            self.task_gen = split_generator(seed, "train")
            self.env_gen = make_generator(seed, "env")
            env = env_spec.make_env(env_cfg, num_envs, torch.device("cpu"), self.env_gen)
            self.trial = TrialEnv(env, 1 if obs_only else env_spec.episodes_per_trial(env_cfg),
                                  time_feature=not obs_only)
            self.obs_dim = env.obs_dim
            self.discrete = env.discrete
            if not self.discrete:
                self.low, self.high = box_bounds(env.action_space)
            super().__init__(num_envs, *sb3_spaces(env, self.obs_dim if obs_only else self.trial.input_dim))
            self.returns = torch.zeros(num_envs)
            self.finished: list[torch.Tensor] = []  # returns [B] of the trials finished since the last pop

        def _view(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :self.obs_dim] if obs_only else x  # the RL² input begins with the observation

        def reset(self):
            self.returns.zero_()
            return self._view(self.trial.start(self.dist.sample(self.num_envs, self.task_gen))).numpy()

        def step_async(self, actions):
            self._actions = actions

        def step_wait(self):
            a = torch.as_tensor(np.asarray(self._actions))
            if self.discrete:
                a = a.long().view(-1)
            else:
                a = unit_to_bounds(a, self.low, self.high)
            x, r, _ = self.trial.step(a)
            x = self._view(x)
            self.returns += r
            infos = [{} for _ in range(self.num_envs)]
            done = self.trial.t >= self.trial.trial_length
            if done:
                for i in range(self.num_envs):
                    infos[i] = {"terminal_observation": x[i].numpy(),
                                "episode": {"r": float(self.returns[i]), "l": self.trial.trial_length}}
                self.finished.append(self.returns.clone())
                x = torch.as_tensor(self.reset())
            return x.numpy(), r.numpy().astype(np.float32), np.full(self.num_envs, done), infos

        def pop_trial_returns(self) -> torch.Tensor:
            out = torch.cat(self.finished) if self.finished else torch.zeros(0)
            self.finished = []
            return out

        def close(self):
            self.trial.env.close()

        def get_attr(self, attr_name, indices=None):
            return [getattr(self, attr_name)] * len(self._get_indices(indices))

        def set_attr(self, attr_name, value, indices=None):
            setattr(self, attr_name, value)

        def env_method(self, method_name, *args, indices=None, **kwargs):
            return [getattr(self, method_name)(*args, **kwargs)] * len(self._get_indices(indices))

        def env_is_wrapped(self, wrapper_class, indices=None):
            return [False] * len(self._get_indices(indices))

        def state_dict(self) -> dict:
            return {"task_gen": self.task_gen.get_state(), "env_gen": self.env_gen.get_state()}

        def load_state_dict(self, d: dict) -> None:
            self.task_gen.set_state(d["task_gen"])
            self.env_gen.set_state(d["env_gen"])

    return TrialVecEnv()


class SB3Trainer:
    """An SB3 algorithm on a TrialVecEnv as a metarl Trainer: one iteration = one rollout of one
    trial (obs_only: one episode) in each of num_envs sub-envs, then SB3's update; checkpoints
    hold the policy's and optimiser's state and the task and env generators.
    Subclasses give algo_cls (the SB3 class, imported lazily), policy and policy_kwargs, metric, obs_only."""
    policy: str
    metric: str
    obs_only = False

    def __init__(self, env_spec: EnvSpec, env_cfg, cfg, seed: int, device: torch.device):
        self.cfg, self.device = cfg, device
        if device.type == "cpu":
            torch.set_num_threads(1)  # SB3 runs a small network per env step: one thread is fastest
        self.venv = trial_vec_env(env_spec, env_cfg, cfg.num_envs, seed, obs_only=self.obs_only)
        T = self.venv.trial.trial_length
        self.steps_per_iteration = cfg.num_envs * T
        if self.steps_per_iteration % cfg.num_minibatches:
            raise UserError(f"agent.num_minibatches={cfg.num_minibatches} must divide the {self.steps_per_iteration} "
                            f"steps of a rollout (num_envs x {'episode' if self.obs_only else 'trial'} length)")
        self.iterations = -(-cfg.total_steps // self.steps_per_iteration)
        self.kwargs = dict(n_steps=T, batch_size=self.steps_per_iteration // cfg.num_minibatches, n_epochs=cfg.epochs,
                           learning_rate=cfg.lr, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, clip_range=cfg.clip,
                           ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm)
        self.model = self.algo_cls()(self.policy, self.venv, policy_kwargs=self.policy_kwargs(cfg), seed=seed,
                               device=str(device), **self.kwargs)
        self.started = False

    @staticmethod
    def algo_cls() -> type:
        raise NotImplementedError

    @staticmethod
    def policy_kwargs(cfg) -> dict:
        raise NotImplementedError

    def train_iteration(self, it: int) -> dict[str, float]:
        # learn() continues from the model's timestep count; it collects exactly one rollout
        self.model.learn(self.steps_per_iteration, reset_num_timesteps=not self.started)
        self.started = True
        returns = self.venv.pop_trial_returns()
        return {self.metric: float(returns.mean()) if returns.numel() else float("nan")}

    def state_dict(self) -> dict:
        """Tensors and plain values only (no SB3 zip: its data section is cloudpickle), so a
        checkpoint loads with torch.load(weights_only=True)."""
        m = self.model
        return {"policy": m.policy.state_dict(), "optimizer": m.policy.optimizer.state_dict(),
                "num_timesteps": m.num_timesteps, "n_updates": m._n_updates, "venv": self.venv.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.model.policy.load_state_dict(d["policy"])
        self.model.policy.optimizer.load_state_dict(d["optimizer"])
        self.model.num_timesteps, self.model._n_updates = d["num_timesteps"], d["n_updates"]
        self.venv.load_state_dict(d["venv"])
        self.started = True

    @classmethod
    def eval_policy(cls, checkpoint: dict, cfg, env, input_dim: int, seed: int):
        """The trained SB3 policy network of a checkpoint for evaluation, on CPU, torch's global
        generator seeded (SB3 samples actions from it); env gives the spaces."""
        torch.manual_seed(seed)
        policy = cls.algo_cls().policy_aliases[cls.policy](*sb3_spaces(env, input_dim), lambda _: 0.0,
                                                           **cls.policy_kwargs(cfg))
        policy.load_state_dict(checkpoint["trainer"]["policy"])
        policy.set_training_mode(False)
        return policy


class RecurrentPPOTrainer(SB3Trainer):
    """sb3-contrib's RecurrentPPO: one iteration = one trial in each of num_envs tasks."""
    policy, metric = "MlpLstmPolicy", "trial_return"

    @staticmethod
    def algo_cls() -> type:
        return _sb3()[0]

    @staticmethod
    def policy_kwargs(cfg) -> dict:
        return {"lstm_hidden_size": cfg.hidden_size}


class RecurrentPPOEvalPolicy:
    """The trained SB3 policy network as a TrialPolicy for `metarl eval`: builds the RL² inputs itself and
    carries the LSTM state through the trial (sampled actions, as the RL² evaluation)."""

    def __init__(self, policy, env, trial_length: int):
        self.policy = policy
        self.discrete = env.discrete
        self.history = RL2History(RL2Input(env.num_actions, trial_length))
        if not self.discrete:
            self.low, self.high = box_bounds(env.action_space)

    def reset(self, num_envs: int, device) -> None:
        self.state, self.starts = None, np.ones(num_envs, dtype=bool)
        self.history.start()

    @torch.no_grad()
    def act(self, obs):
        x = self.history.inputs(obs.cpu())
        a, self.state = self.policy.predict(x.numpy(), state=self.state, episode_start=self.starts, deterministic=False)
        self.starts = np.zeros_like(self.starts)
        return to_env_actions(a, self, obs.device)

    def observe(self, actions, rewards, dones, next_obs) -> None:
        self.history.record(actions.cpu(), rewards.cpu(), dones.cpu())


def to_env_actions(a, policy, device) -> torch.Tensor:
    """SB3's actions (numpy) -> the env's: long [B] for discrete, the unit box scaled to the
    policy's (low, high) bounds for continuous."""
    a = torch.as_tensor(a)
    if policy.discrete:
        return a.long().view(-1).to(device)
    return unit_to_bounds(a, policy.low, policy.high).to(device)


def load_eval_policy(checkpoint: dict, env_spec: EnvSpec, env_cfg, cfg: RecurrentPPOConfig, device, seed: int):
    env = env_spec.probe(env_cfg)
    try:
        T = env.horizon * env_spec.episodes_per_trial(env_cfg)
        net = RecurrentPPOTrainer.eval_policy(checkpoint, cfg, env, RL2Input(env.num_actions, T).dim(env.obs_dim), seed)
        return RecurrentPPOEvalPolicy(net, env, T)
    finally:
        env.close()


RECURRENT_PPO = AgentSpec("recurrent-ppo", RecurrentPPOConfig, RecurrentPPOTrainer, load_eval_policy)
