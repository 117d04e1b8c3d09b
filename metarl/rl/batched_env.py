"""The batched env interface: B sub-envs, each running its own task, stepped as one.

Tensors in and out live on `env.device`, so a pure-torch env steps on the GPU with the
policy and nothing is copied per step. Sub-envs auto-reset: when `done[i]` is true the
returned `obs[i]` is already the first observation of the next episode (as in SB3's
VecEnv). Episodes of the envs here have a fixed length `horizon`, so all sub-envs finish
together and a trial of `episodes_per_trial` episodes is `trial_length` steps.
"""
from __future__ import annotations

import contextlib
import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import gymnasium as gym
import torch

from metarl.rl.episodes import EpisodeBatch, episode_ends
from metarl.sim.options import SimulationOptions
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

    def episode(self, obs: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor],
                to_env: Callable[[torch.Tensor], torch.Tensor] | None = None,
                observe: Callable[[torch.Tensor], None] | None = None, episodes: int = 1) -> EpisodeBatch:
        """Step `episodes` whole episodes (horizon steps each; the env resets itself between them)
        from `obs` [B, D], just returned by reset().

        act(obs [B, D]) -> actions [B(, A)] in the policy's units; to_env maps them to the env's
        (default identity); observe(reward [B]), if given, sees each step's reward. Returns an
        EpisodeBatch of T = episodes x horizon steps: obs (what the policy saw), actions (as act
        returned them), rewards, dones, info {key: [T, B]}, mean_rewards where the env has them;
        no logprobs or values. The episode is over afterwards: call reset() before stepping again."""
        obs_buf, act_buf, rew_buf, mean_buf, info_buf = [], [], [], [], {}
        for _ in range(episodes * self.horizon):
            a = act(obs)
            obs_buf.append(obs)
            act_buf.append(a)
            obs, r, _ = self.step(to_env(a) if to_env else a)
            if observe is not None:
                observe(r)
            rew_buf.append(r)
            if self.has_mean_reward:
                mean_buf.append(self.mean_reward)
            for k, v in self.info.items():
                info_buf.setdefault(k, []).append(v)
        rewards = torch.stack(rew_buf)
        return EpisodeBatch(torch.stack(obs_buf), torch.stack(act_buf), rewards,
                            episode_ends(*rewards.shape, self.horizon, rewards.device),
                            mean_rewards=torch.stack(mean_buf) if mean_buf else None,
                            info={k: torch.stack(v) for k, v in info_buf.items()})

    def run_policy(self, policy: "RowPolicy", episodes: int = 1) -> EpisodeBatch:
        """Reset, then `episodes` whole episodes of a policy whose randomness is drawn ahead (see
        RowPolicy), its step t counted across them (episode e holds t = e * horizon ...); returns
        what episode() returns. A policy with observe(reward, t) sees every reward (RL²'s keeps
        its memory across the episodes). An env that simulates in worker processes runs each
        worker's share of the policy there, with no round trip per step; calling
        BatchedEnv.run_policy(env, ...) on it runs the policy here instead, stepping the workers
        (the same samples: the policy's randomness is drawn ahead)."""
        t = [-1]

        def act(o):
            t[0] += 1
            return policy.act(o, t[0])
        observe = getattr(policy, "observe", None)
        return self.episode(self.reset(), act, policy.to_env,
                            None if observe is None else lambda r: observe(r, t[0]), episodes)

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

    def probe(self, cfg, device="cpu") -> BatchedEnv:
        """One sub-env built in this process (no simulation workers), to read the env's dimensions
        and spaces from, e.g. when loading a policy."""
        if isinstance(cfg, SimulationOptions):
            cfg = dataclasses.replace(cfg, backend="inline")
        return self.make_env(cfg, 1, torch.device(device), torch.Generator(device=device))


class RowPolicy(Protocol):
    """A policy that can act for any block of sub-envs on its own: picklable, holding its
    parameters and its pre-drawn sampling noise for every step, so a simulation worker runs it
    without a generator or the main process, and the actions do not depend on how the
    sub-envs are split among workers."""

    def rows(self, lo: int, hi: int) -> "RowPolicy":
        """The policy of sub-envs [lo, hi) alone (their rows become 0 .. hi - lo)."""

    def act(self, obs: torch.Tensor, t: int) -> torch.Tensor:
        """obs [b, D] of this policy's sub-envs at step t -> actions [b(, A)] in its units."""

    def to_env(self, a: torch.Tensor) -> torch.Tensor:
        """The policy's actions -> the env's."""

    # Optional: observe(reward [b], t), called after step t with its rewards, for a policy whose
    # next action depends on them (RL²'s recurrent policy).
