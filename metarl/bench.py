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


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_inner_loop(device: torch.device, tasks: int = 40, rollouts: int = 20, horizon: int = 100, obs_dim: int = 20,
                     act_dim: int = 6, hidden: int = 100, repeats: int = 3) -> dict:
    """One second-order MAML inner step for a meta-batch of `tasks` policy-gradient tasks:
    the vmapped functional inner loop (metarl.functional) against a per-task Python loop of
    torch.autograd.grad(create_graph=True), on identical data; both at the paper's data size
    (rollouts x horizon samples per task) and with one rollout per task."""
    import gymnasium as gym
    import numpy as np

    from metarl.agents.maml import MAMLConfig, MAMLLearner
    from metarl.functional import params_of

    from types import SimpleNamespace
    spaces = SimpleNamespace(obs_dim=obs_dim, action_space=gym.spaces.Box(-1, 1, (act_dim,), np.float32),
                             device=torch.device(device))  # all MAMLLearner needs of an env
    cfg = build(MAMLConfig, {"hidden_size": hidden, "rollouts": rollouts}, "agent")
    learner = MAMLLearner(spaces, cfg, make_generator(0, "bench-init"))
    meta = params_of(learner.net)
    gen = make_generator(0, "bench-data", device)
    figures = {}
    for label, R in (("", rollouts), ("_1_rollout", 1)):
        data = {"obs": torch.randn(tasks, horizon, R, obs_dim, generator=gen, device=device),
                "actions": torch.randn(tasks, horizon, R, act_dim, generator=gen, device=device),
                "adv": torch.randn(tasks, horizon, R, generator=gen, device=device)}

        def vmapped():
            adapted = learner.adapt(meta, data, per_task=False, steps=1, first_order=False)
            _sync(device)
            return adapted

        def loop():
            out = []
            for i in range(tasks):
                loss = learner.inner_loss(meta, {k: v[i] for k, v in data.items()})
                grads = torch.autograd.grad(loss, list(meta.values()), create_graph=True)
                out.append({k: p - cfg.inner_lr * g for (k, p), g in zip(meta.items(), grads)})
            _sync(device)
            return out

        vmapped(), loop()  # warm-up
        tv, tl = _best_time(vmapped, repeats), _best_time(loop, repeats)
        figures[f"vmap_tasks_per_s{label}"] = tasks / tv
        figures[f"loop_tasks_per_s{label}"] = tasks / tl
        figures[f"speedup{label}"] = tl / tv
    figures.update({"tasks": tasks, "rollouts": rollouts, "horizon": horizon, "hidden": hidden,
                    "threads": torch.get_num_threads()})
    return {"bench": "inner-loop", "device": str(device), "figures": figures}


def bench_mujoco(device: torch.device, env: str = "halfcheetah-vel", envs_per_worker: int = 32, steps: int = 200,
                 workers: int = 0) -> dict:
    """MuJoCo throughput: one env stepped alone in this process (random actions), then
    `cores` simulation workers with a MAML-sized policy (2x100 MLP) in the loop, measured in
    the same run. efficiency = parallel_steps_per_s / (cores * single_env_steps_per_s)."""
    import os

    import numpy as np

    from metarl.agents.maml import MAMLConfig, MAMLLearner
    from metarl.envs.mujoco_tasks import GoalMujoco

    cores = workers or os.cpu_count() or 1
    robot, task = env.split("-")
    single = GoalMujoco(robot, task)
    single.set_task({"goal": [1.0, 1.0]})
    rng = np.random.default_rng(0)
    acts = rng.uniform(-1, 1, (steps, single.env.action_space.shape[0]))
    single.reset(0)
    t0 = time.perf_counter()
    for t in range(steps):
        single.step(acts[t])
    single_sps = steps / (time.perf_counter() - t0)
    single.close()

    spec = lookup("env", ENVS, env)
    cfg = build(spec.config_cls, {"workers": cores, "horizon": steps}, "env")
    gen = make_generator(0, "bench", "cpu")
    penv = spec.make_env(cfg, cores * envs_per_worker, "cpu", gen)
    try:
        learner = MAMLLearner(penv, build(MAMLConfig, {}, "agent"), make_generator(0, "bench-init"))
        learner.net.to(device)
        penv.set_tasks(spec.make_distribution(cfg).sample(penv.num_envs, gen))
        obs = penv.reset()
        t0 = time.perf_counter()
        with torch.no_grad(), penv.rollout_context():
            for _ in range(steps):
                a = learner.dist(learner.net(obs.to(device))).sample(gen if device.type == "cpu" else None)
                obs, _, _ = penv.step(a.cpu())
        par_sps = penv.num_envs * steps / (time.perf_counter() - t0)
    finally:
        penv.close()
    return {"bench": "mujoco", "device": str(device),
            "figures": {"single_env_steps_per_s": single_sps, "parallel_steps_per_s": par_sps, "cores": cores,
                        "efficiency": par_sps / (cores * single_sps), "envs": cores * envs_per_worker, "env": env}}
