"""The evaluation protocol: every method plays the same held-out tasks, trial by trial.

The contract between a method and the evaluator is the tiny TrialPolicy protocol. Tasks
come from the test split of the eval seed, and the env's own randomness from a generator
seeded the same way for every method, so methods differ only by what they do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from metarl.eval.result import EPISODES_IN_TRIAL, GRADIENT_STEPS, STEPS_IN_TRIAL, columns_curve, result, shown
from metarl.eval.stats import mean_ci, paired_diff_ci
from metarl.rl.batched_env import BatchedEnv, EnvSpec
from metarl.seeding import make_generator
from metarl.tasks import Tasks, split_generator, tasks_slice


class TrialPolicy(Protocol):
    def reset(self, num_envs: int, device) -> None:
        """A new trial starts in every sub-env (new tasks): forget everything."""

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """obs [B, obs_dim] -> actions [B] (long)."""

    def observe(self, actions: torch.Tensor, rewards: torch.Tensor, dones: torch.Tensor,
                next_obs: torch.Tensor) -> None:
        """What happened after `act`: actions, rewards, dones [B]; next_obs [B, obs_dim]."""


def held_out_tasks(env_spec: EnvSpec, env_cfg, num_tasks: int, seed: int, device):
    return env_spec.make_distribution(env_cfg).sample(num_tasks, split_generator(seed, "test", device), "test")


@dataclass
class Evaluation:
    returns: torch.Tensor     # [num_tasks, episodes_per_trial] return of each episode of each trial
    step_reward: torch.Tensor  # [num_tasks, trial_length] reward at each step of each trial


def first_success(success: torch.Tensor) -> torch.Tensor:
    """success [H, ...] of every step of an episode -> [...] the step index of its first success,
    H where none (the episode's length under terminate-on-success is min(that + 1, H))."""
    H = success.shape[0]
    hit = success > 0
    return torch.where(hit.any(0), hit.float().argmax(0), torch.full_like(hit[0], H, dtype=torch.long))


@torch.no_grad()
def play_trial(policy, env: BatchedEnv, tasks: Tasks, episodes: int, in_workers: bool = False) -> dict[str, torch.Tensor]:
    """One trial of `episodes` episodes in every sub-env with a TrialPolicy. Returns returns
    [B, E], step_reward [B, E * H] (reward of each step) and, for envs with a
    success signal, success [B, E] (1 where any step of that episode succeeded) and
    first_success [B, E] (the step of the episode's first success, H where none).

    in_workers: a policy with row_policy(num_envs, steps, horizon) -> RowPolicy (RL²) acts inside
    the simulation workers (env.run_policy: one message per worker a trial, not a round trip a
    step); its noise is drawn ahead, so the episodes differ from acting step by step."""
    B, dev, H = env.num_envs, env.device, env.horizon
    if in_workers and hasattr(policy, "row_policy"):
        env.set_tasks(tasks)
        with env.rollout_context():
            ep = env.run_policy(policy.row_policy(B, episodes * H, H), episodes)
        rewards = ep.rewards.to(dev).view(episodes, H, B)
        returns = torch.zeros(episodes, B, device=dev)
        for t in range(H):  # summed step by step, as the loop below sums them
            returns += rewards[:, t]
        out = {"returns": returns.T, "step_reward": rewards.reshape(episodes * H, B).T}
        if "success" in ep.info:
            steps = ep.info["success"].to(dev).view(episodes, H, B).permute(1, 2, 0)  # [H, B, E]
            out["success"], out["first_success"] = steps.amax(0), first_success(steps)
        return out
    returns, steps = torch.zeros(B, episodes, device=dev), torch.zeros(B, episodes * H, device=dev)
    success = first = None
    with env.rollout_context():
        env.set_tasks(tasks)
        obs = env.reset()
        policy.reset(B, dev)
        for e in range(episodes):
            for t in range(H):
                a = policy.act(obs)
                next_obs, r, d = env.step(a)
                policy.observe(a, r, d, next_obs)
                returns[:, e] += r
                steps[:, e * H + t] = r
                if "success" in env.info:
                    if success is None:
                        success = torch.zeros(B, episodes, device=dev)
                        first = torch.full((B, episodes), H, dtype=torch.long, device=dev)
                    hit = env.info["success"].to(dev)
                    success[:, e] = torch.maximum(success[:, e], hit)
                    first[:, e] = torch.where((hit > 0) & (first[:, e] == H), t, first[:, e])
                obs = next_obs
    out = {"returns": returns, "step_reward": steps}
    if success is not None:
        out["success"], out["first_success"] = success, first
    return out


def evaluate(make_policy, env_spec: EnvSpec, env_cfg, num_tasks: int, seed: int, device,
             batch_size: int = 4096) -> Evaluation:
    """Play one trial on each of `num_tasks` held-out tasks. make_policy(env) -> TrialPolicy."""
    device = torch.device(device)
    tasks = held_out_tasks(env_spec, env_cfg, num_tasks, seed, device)
    E = env_spec.episodes_per_trial(env_cfg)
    env_gen = make_generator(seed, "eval-env", device)
    policy = None
    out, steps = [], []
    for start in range(0, num_tasks, batch_size):
        b = min(batch_size, num_tasks - start)
        env = env_spec.make_env(env_cfg, b, device, env_gen)
        if policy is None:
            policy = make_policy(env)
        played = play_trial(policy, env, tasks_slice(tasks, slice(start, start + b)), E)
        out.append(played["returns"].cpu())
        steps.append(played["step_reward"].cpu())
    return Evaluation(torch.cat(out), torch.cat(steps))


def task_scores(x: torch.Tensor) -> list[float]:
    """Each held-out task's score [N] as a list (6 significant digits), kept in eval.json so that
    `metarl compare` can compute per-task statistics across runs."""
    return [float(f"{v:.6g}") for v in x.tolist()]


REFERENCES = ("gittins", "psrl")  # Bayes-optimal-ish references, set apart from the classical baselines


def is_agent_form(name: str, agent: str) -> bool:
    """Is this results entry the agent itself or one of its forms ("rl2 (deterministic)")?"""
    return name == agent or name.startswith(agent + " (")


def best_baseline(results: dict[str, dict], agent: str) -> str | None:
    """The best-scoring classical baseline of an evaluation's results {name: {"total": ...} or
    flat {"mean": ...}}: neither random, nor a reference (Gittins, PSRL), nor a form of the agent."""
    others = {n: (r["total"] if "total" in r else r)["mean"] for n, r in results.items()
              if n not in ("random", *REFERENCES) and not is_agent_form(n, agent)}
    return max(others, key=others.get) if others else None


def reference_of(results: dict[str, dict]) -> str | None:
    """The Bayes-optimal-ish reference an evaluation holds (Gittins on bandits, PSRL on tabular MDPs)."""
    return next((n for n in REFERENCES if n in results), None)


def paired_vs(results: dict[str, dict], agent: str, other: str | None) -> dict | None:
    """{"baseline": other, form: paired_diff_ci}: each form of the agent minus `other` (a baseline or
    reference of the same evaluation), paired by held-out task ("scores", eval.json); None where
    `other` is None or absent or the evaluation keeps no per-task scores."""
    if other is None or "scores" not in results.get(other, {}) or "scores" not in results.get(agent, {}):
        return None
    return {"baseline": other, **{n: paired_diff_ci(r["scores"], results[other]["scores"])
                                  for n, r in results.items() if is_agent_form(n, agent) and "scores" in r}}


def summarize(ev: Evaluation) -> dict:
    """-> total-reward mean/CI; its curve: the mean return of each episode of the trial, or for
    a trial of one episode (bandits) the mean reward of each step."""
    total = ev.returns.sum(1)
    curve = (columns_curve(EPISODES_IN_TRIAL, "mean episode return", ev.returns) if ev.returns.shape[1] > 1 else
             columns_curve(STEPS_IN_TRIAL, "mean reward", ev.step_reward))
    return result("mean total reward", mean_ci(total), curve, task_scores(total))


@torch.no_grad()
def evaluate_adaptation_steps(learner, env_spec: EnvSpec, env_cfg, num_tasks: int, seed: int, device, steps: int,
                              batch_tasks: int = 200) -> torch.Tensor:
    """The MAML paper's protocol on held-out tasks: mean episode return of each task before
    adaptation and after 1..steps gradient steps -> [num_tasks, steps + 1].
    learner.adaptation_returns(env, tasks, steps); learner.rollouts sub-envs per task."""
    device = torch.device(device)
    tasks = held_out_tasks(env_spec, env_cfg, num_tasks, seed, device)
    env_gen = make_generator(seed, "eval-env", device)
    out, env, size = [], None, None
    try:
        for start in range(0, num_tasks, batch_tasks):
            b = min(batch_tasks, num_tasks - start)
            if b != size:
                if env is not None:
                    env.close()
                env, size = env_spec.make_env(env_cfg, b * learner.rollouts, device, env_gen), b
            out.append(learner.adaptation_returns(env, tasks_slice(tasks, slice(start, start + b)), steps).cpu())
    finally:
        if env is not None:
            env.close()
    return torch.cat(out)


def summarize_steps(returns: torch.Tensor) -> dict:
    """[N, steps + 1] -> the episode return's curve over gradient steps (0: before adaptation);
    "total" is after the last step."""
    curve = columns_curve(GRADIENT_STEPS, "mean episode return", returns, first_x=0)
    return result("mean episode return", mean_ci(returns[:, -1]), curve, task_scores(returns[:, -1]))


def summarize_episodes(ev: Evaluation) -> dict:
    """A trial-protocol evaluation reported per episode (mean episode return per task), to sit
    beside inner-step results; its curve is the return of each episode of the trial."""
    per_task = ev.returns.mean(1)
    curve = columns_curve(EPISODES_IN_TRIAL, "mean episode return", ev.returns) if ev.returns.shape[1] > 1 else None
    return result("mean episode return", mean_ci(per_task), curve, task_scores(per_task))


def format_table(results: dict[str, dict], title: str, metric: str = "mean total reward") -> str:
    """Rows {name: {"total": mean_ci}}, in the given order. A total with "kept" (few-shot: some
    tasks' inner loops diverged) prints the mean over the other tasks, marked *."""
    rows = results.items()
    width = max(len(n) for n in results) + 2
    lines = [title, f"{'method':<{width}}{metric:>18}  {'95% CI':>20}  {'n':>6}"]
    for name, r in rows:
        t, mark = shown(r["total"]), "*" if r["total"].get("diverged") else " "  # *: some tasks diverged
        lines.append(f"{name:<{width}}{t['mean']:>17.3f}{mark}  [{t['ci_low']:>8.3f}, {t['ci_high']:>8.3f}]  {t['n']:>6}")
    return "\n".join(lines)
