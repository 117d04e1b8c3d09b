"""The rollout container every collection path fills (EpisodeBatch [T, B, ...]) and the return
estimators every agent shares."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


def discounted_returns(rewards: torch.Tensor, dones: torch.Tensor, gamma: float,
                       bootstrap: torch.Tensor | None = None) -> torch.Tensor:
    """Discounted reward-to-go.

    rewards, dones: [T, B]; dones[t] marks that the episode ended after step t, so no return
    flows back across it. bootstrap: [B] value of the state after step T-1 (0 if None).
    Returns [T, B].
    """
    T = rewards.shape[0]
    out = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[0]) if bootstrap is None else bootstrap.to(rewards.dtype)
    notdone = 1.0 - dones.to(rewards.dtype)
    for t in range(T - 1, -1, -1):
        running = rewards[t] + gamma * notdone[t] * running
        out[t] = running
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, gamma: float, lam: float,
        last_value: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016).

    rewards, values, dones: [T, B]; last_value: [B] value after the last step (0 if None).
    Returns (advantages [T, B], returns [T, B] = advantages + values).
    """
    T = rewards.shape[0]
    adv = torch.empty_like(rewards)
    next_value = torch.zeros_like(rewards[0]) if last_value is None else last_value.to(rewards.dtype)
    running = torch.zeros_like(rewards[0])
    notdone = 1.0 - dones.to(rewards.dtype)
    for t in range(T - 1, -1, -1):
        delta = rewards[t] + gamma * notdone[t] * next_value - values[t]
        running = delta + gamma * lam * notdone[t] * running
        adv[t] = running
        next_value = values[t]
    return adv, adv + values


def per_task_scale(adv: torch.Tensor) -> torch.Tensor:
    """Advantages [T, B] of B tasks' trials, each divided by its own std over the T steps.

    Every task then weighs alike in a policy-gradient step whatever the scale of its rewards and
    returns, and multiplying one task's rewards and baseline by c > 0 leaves the result unchanged:
    the per-task normalisation PopArt (Hessel et al. 2019) applies to value targets, in its
    simplest form. Signs are kept (no centring): a step better than its baseline stays better.
    """
    return adv / adv.std(0, keepdim=True).clamp_min(1e-8)


@dataclass
class EpisodeBatch:
    """Transitions of B sub-envs over T steps, time-major: every tensor is [T, B, ...]. What the
    envs' episode() / run_policy() return (obs, actions, rewards, dones, info) and what RL²
    trains on (plus logprobs and values, its obs the RL² inputs); MAML views it per task."""
    obs: torch.Tensor       # [T, B, D] what the policy saw (RL²: its inputs)
    actions: torch.Tensor   # [T, B(, A)] as the policy returned them
    rewards: torch.Tensor   # [T, B]
    dones: torch.Tensor     # [T, B] an episode ended after this step
    logprobs: torch.Tensor | None = None  # [T, B] log pi(a|.) at collection time, where computed
    values: torch.Tensor | None = None    # [T, B] value estimates at collection time, where computed
    mean_rewards: torch.Tensor | None = None  # [T, B] E[reward | task, state, action], if the env knows it
    info: dict[str, torch.Tensor] = field(default_factory=dict)  # per-step signals [T, B] (Meta-World: "success")


def episode_ends(T: int, B: int, horizon: int, device=None) -> torch.Tensor:
    """dones [T, B] of back-to-back episodes of `horizon` steps: True at each one's last step."""
    dones = torch.zeros(T, B, dtype=torch.bool, device=device)
    dones[horizon - 1::horizon] = True
    return dones
