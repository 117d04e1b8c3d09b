"""What a policy does in each episode of a tabular-MDP trial, measured against the true MDP.

A trial's return says how well a method did; these say why. For each episode of the trial,
averaged over held-out tasks:
- regret: the sum over the episode's steps of Q*_t(s, a*) - Q*_t(s, a) under the true MDP
  (t: steps to go), whose expectation is V*(s0) minus the episode's expected return;
- optimal: the share of steps whose action is optimal for the true MDP;
- new pairs: state-action pairs tried for the first time in the trial;
- agrees with CE: the share of steps whose action is the one the certainty-equivalent planner
  (mdp-greedy) would take, its plan made at the episode's start from the same history: how
  Bayesian-greedy the behaviour is.
The episode's return and the oracle's expected return V*(s0) sit beside them.
"""
from __future__ import annotations

import torch

from metarl.agents.mdp_baselines import CertaintyEquivalent, optimal_q
from metarl.eval.stats import mean_ci
from metarl.eval.trials import held_out_tasks, play_trial
from metarl.rl.batched_env import EnvSpec
from metarl.seeding import make_generator
from metarl.tasks import tasks_slice

METRICS = ("return", "regret", "optimal", "new_pairs", "agrees_with_ce")


class Recorder:
    """A TrialPolicy around another that records states and actions [B, T] of the trial, and the
    action a shadow certainty-equivalent planner fed the same history would have taken (it
    plans at each episode's start, as mdp-greedy does)."""

    def __init__(self, policy, env, env_cfg, seed: int):
        self.policy, self.shadow = policy, CertaintyEquivalent(env, env_cfg, seed)

    def reset(self, num_envs: int, device) -> None:
        self.policy.reset(num_envs, device)
        self.shadow.reset(num_envs, device)
        self.states, self.actions, self.ce_actions = [], [], []

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        a = self.policy.act(obs)
        self.ce_actions.append(self.shadow.act(obs))
        self.states.append(obs.argmax(1))
        self.actions.append(a)
        return a

    def observe(self, actions, rewards, dones, next_obs) -> None:
        self.policy.observe(actions, rewards, dones, next_obs)
        self.shadow.observe(actions, rewards, dones, next_obs)

    def record(self) -> dict[str, torch.Tensor]:
        return {k: torch.stack(getattr(self, k), 1) for k in ("states", "actions", "ce_actions")}


def episode_metrics(P: torch.Tensor, R: torch.Tensor, states: torch.Tensor, actions: torch.Tensor,
                    ce_actions: torch.Tensor, returns: torch.Tensor) -> dict[str, torch.Tensor]:
    """P [B, S, A, S], R [B, S, A]; states, actions, ce_actions [B, E * H]; returns [B, E] ->
    {metric: [B, E]} (METRICS) and "oracle" [B]: V*(s0) of an episode."""
    B, E = returns.shape
    H = states.shape[1] // E
    A = R.shape[-1]
    Q = optimal_q(P, R, H)                                    # [H, B, S, A]
    t = torch.arange(E * H, device=states.device) % H         # step of the episode, per trial step
    q = Q[t[None, :], torch.arange(B, device=states.device)[:, None], states]  # [B, E*H, A]
    gap = q.max(-1).values - q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    pair = states * A + actions                               # [B, E*H]
    seen = torch.zeros(B, R.shape[1] * A, dtype=torch.bool, device=states.device)
    new = torch.zeros(B, E * H, device=states.device)
    for i in range(E * H):  # first visits, in trial order
        hit = seen.gather(1, pair[:, i:i + 1]).squeeze(1)
        new[:, i] = (~hit).float()
        seen.scatter_(1, pair[:, i:i + 1], True)
    per_episode = lambda x: x.float().view(B, E, H)
    return {"return": returns,
            "regret": per_episode(gap).sum(-1),
            "optimal": per_episode(gap <= 1e-6).mean(-1),
            "new_pairs": per_episode(new).sum(-1),
            "agrees_with_ce": per_episode(actions == ce_actions).mean(-1),
            "oracle": Q[0, torch.arange(B), 0].max(-1).values}


def behaviour(make_policy, env_spec: EnvSpec, env_cfg, num_tasks: int, seed: int, device,
              batch_size: int = 4096) -> dict:
    """Play one trial on each of `num_tasks` held-out tasks, as metarl.eval.trials.evaluate does
    (same tasks, same env noise: the returns equal its returns), recording the behaviour.
    -> {metric: [E] per-episode means with 95% CIs} and {"oracle": mean_ci}."""
    device = torch.device(device)
    tasks = held_out_tasks(env_spec, env_cfg, num_tasks, seed, device)
    E = env_spec.episodes_per_trial(env_cfg)
    env_gen = make_generator(seed, "eval-env", device)
    policy, parts = None, []
    for start in range(0, num_tasks, batch_size):
        b = min(batch_size, num_tasks - start)
        env = env_spec.make_env(env_cfg, b, device, env_gen)
        if policy is None:
            policy = Recorder(make_policy(env), env, env_cfg, seed)
        part = tasks_slice(tasks, slice(start, start + b))
        played = play_trial(policy, env, part, E)
        parts.append(episode_metrics(part["P"].to(device), part["R"].to(device), **policy.record(),
                                     returns=played["returns"]))
    joined = {k: torch.cat([p[k] for p in parts]).cpu() for k in parts[0]}
    out = {k: [mean_ci(joined[k][:, e]) for e in range(E)] for k in METRICS}
    out["oracle"] = mean_ci(joined["oracle"])
    return out
