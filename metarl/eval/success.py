"""Meta-World's meta-learning evaluation protocol, with two tallies of the same episodes.

The protocol of `metaworld.evaluation.metalearning_evaluation`: every held-out task (test
class x goal; 40 goals per class) gets `adapt_episodes` adaptation episodes, then
`eval_episodes` evaluation episodes with what the agent learned; an episode succeeds when any
of its steps succeeds.

- Per task (ours, "total"): a task's success rate is the mean over its evaluation episodes,
  then averaged per class and overall. Unbiased: every episode counts.
- Meta-World's own tally ("metaworld_tally", what published figures use): its evaluator runs a
  meta-batch of 20 sub-envs at once (20 // classes goals of each class: 4 on ML10 / ML45 test,
  20 on ML1), ends evaluation episodes at success, and per class *name* counts only the first
  `eval_episodes` episodes to finish among that class's sub-envs. Successful episodes end early,
  so they fill the quota first: the tally leans towards success on every benchmark, not only on
  ML1. `metaworld_tally` replays that rule on the episodes played here, from each evaluation
  episode's success and first successful step (its length had it ended at success). For agents
  whose evaluation episodes do not depend on each other (MAML's adapted policy, RL² in the
  Meta-World+ form that restarts each one from the post-adaptation state) this is Meta-World's
  count exactly, in distribution; for RL² carrying its state through, an approximation (ending
  an episode early would change what it sees next).

Agents:
- trial protocol (RL²): one trial of adapt + eval episodes per task, hidden state carried
  throughout (the Meta-World+ form, RL2RestartPolicy, restarts each evaluation episode from the
  post-adaptation state); the success of episode k is "success after k adaptation episodes".
- inner-steps protocol (MAML): `adapt_episodes` rollouts with the meta-policy, one adaptation
  (the training inner steps), then rollouts with the adapted policy; the curve has two points,
  0 episodes (the meta-policy itself) and `adapt_episodes`.
Episodes here always run the full horizon; Meta-World ends evaluation episodes at success,
which changes returns but not per-task success.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from metarl.eval.result import EPISODES_SEEN, Curve, result
from metarl.eval.stats import mean_ci
from metarl.eval.trials import play_trial, task_scores
from metarl.protocols import TRIAL, Protocol
from metarl.rl.batched_env import EnvSpec
from metarl.seeding import make_generator
from metarl.tasks import Tasks, tasks_slice
from metarl.training import progress_bar


@dataclass
class SuccessEvaluation:
    names: list[str]            # [N] class name of each held-out task
    goals: list[int]            # [N] goal index of each task within its class
    episodes: torch.Tensor      # [N, E] success of each evaluation episode of each task (0 / 1)
    first: torch.Tensor         # [N, E] step of each evaluation episode's first success (horizon where none)
    returns: torch.Tensor       # [N, E] return of each evaluation episode
    horizon: int
    curve_episodes: list[int]   # adaptation episodes seen, one per curve point
    curve: torch.Tensor         # [N, P] success of each task at each curve point

    @property
    def success(self) -> torch.Tensor:
        """[N] per-task success rate (mean over its evaluation episodes)."""
        return self.episodes.mean(1)


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


def evaluate_success(make_agent, protocol: Protocol, env_spec: EnvSpec, env_cfg, goals_per_class: int, seed: int, device,
                     batch_tasks: int = 40, split: str = "test", desc: str | None = None) -> SuccessEvaluation:
    """make_agent(env) -> the agent, called once with the first env: a TrialPolicy (protocol
    TRIAL), or an object with adapt_success(env, tasks, adapt_episodes, eval_episodes) ->
    {"curve" [N, 2], and per evaluation episode [N, E] "success", "first_success", "returns"}
    whose env holds adapt_episodes sub-envs per task (INNER_STEPS). split "train" plays the
    training classes' goals instead of the test classes'. desc: a progress bar (env steps) on a
    terminal."""
    return evaluate_success_branches(make_agent, protocol, env_spec, env_cfg, goals_per_class, seed, device,
                                     batch_tasks, split, desc=desc)[0]


def evaluate_success_branches(make_agent, protocol: Protocol, env_spec: EnvSpec, env_cfg, goals_per_class: int,
                              seed: int, device, batch_tasks: int = 40, split: str = "test",
                              branches: int = 1, desc: str | None = None) -> list[SuccessEvaluation]:
    """evaluate_success for an agent that, after its adaptation episodes, plays `branches` blocks
    of evaluation episodes, each as another form of itself from the same adaptation (TRIAL only;
    AgentSpec.eval_branch): one SuccessEvaluation per block, whose curve is the shared adaptation
    episodes followed by that block's."""
    if branches > 1 and protocol is not TRIAL:
        raise ValueError("evaluation branches need the trial protocol")
    device = torch.device(device)
    dist = env_spec.make_distribution(env_cfg)
    A, E = env_cfg.adapt_episodes, env_cfg.eval_episodes
    env_gen = make_generator(seed, "eval-env", device)
    rollouts = A if protocol is not TRIAL else 1  # MAML: one sub-env per adaptation episode
    names, goals = [], []
    played_keys = ("success", "first_success", "returns")
    blocks = [{k: [] for k in (*played_keys, "curve")} for _ in range(branches)]
    env, agent = None, None
    batches = protocol_tasks(dist, goals_per_class, batch_tasks, split)
    episodes = A + branches * E if protocol is TRIAL else A + E
    bar = progress_bar(sum(len(t["cls"]) for t in batches) * episodes * env_cfg.horizon, desc is None, desc or "")
    try:
        for tasks in batches:
            n = len(tasks["cls"])
            if env is None or env.num_envs != n * rollouts:
                if env is not None:
                    env.close()
                env = env_spec.make_env(env_cfg, n * rollouts, device, env_gen)
                agent = agent or make_agent(env)
            if protocol is TRIAL:
                played = play_trial(agent, env, tasks, A + branches * E, in_workers=True)
                for b, block in enumerate(blocks):
                    own = slice(A + b * E, A + (b + 1) * E)
                    for k in played_keys:
                        block[k].append(played[k][:, own].cpu())
                    block["curve"].append(torch.cat([played["success"][:, :A], played["success"][:, own]], 1).cpu())
            else:
                played = agent.adapt_success(env, tasks, A, E)
                for k in (*played_keys, "curve"):
                    blocks[0][k].append(played[k].cpu())
            names += dist.task_names(tasks)
            goals += tasks["goal"].tolist()
            bar.update(n * episodes * env_cfg.horizon)
    finally:
        bar.close()
        if env is not None:
            env.close()
    points = list(range(A + E)) if protocol is TRIAL else [0, A]
    return [SuccessEvaluation(names, goals, torch.cat(b["success"]), torch.cat(b["first_success"]),
                              torch.cat(b["returns"]), env_cfg.horizon, points, torch.cat(b["curve"]))
            for b in blocks]


METAWORLD_META_BATCH = 20  # sub-envs Meta-World's published evaluations run at once


def tally_group_size(classes: int, meta_batch: int = METAWORLD_META_BATCH) -> int:
    """Goals of one class that Meta-World's evaluator runs at once: meta_batch // classes."""
    return max(1, meta_batch // classes)


def metaworld_tally(ev: SuccessEvaluation, meta_batch: int = METAWORLD_META_BATCH) -> tuple[list[str], torch.Tensor]:
    """Meta-World's count (metaworld.evaluation.evaluation) replayed on these episodes.

    Each class's tasks, in goal order, form groups of meta_batch // classes (one evaluation
    round's sub-envs of that class). In a group, every sub-env plays its evaluation episodes back
    to back, each ending at its first success or at the horizon; the first E episodes to end
    (ties in sub-env order, as Meta-World's loop visits them) are counted. -> (class of each
    group, success rate of each group [G])."""
    classes = list(dict.fromkeys(ev.names))
    size = tally_group_size(len(classes), meta_batch)
    E = ev.episodes.shape[1]
    lengths = torch.where(ev.episodes > 0, ev.first + 1, torch.full_like(ev.first, ev.horizon))
    ends = lengths.cumsum(1)  # [N, E] step of the round at which each episode ends
    names, scores = [], []
    for c in classes:
        idx = [i for i, n in enumerate(ev.names) if n == c]
        for g0 in range(0, len(idx), size):
            group = idx[g0:g0 + size]
            order = sorted((int(ends[j, k]), pos, k) for pos, j in enumerate(group) for k in range(E))[:E]
            names.append(c)
            scores.append(sum(float(ev.episodes[group[pos], k]) for _, pos, k in order) / E)
    return names, torch.tensor(scores)


def _by_class(names: list[str], x: torch.Tensor) -> dict:
    """{class: mean_ci of x over the entries of that class}."""
    return {c: mean_ci(x[torch.tensor([i for i, n in enumerate(names) if n == c])]) for c in dict.fromkeys(names)}


def summarize_success(ev: SuccessEvaluation) -> dict:
    """-> "total" (mean success with 95% CI over tasks), the success curve over adaptation
    episodes seen, per-class success, Meta-World's own tally (mean over its groups, each a class
    in one evaluation round, with CI), evaluation return, and every task's success."""
    groups, group_scores = metaworld_tally(ev)
    tally = {"total": mean_ci(group_scores), "per_class": _by_class(groups, group_scores),
             "group_size": tally_group_size(len(set(ev.names))), "groups": len(groups),
             "scores": task_scores(group_scores), "group_classes": groups}
    curve = Curve(EPISODES_SEEN, "success rate",
                  [{"x": x, **mean_ci(ev.curve[:, k])} for k, x in enumerate(ev.curve_episodes)]).to_json()
    return result("success rate", mean_ci(ev.success), curve, task_scores(ev.success),
                  per_class=_by_class(ev.names, ev.success), metaworld_tally=tally, **{"return": mean_ci(ev.returns.mean(1))},
                  per_task=[{"class": n, "goal": g, "success": float(s)}
                            for n, g, s in zip(ev.names, ev.goals, ev.success.tolist())])


MONITORED_FORM = "metaworld+"  # the agent form agent.eval_every plays where the agent has it (RL²)
# With agent.eval_every, checkpoints/best.pt is the iteration with the best held-out sample (per
# task): the Meta-World paper's "max over training", taken on a checkpoint the full protocol then
# evaluates (`metarl eval --checkpoint best`). The sample's goals are the first eval_goals of each
# test class, which the full protocol's goals include.
MONITOR_SELECT = "heldout_success"


def held_out_monitor(spec, env_spec: EnvSpec, env_cfg, agent_cfg, seed: int, device, goals_per_class: int):
    """fn(trainer_state) -> {"heldout_success", "heldout_success_tally"}: the protocol on the first
    goals_per_class goals of every test class, played by the agent as the trainer's state stands,
    for `agent.eval_every`: in its Meta-World+ form where it has one (RL²: the form the published
    figures and the exact tally use), else its evaluated form. Its own generators: the run's
    samples and metrics do not depend on whether it runs."""
    def monitor(trainer_state: dict) -> dict[str, float]:
        ck = {"trainer": trainer_state}
        forms = spec.extra_eval(ck, env_spec, env_cfg, agent_cfg, device, seed) if spec.extra_eval else {}
        if MONITORED_FORM in forms:
            make, protocol = forms[MONITORED_FORM], TRIAL
        else:
            agent = spec.load_eval_policy(ck, env_spec, env_cfg, agent_cfg, device, seed)
            make, protocol = (lambda env: agent), spec.protocol
        ev = evaluate_success(make, protocol, env_spec, env_cfg, goals_per_class, seed, device)
        return {"heldout_success": float(ev.success.mean()),
                "heldout_success_tally": float(metaworld_tally(ev)[1].mean())}
    return monitor
