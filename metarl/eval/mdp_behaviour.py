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

from metarl.eval.stats import mean_ci
from metarl.eval.trials import evaluate, held_out_tasks
from metarl.rl.batched_env import EnvSpec

METRICS = ("return", "regret", "optimal", "new_pairs", "agrees_with_ce")


class Recorder:
    """A TrialPolicy around another that records states and actions [B, T] of every trial it
    plays, and the action a shadow certainty-equivalent planner fed the same history would have
    taken (it plans at each episode's start, as mdp-greedy does)."""

    def __init__(self, policy, env, env_cfg, seed: int):
        from metarl.agents.mdp_baselines import CertaintyEquivalent  # the core imports agents/ only when used
        self.policy, self.shadow = policy, CertaintyEquivalent(env, env_cfg, seed)
        self.trials: list[dict[str, list]] = []

    def reset(self, num_envs: int, device) -> None:
        self.policy.reset(num_envs, device)
        self.shadow.reset(num_envs, device)
        self.trials.append({"states": [], "actions": [], "ce_actions": []})

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        a = self.policy.act(obs)
        rec = self.trials[-1]
        rec["ce_actions"].append(self.shadow.act(obs))
        rec["states"].append(obs.argmax(1))
        rec["actions"].append(a)
        return a

    def observe(self, actions, rewards, dones, next_obs) -> None:
        self.policy.observe(actions, rewards, dones, next_obs)
        self.shadow.observe(actions, rewards, dones, next_obs)

    def record(self) -> dict[str, torch.Tensor]:
        """{"states", "actions", "ce_actions"}: [B, T] over every trial played, in order."""
        return {k: torch.cat([torch.stack(t[k], 1).cpu() for t in self.trials]) for k in self.trials[0]}


def episode_metrics(P: torch.Tensor, R: torch.Tensor, states: torch.Tensor, actions: torch.Tensor,
                    ce_actions: torch.Tensor, returns: torch.Tensor) -> dict[str, torch.Tensor]:
    """P [B, S, A, S], R [B, S, A]; states, actions, ce_actions [B, E * H]; returns [B, E] ->
    {metric: [B, E]} (METRICS) and "oracle" [B]: V*(s0) of an episode."""
    from metarl.agents.mdp_baselines import optimal_q
    B, E = returns.shape
    T = states.shape[1]
    H, A = T // E, R.shape[-1]
    Q = optimal_q(P, R, H)                                    # [H, B, S, A]
    step = torch.arange(T, device=states.device)
    q = Q[(step % H)[None, :], torch.arange(B, device=states.device)[:, None], states]  # [B, T, A]
    gap = q.max(-1).values - q.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    pair = states * A + actions                               # [B, T]
    first = torch.full((B, R.shape[1] * A), T, device=states.device).scatter_reduce(
        1, pair, step.expand(B, T), "amin")                   # each pair's first step in the trial
    new = first.gather(1, pair) == step                       # [B, T] first visits
    per_episode = lambda x: x.float().view(B, E, H)
    return {"return": returns,
            "regret": per_episode(gap).sum(-1),
            "optimal": per_episode(gap <= 1e-6).mean(-1),
            "new_pairs": per_episode(new).sum(-1),
            "agrees_with_ce": per_episode(actions == ce_actions).mean(-1),
            "oracle": Q[0, torch.arange(B), 0].max(-1).values}


def behaviour(make_policy, env_spec: EnvSpec, env_cfg, num_tasks: int, seed: int, device,
              batch_size: int = 4096) -> dict:
    """Play one trial on each of `num_tasks` held-out tasks by metarl.eval.trials.evaluate (same
    tasks, same env noise, same returns), recording the behaviour.
    -> {metric: [E] per-episode means with 95% CIs} and {"oracle": mean_ci}."""
    recorder = None

    def make(env):
        nonlocal recorder
        recorder = Recorder(make_policy(env), env, env_cfg, seed)
        return recorder

    ev = evaluate(make, env_spec, env_cfg, num_tasks, seed, device, batch_size)
    tasks = held_out_tasks(env_spec, env_cfg, num_tasks, seed, device)
    m = episode_metrics(tasks["P"].cpu(), tasks["R"].cpu(), **recorder.record(), returns=ev.returns)
    out = {k: [mean_ci(m[k][:, e]) for e in range(ev.returns.shape[1])] for k in METRICS}
    out["oracle"] = mean_ci(m["oracle"])
    return out
