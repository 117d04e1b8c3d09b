"""Meta-World's meta-learning evaluation protocol, tallied per sub-environment.

The protocol of `metaworld.evaluation.metalearning_evaluation`: every held-out task (test
class x goal; 40 goals per class) gets `adapt_episodes` adaptation episodes, then
`eval_episodes` evaluation episodes with what the agent learned; an episode succeeds when any
of its steps succeeds, and a task's success rate is the mean over its evaluation episodes.
Meta-World keys its tallies by task *name* and stops counting a name after `eval_episodes`
episodes, so on ML1 (one name shared by every sub-environment) it counts only the first few
episodes overall; here every task is counted on its own, then averaged per class and overall.

Agents:
- trial protocol (RL²): one trial of adapt + eval episodes per task, hidden state carried
  throughout; the success of episode k is "success after k adaptation episodes" (the curve).
- inner-steps protocol (MAML): `adapt_episodes` rollouts with the meta-policy, one adaptation
  (the training inner steps), then rollouts with the adapted policy; the curve has two points,
  0 episodes (the meta-policy itself) and `adapt_episodes`.
Episodes here always run the full horizon; Meta-World ends evaluation episodes at success,
which changes returns but not success.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from metarl.batched_env import EnvSpec
from metarl.evaluation import play_trial, task_scores
from metarl.seeding import make_generator
from metarl.stats import mean_ci
from metarl.tasks import Tasks, tasks_slice


@dataclass
class SuccessEvaluation:
    names: list[str]            # [N] class name of each held-out task
    goals: list[int]            # [N] goal index of each task within its class
    success: torch.Tensor       # [N] protocol success rate of each task (mean over its evaluation episodes)
    returns: torch.Tensor       # [N] mean evaluation-episode return of each task
    curve_episodes: list[int]   # adaptation episodes seen, one per curve point
    curve: torch.Tensor         # [N, P] success of each task at each curve point


def protocol_tasks(dist, goals_per_class: int, batch_tasks: int, split: str = "test") -> list[Tasks]:
    """The split's classes x goals (test: the held-out tasks; train: meta-train success by the
    same protocol), in batches that all have the same class-major layout (so each sub-env keeps
    its class from batch to batch and builds one simulator)."""
    every = dist.enumerate(split, goals_per_class)
    C = len(dist.names[split])
    G = len(every["cls"]) // C  # every is class-major: task c * G + g is goal g of class c
    assert G * C == len(every["cls"]), "every class must have the same number of goals"
    per_batch = max(1, min(G, batch_tasks // C))  # goals of each class per batch
    return [tasks_slice(every, torch.tensor([c * G + g for c in range(C) for g in range(g0, min(G, g0 + per_batch))]))
            for g0 in range(0, G, per_batch)]


def evaluate_success(make_agent, protocol: str, env_spec: EnvSpec, env_cfg, goals_per_class: int, seed: int, device,
                     batch_tasks: int = 40, split: str = "test") -> SuccessEvaluation:
    """make_agent(env) -> the agent, called once with the first env: a TrialPolicy (protocol
    "trial"), or an object with adapt_success(env, tasks,
    adapt_episodes, eval_episodes) -> (curve [N, 2], success [N], returns [N]) whose env holds
    adapt_episodes sub-envs per task (protocol "inner-steps"). split "train" plays the
    training classes' goals instead of the test classes'."""
    device = torch.device(device)
    dist = env_spec.make_distribution(env_cfg)
    A, E = env_cfg.adapt_episodes, env_cfg.eval_episodes
    env_gen = make_generator(seed, "eval-env", device)
    rollouts = A if protocol != "trial" else 1  # MAML: one sub-env per adaptation episode
    names, goals, success, returns, curves = [], [], [], [], []
    env, agent = None, None
    try:
        for tasks in protocol_tasks(dist, goals_per_class, batch_tasks, split):
            n = len(tasks["cls"])
            if env is None or env.num_envs != n * rollouts:
                if env is not None:
                    env.close()
                env = env_spec.make_env(env_cfg, n * rollouts, device, env_gen)
                agent = agent or make_agent(env)
            if protocol == "trial":
                played = play_trial(agent, env, tasks, A + E)
                s, r = played["success"], played["returns"]
                curves.append(s.cpu())
                success.append(s[:, A:].mean(1).cpu())
                returns.append(r[:, A:].mean(1).cpu())
            else:
                c, s, r = agent.adapt_success(env, tasks, A, E)
                curves.append(c.cpu()), success.append(s.cpu()), returns.append(r.cpu())
            names += dist.task_names(tasks)
            goals += tasks["goal"].tolist()
    finally:
        if env is not None:
            env.close()
    points = list(range(A + E)) if protocol == "trial" else [0, A]
    return SuccessEvaluation(names, goals, torch.cat(success), torch.cat(returns), points, torch.cat(curves))


def summarize_success(ev: SuccessEvaluation) -> dict:
    """-> "total" (mean success with 95% CI over tasks), per-class success, evaluation return,
    the success curve, and every task's success."""
    per_class = {}
    for name in dict.fromkeys(ev.names):
        idx = torch.tensor([i for i, n in enumerate(ev.names) if n == name])
        per_class[name] = mean_ci(ev.success[idx])
    return {"total": mean_ci(ev.success), "per_class": per_class, "return": mean_ci(ev.returns),
            "scores": task_scores(ev.success),
            "success_curve": {"episodes": ev.curve_episodes,
                              "success": [mean_ci(ev.curve[:, k]) for k in range(ev.curve.shape[1])]},
            "per_task": [{"class": n, "goal": g, "success": float(s)}
                         for n, g, s in zip(ev.names, ev.goals, ev.success.tolist())]}
