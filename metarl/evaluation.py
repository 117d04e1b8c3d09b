"""The evaluation protocol: every method plays the same held-out tasks, trial by trial.

The contract between a method and the evaluator is the tiny TrialPolicy protocol. Tasks
come from the test split of the eval seed, and the env's own randomness from a generator
seeded the same way for every method, so methods differ only by what they do.
"""
from __future__ import annotations

from typing import Protocol

import torch

from metarl.batched_env import EnvSpec
from metarl.seeding import make_generator
from metarl.stats import mean_ci
from metarl.tasks import split_generator, tasks_slice


class TrialPolicy(Protocol):
    def reset(self, num_envs: int, device) -> None:
        """A new trial starts in every sub-env (new tasks): forget everything."""

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """obs [B, obs_dim] -> actions [B] (long)."""

    def observe(self, actions: torch.Tensor, rewards: torch.Tensor, dones: torch.Tensor,
                next_obs: torch.Tensor) -> None:
        """What happened after `act`: actions, rewards, dones [B]; next_obs [B, obs_dim]."""


def held_out_tasks(env_spec: EnvSpec, env_cfg, num_tasks: int, seed: int, device):
    return env_spec.make_distribution(env_cfg).sample(num_tasks, split_generator(seed, "test", device))


@torch.no_grad()
def evaluate(make_policy, env_spec: EnvSpec, env_cfg, num_tasks: int, seed: int, device,
             batch_size: int = 4096) -> torch.Tensor:
    """Play one trial on each of `num_tasks` held-out tasks.

    make_policy(env) -> TrialPolicy. Returns episode returns [num_tasks, episodes_per_trial]."""
    device = torch.device(device)
    tasks = held_out_tasks(env_spec, env_cfg, num_tasks, seed, device)
    E = env_spec.episodes_per_trial(env_cfg)
    env_gen = make_generator(seed, "eval-env", device)
    policy = None
    out = []
    for start in range(0, num_tasks, batch_size):
        b = min(batch_size, num_tasks - start)
        env = env_spec.make_env(env_cfg, b, device, env_gen)
        if policy is None:
            policy = make_policy(env)
        env.set_tasks(tasks_slice(tasks, slice(start, start + b)))
        obs = env.reset()
        policy.reset(b, device)
        returns = torch.zeros(b, E, device=device)
        for e in range(E):
            for _ in range(env.horizon):
                a = policy.act(obs)
                next_obs, r, d = env.step(a)
                policy.observe(a, r, d, next_obs)
                returns[:, e] += r
                obs = next_obs
        out.append(returns.cpu())
    return torch.cat(out)


def summarize(returns: torch.Tensor) -> dict:
    """returns [N, E] -> total-reward mean/CI and the mean return of each episode."""
    return {"total": mean_ci(returns.sum(1)), "per_episode": returns.mean(0).tolist()}


def format_table(results: dict[str, dict], title: str) -> str:
    rows = sorted(results.items(), key=lambda kv: -kv[1]["total"]["mean"])
    width = max(len(n) for n in results) + 2
    lines = [title, f"{'method':<{width}}{'mean total reward':>18}  {'95% CI':>20}  {'n':>6}"]
    for name, r in rows:
        t = r["total"]
        lines.append(f"{name:<{width}}{t['mean']:>18.3f}  [{t['ci_low']:>8.3f}, {t['ci_high']:>8.3f}]  {t['n']:>6}")
    return "\n".join(lines)
