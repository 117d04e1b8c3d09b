"""Throughput benchmarks behind `metarl bench NAME`. Each returns
{"bench": NAME, "device": str, "figures": {...}} with stable figure keys."""
from __future__ import annotations

import time

import torch

from metarl.config import build
from metarl.registry import AGENTS, ENVS, lookup
from metarl.seeding import make_generator
from metarl.trial import TrialEnv, collect_trial


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_bandit(device: torch.device, num_envs: int = 4096, k: int = 5, n: int = 100, repeats: int = 3) -> dict:
    """Bandit env alone (random actions, pre-drawn) and inside RL² rollouts, 4096 parallel tasks."""
    spec = lookup("env", ENVS, "bandit")
    cfg = build(spec.config_cls, {"k": k, "n": n}, "env")
    gen = make_generator(0, "bench", device)
    env = spec.make_env(cfg, num_envs, device, gen)
    env.set_tasks(spec.make_distribution(cfg).sample(num_envs, gen))
    actions = torch.randint(k, (n, num_envs), generator=gen, device=device)
    env.reset()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for t in range(n):
            env.step(actions[t])
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    env_sps = n * num_envs / best

    agent = lookup("agent", AGENTS, "rl2")
    acfg = build(agent.config_cls, {"num_envs": num_envs}, "agent")
    trainer = agent.trainer_cls(spec, cfg, acfg, 0, device)
    from metarl.agents.rl2 import _RolloutPolicy  # the exact policy step training uses
    policy = _RolloutPolicy(trainer.net, trainer.rms)
    trial_env: TrialEnv = trainer.trial_env
    tasks = trainer.dist.sample(num_envs, trainer.task_gen)
    best, frac = float("inf"), 0.0
    for _ in range(repeats):
        trial_env.env_time = 0.0
        _sync(device)
        t0 = time.perf_counter()
        collect_trial(policy, trial_env, tasks, trainer.act_gen)
        _sync(device)
        dt = time.perf_counter() - t0
        if dt < best:
            best, frac = dt, trial_env.env_time / dt
    return {"bench": "bandit", "device": str(device),
            "figures": {"env_steps_per_s": env_sps, "rollout_steps_per_s": n * num_envs / best,
                        "env_time_fraction": frac, "num_envs": num_envs, "k": k, "n": n,
                        "hidden_size": acfg.hidden_size, "threads": torch.get_num_threads()}}
