"""Throughput benchmarks behind `metarl bench NAME`. Each returns
{"bench": NAME, "device": str, "figures": {...}} with stable figure keys."""
from __future__ import annotations

import functools
import statistics
import time

import torch

from metarl.config import build
from metarl.registry import AGENTS, ENVS, lookup
from metarl.seeding import make_generator


def _cores(workers: int) -> int:
    """Simulation workers of a bench: `workers`, or one per CPU core."""
    import os
    return workers or os.cpu_count() or 1


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
    # the shared-GRU network the committed figures were measured with (the default until issue 24)
    acfg = build(agent.config_cls, {"num_envs": num_envs, "separate_critic": False}, "agent")
    trainer = agent.trainer_cls(spec, cfg, acfg, 0, device)
    tasks = trainer.dist.sample(num_envs, trainer.task_gen)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        trainer.collect(tasks)  # the exact collection training uses
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    rollout_sps = n * num_envs / best  # env_time_fraction: the env's time alone for these steps over the rollout's
    return {"bench": "bandit", "device": str(device),
            "figures": {"env_steps_per_s": env_sps, "rollout_steps_per_s": rollout_sps,
                        "env_time_fraction": rollout_sps / env_sps, "num_envs": num_envs, "k": k, "n": n,
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
                 workers: int = 0, rounds: int = 15) -> dict:
    """MuJoCo throughput: one env stepped alone in this process (random actions), and `cores`
    simulation workers with a MAML-sized policy (2x100 MLP) in the loop, the two phases
    alternating for `rounds` rounds in the same run (see _alternate); then the same env in `cores`
    independent processes at once (independent_steps_per_s: the machine's real parallel
    ceiling). efficiency = parallel / (cores * single) steps/s, the median over rounds (rounds
    are short: 15 of them outlast a burst of contention on a shared machine that spoils most of 5)."""
    from metarl.agents.maml import MAMLConfig, MAMLLearner

    cores = _cores(workers)
    robot, task = env.split("-")
    make = functools.partial(_mujoco_stepper, robot, task, 5 * steps)
    spec = lookup("env", ENVS, env)
    cfg = build(spec.config_cls, {"workers": cores, "horizon": steps}, "env")
    gen = make_generator(0, "bench", "cpu")
    penv = spec.make_env(cfg, cores * envs_per_worker, device, gen)
    try:
        learner = MAMLLearner(penv, build(MAMLConfig, {}, "agent"), make_generator(0, "bench-init"))
        penv.set_tasks(spec.make_distribution(cfg).sample(penv.num_envs, gen))
        figures = _single_vs_parallel(make, penv, learner, envs_per_worker, cores, device, rounds)
    finally:
        penv.close()
    ceiling_sps = _ceiling(make, cores)
    figures.update({"independent_steps_per_s": ceiling_sps,
                    "ceiling_efficiency": ceiling_sps / (cores * figures["single_env_steps_per_s"]),
                    "efficiency_vs_ceiling": figures["parallel_steps_per_s"] / ceiling_sps,
                    "envs": cores * envs_per_worker, "env": env})
    return {"bench": "mujoco", "device": str(device), "figures": figures}


def bench_mujoco_paper(device: torch.device, workers: int = 0) -> dict:
    """bench_mujoco at the MAML paper's HalfCheetah meta-batch: 40 tasks x 20 rollouts = 800
    sub-envs spread over the workers (the default bench has 32 per worker)."""
    cores = _cores(workers)
    return {**bench_mujoco(device, envs_per_worker=-(-800 // cores), workers=cores), "bench": "mujoco-paper"}


def _sampler_rate(penv, learner, rollouts: int, single_sps: float, device, repeats: int) -> tuple[float, dict]:
    """Env steps/s of MAML's own sampler (MAMLLearner.rollout: one episode of every sub-env, the
    policy in the loop, run inside the workers), best of `repeats` episodes, with the
    workers' time breakdown of that episode."""
    from metarl.functional import params_of
    params = {k: v.detach() for k, v in params_of(learner.net).items()}
    act_gen = make_generator(0, "bench-actions", device)
    best, breakdown = 0.0, {}
    for _ in range(repeats):
        penv.worker_stats()  # zero the workers' timers
        t0, c0 = time.perf_counter(), time.process_time()
        learner.rollout(penv, params, False, act_gen, rollouts=rollouts)
        _sync(device)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        steps = penv.num_envs * penv.horizon
        stats = penv.worker_stats()
        if steps / wall > best:
            best, breakdown = steps / wall, worker_breakdown(stats, wall, single_sps)
            breakdown["main_cpu_us_per_env_step"] = 1e6 * cpu / steps
    return best, breakdown


def worker_breakdown(stats: list[dict], wall: float, single_sps: float) -> dict:
    """Where a parallel rollout's time went, from ParallelEnv.worker_stats() over `wall` seconds:
    worker_busy_fraction (mean share of the wall clock a worker spent stepping its envs),
    worker_policy_fraction (the share a worker spent acting, when the policy runs inside it),
    worker_wait_fraction (the rest: messages and waiting for the slowest worker or the main
    process), worker_us_per_env_step and its CPU-time twin (one env step inside a worker) beside
    single_env_us_per_step (alone in this process, where single_sps is given). efficiency ~=
    busy fraction * single / worker per-step time * workers / cores."""
    n = sum(s["env_steps"] for s in stats)
    busy = sum(s["step_s"] for s in stats) / (len(stats) * wall)
    policy = sum(s.get("policy_s", 0.0) for s in stats) / (len(stats) * wall)
    out = {"worker_busy_fraction": busy, "worker_policy_fraction": policy,
           "worker_wait_fraction": max(0.0, 1.0 - busy - policy),
           "worker_us_per_env_step": 1e6 * sum(s["step_s"] for s in stats) / n,
           "worker_cpu_us_per_env_step": 1e6 * sum(s["step_cpu_s"] for s in stats) / n}
    if single_sps:
        out["single_env_us_per_step"] = 1e6 / single_sps
    return out


def _alternate(phases: dict, rounds: int) -> dict[str, list]:
    """{name: [result of each round]}: every phase once per round, the phases alternating (in
    reverse order every other round, so neither always goes first), so that each sees the same
    shared, noisy machine (phases run back to back, minutes apart, gave efficiencies of 0.80 and
    0.46 on one idle machine)."""
    out = {k: [] for k in phases}
    for r in range(rounds):
        for k in (list(phases) if r % 2 == 0 else list(phases)[::-1]):
            out[k].append(phases[k]())
    return out


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _spread(xs: list[float]) -> list[float]:
    """[min, max] of a figure over the rounds."""
    return [float(min(xs)), float(max(xs))]


def _single_vs_parallel(make, penv, learner, rollouts: int, cores: int, device, rounds: int) -> dict:
    """The single-env and parallel phases alternating for `rounds` rounds: medians of
    single_env_steps_per_s, parallel_steps_per_s and efficiency (each round's parallel over
    cores x that round's single), their spreads [min, max], the workers' breakdown of the median
    round, and the main process's CPU time per env step (what it costs to drive the workers)."""
    runs = _alternate({"single": lambda: _rate(make, 1),
                       "parallel": lambda: _sampler_rate(penv, learner, rollouts, None, device, repeats=1)}, rounds)
    single = runs["single"]
    par = [sps for sps, _ in runs["parallel"]]
    eff = [p / (cores * s) for p, s in zip(par, single)]
    mid = sorted(range(rounds), key=lambda i: eff[i])[(rounds - 1) // 2]  # the median round (lower of two)
    breakdown = {k: v for k, v in runs["parallel"][mid][1].items()}
    breakdown["single_env_us_per_step"] = 1e6 / single[mid]
    return {"single_env_steps_per_s": _median(single), "parallel_steps_per_s": _median(par), "cores": cores,
            "efficiency": _median(eff), "rounds": rounds, "single_env_steps_per_s_spread": _spread(single),
            "parallel_steps_per_s_spread": _spread(par), "efficiency_spread": _spread(eff),
            "efficiency_rounds": eff, **breakdown}


def _mujoco_stepper(robot: str, task: str, steps: int):
    """A function that steps one goal-conditioned MuJoCo env `steps` times (random actions)."""
    import numpy as np

    from metarl.envs.mujoco_tasks import GoalMujoco
    e = GoalMujoco(robot, task)
    e.set_task({"goal": [1.0, 1.0]})
    e.reset(0)
    acts = np.random.default_rng(0).uniform(-1, 1, (steps, e.env.action_space.shape[0]))

    def run() -> int:
        for t in range(steps):
            e.step(acts[t])
        return steps
    return run


def _mw_stepper(benchmark: str, task: str, steps: int):
    """A function that steps one Meta-World env of each train class, steps // classes steps each
    (random actions), built here (picklable for _ceiling's processes)."""
    import numpy as np

    from metarl.envs.metaworld_tasks import MetaWorldSubEnv, goal_lists
    lists = goal_lists(benchmark, task, 0)["train"]
    envs = []
    for name, goals in lists.items():
        e = MetaWorldSubEnv("v2")
        e.set_task(goals[0])
        e.reset(0)
        envs.append(e)
    per = min(500, max(1, steps // len(envs)))  # Meta-World envs refuse to step past 500
    acts = np.random.default_rng(0).uniform(-1, 1, (per, 4))

    def run() -> int:
        for e in envs:
            for t in range(per):
                e.step(acts[t])
        return per * len(envs)
    return run


def _rate(make, repeats: int = 3) -> float:
    """Best steps/s of make()() over `repeats` runs in this process (built first, so only stepping
    is timed; the best of several, since these machines are shared and noisy)."""
    best = 0.0
    for _ in range(repeats):
        run = make()
        t0 = time.perf_counter()
        n = run()
        best = max(best, n / (time.perf_counter() - t0))
    return best


def _ceiling_worker(make, barrier, queue) -> None:
    torch.set_num_threads(1)
    run = make()
    barrier.wait()
    t0 = time.perf_counter()
    n = run()
    queue.put(n / (time.perf_counter() - t0))


def _ceiling(make, processes: int, repeats: int = 3) -> float:
    """Best over `repeats` of _ceiling_once."""
    return max(_ceiling_once(make, processes) for _ in range(repeats))


def _ceiling_once(make, processes: int) -> float:
    """Aggregate steps/s of `processes` independent processes stepping their own envs at once,
    with no communication: what the machine's cores really give (the cores of a VM may share
    physical cores)."""
    import torch.multiprocessing as mp
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_ceiling_worker, args=(make, barrier, queue)) for _ in range(processes)]
    for p in procs:
        p.start()
    rates = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def bench_metaworld(device: torch.device, benchmark: str = "ML10", envs_per_worker: int = 10, steps: int = 200,
                    workers: int = 0, compare: bool = True, repeats: int = 3, rounds: int = 5) -> dict:
    """Meta-World throughput, measured in one run: (1) one env of each train class stepped in
    this process (random actions): single_env_steps_per_s, alternating for `rounds` rounds with
    (2) metarl's ParallelEnv, one worker per core, with a Meta-World+ MAML policy (2x512 tanh
    MLP) choosing every action: parallel_steps_per_s; efficiency = parallel / (cores * single),
    the median over rounds (_single_vs_parallel); (3) the single env in `cores` independent
    processes at once: independent_steps_per_s (the machine's real parallel ceiling); (4) with
    compare, Meta-World's own async vector env (metaworld.make_ml_envs, one process per sub-env)
    with the same policy in the loop: metaworld_async_steps_per_s (best of `repeats`) and
    speedup_vs_metaworld_async."""
    from metarl.agents.maml import MAMLConfig, MAMLLearner
    from metarl.sim.parallel import main_thread_only

    cores = _cores(workers)
    spec = lookup("env", ENVS, benchmark.lower())
    gen = make_generator(0, "bench", "cpu")
    cfg = build(spec.config_cls, {"workers": cores, "horizon": min(steps, 500)}, "env")
    dist = spec.make_distribution(cfg)
    classes = dist.names["train"]
    C = len(classes)
    make = functools.partial(_mw_stepper, benchmark, cfg.task, 5 * steps)

    num_envs = -(-cores * envs_per_worker // C) * C  # a multiple of the classes
    mcfg = build(MAMLConfig, {"hidden_size": 512, "activation": "tanh"}, "agent")

    def policy_steps(env_step, obs, learner):
        t0 = time.perf_counter()
        with torch.no_grad():
            for _ in range(cfg.horizon):
                a = learner.dist(learner.net(obs.to(device))).sample(gen if device.type == "cpu" else None)
                obs = env_step(a.cpu())
        return num_envs * cfg.horizon / (time.perf_counter() - t0)

    penv = spec.make_env(cfg, num_envs, device, gen)
    try:
        learner = MAMLLearner(penv, mcfg, make_generator(0, "bench-init"))
        penv.set_tasks(dist.sample(num_envs, gen))
        figures = _single_vs_parallel(make, penv, learner, C, cores, device, rounds)
    finally:
        penv.close()
    par_sps = figures["parallel_steps_per_s"]
    ceiling_sps = _ceiling(make, cores, repeats)
    figures.update({"independent_steps_per_s": ceiling_sps,
                    "ceiling_efficiency": ceiling_sps / (cores * figures["single_env_steps_per_s"]),
                    "efficiency_vs_ceiling": par_sps / ceiling_sps, "envs": num_envs, "benchmark": benchmark})
    if compare:
        import metaworld
        per_cls = num_envs // C  # sub-envs per class; metaworld wants each class's goals to split evenly
        mw = metaworld.make_ml_envs(benchmark if benchmark != "ML1" else cfg.task, seed=0, meta_batch_size=num_envs,
                                    vector_strategy="async", max_episode_steps=cfg.horizon,
                                    total_tasks_per_cls=50 - 50 % per_cls)
        try:
            mw.call("sample_tasks")

            def mw_step(a):
                return torch.as_tensor(mw.step(a.numpy())[0], dtype=torch.float32)
            best = 0.0
            with main_thread_only():  # the same footing as metarl's sampler
                for _ in range(repeats):
                    o, _ = mw.reset(seed=0)
                    best = max(best, policy_steps(mw_step, torch.as_tensor(o, dtype=torch.float32), learner))
            figures["metaworld_async_steps_per_s"] = best
        finally:
            mw.close()
        figures["speedup_vs_metaworld_async"] = par_sps / figures["metaworld_async_steps_per_s"]
    return {"bench": "metaworld", "device": str(device), "figures": figures}


def bench_metaworld_maml(device: torch.device, workers: int = 0) -> dict:
    """bench_metaworld at the scale of experiments/configs/maml_trpo_ml10.toml: 200 sub-envs (meta-batch
    20 x 10 rollouts) spread over the workers, Meta-World's 500-step episodes (a reset costs ~9 ms,
    so short episodes understate the sampler), without the async comparison (one process per
    sub-env would be 200 processes)."""
    cores = _cores(workers)
    out = bench_metaworld(device, envs_per_worker=-(-200 // cores), steps=500, workers=cores, compare=False, repeats=1,
                          rounds=3)
    return {**out, "bench": "metaworld-maml"}


def bench_metaworld_ray(device: torch.device, benchmark: str = "ML10", envs_per_worker: int = 10, steps: int = 200,
                        workers: int = 0, rounds: int = 5) -> dict:
    """The Ray backend against worker processes on this machine: ParallelEnv rollouts of
    bench_metaworld's sampler (one worker per core, a 2x512 policy in the workers) with
    env.backend "local" and "ray" alternating for `rounds` rounds; ray_vs_local is the median of
    each round's ratio of steps/s. Ray is started locally with the machine's cores."""
    from metarl.agents.maml import MAMLConfig, MAMLLearner
    from metarl.sim.ray_pool import connect

    cores = _cores(workers)
    connect("")
    spec = lookup("env", ENVS, benchmark.lower())
    mcfg = build(MAMLConfig, {"hidden_size": 512, "activation": "tanh"}, "agent")
    envs, rates = {}, {}
    try:
        for backend in ("local", "ray"):
            cfg = build(spec.config_cls, {"workers": cores, "horizon": min(steps, 500), "backend": backend}, "env")
            dist = spec.make_distribution(cfg)
            C = len(dist.names["train"])
            num_envs = -(-cores * envs_per_worker // C) * C
            envs[backend] = penv = spec.make_env(cfg, num_envs, device, make_generator(0, "bench", "cpu"))
            learner = MAMLLearner(penv, mcfg, make_generator(0, "bench-init"))
            penv.set_tasks(dist.sample(num_envs, make_generator(0, "bench-tasks", "cpu")))
            rates[backend] = functools.partial(_sampler_rate, penv, learner, C, None, device, 1)
        runs = _alternate(rates, rounds)
    finally:
        for penv in envs.values():
            penv.close()
    local, ray_ = ([sps for sps, _ in runs[k]] for k in ("local", "ray"))
    ratio = [r / loc for r, loc in zip(ray_, local)]
    return {"bench": "metaworld-ray", "device": str(device),
            "figures": {"local_steps_per_s": _median(local), "ray_steps_per_s": _median(ray_),
                        "ray_vs_local": _median(ratio), "ray_vs_local_spread": _spread(ratio), "rounds": rounds,
                        "cores": cores, "envs": envs["local"].num_envs, "benchmark": benchmark,
                        "ray_main_cpu_us_per_env_step": _median([b["main_cpu_us_per_env_step"] for _, b in runs["ray"]]),
                        "local_main_cpu_us_per_env_step": _median([b["main_cpu_us_per_env_step"]
                                                                   for _, b in runs["local"]])}}


def bench_metaworld_rl2_eval(device: torch.device, benchmark: str = "ML10", goals: int = 8, horizon: int = 200,
                             workers: int = 0, rounds: int = 3) -> dict:
    """RL² evaluation trials on Meta-World's held-out classes (classes x `goals` sub-envs, the
    protocol's 10 + 3 episodes of `horizon` steps, the ML10 recipe's network untrained) played
    step by step (the policy in this process: a round trip to the workers a step) and inside the
    simulation workers (play_trial(in_workers=True), what evaluate_success does), the two
    alternating for `rounds` rounds: steps/s of each and the median of each round's ratio."""
    from metarl.agents.rl2 import RL2Config, RL2EvalPolicy, _network
    from metarl.eval.success import protocol_tasks
    from metarl.eval.trials import play_trial
    from metarl.rl.trial import rl2_input_dim

    cores = _cores(workers)
    spec = lookup("env", ENVS, benchmark.lower())
    cfg = build(spec.config_cls, {"workers": cores, "horizon": horizon}, "env")
    acfg = build(RL2Config, {"encoder_layers": 3, "hidden_size": 256, "head": "tanh", "time_feature": False,
                             "reward_scale": 0.1}, "agent")
    tasks = protocol_tasks(spec.make_distribution(cfg), goals, 10_000)[0]
    episodes = cfg.adapt_episodes + cfg.eval_episodes
    env = spec.make_env(cfg, len(tasks["cls"]), device, make_generator(0, "bench", "cpu"))
    try:
        net = _network(rl2_input_dim(env.obs_dim, env.num_actions, False), env.action_space, acfg,
                       make_generator(0, "bench-init"), 0).to(device)

        def rate(in_workers: bool) -> float:
            policy = RL2EvalPolicy(net, env.num_actions, episodes * horizon, acfg, make_generator(0, "bench-act", device))
            t0 = time.perf_counter()
            play_trial(policy, env, tasks, episodes, in_workers=in_workers)
            return env.num_envs * episodes * horizon / (time.perf_counter() - t0)
        runs = _alternate({"step": functools.partial(rate, False), "workers": functools.partial(rate, True)}, rounds)
    finally:
        env.close()
    ratio = [w / s for w, s in zip(runs["workers"], runs["step"])]
    return {"bench": "metaworld-rl2-eval", "device": str(device),
            "figures": {"step_by_step_steps_per_s": _median(runs["step"]), "in_workers_steps_per_s": _median(runs["workers"]),
                        "speedup": _median(ratio), "speedup_spread": _spread(ratio), "rounds": rounds, "cores": cores,
                        "envs": env.num_envs, "episodes": episodes, "horizon": horizon, "benchmark": benchmark}}


def bench_maml_sinusoid(device: torch.device, meta_batch: int = 25, shots: int = 10, iterations: int = 200,
                        repeats: int = 3) -> dict:
    """Second-order MAML meta-iterations per second on sinusoid regression (meta-batch 25, K=10,
    one inner step, 2x40 MLP, Adam step included), on identical pre-drawn batches:
    the trainer's vectorized functional inner loop (meta_iters_per_s), the same loop through
    vmap (vmap_meta_iters_per_s), and a per-task Python loop of
    torch.autograd.grad(create_graph=True) (loop_meta_iters_per_s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what the trainer uses for regression: tiny ops are slower across threads
    try:
        return _bench_maml_sinusoid(device, meta_batch, shots, iterations, repeats)
    finally:
        torch.set_num_threads(threads)


def _bench_maml_sinusoid(device, meta_batch, shots, iterations, repeats) -> dict:
    from metarl.agents.fewshot_maml import MAMLConfig, MAMLLearner
    from metarl.envs.regression_tasks import SinusoidConfig, SinusoidDistribution
    from metarl.fewshot.core import task_loss
    from metarl.functional import params_of

    dist = SinusoidDistribution(SinusoidConfig(shots=shots))
    cfg = build(MAMLConfig, {"meta_batch": meta_batch}, "agent")
    torch.manual_seed(0)
    learner = MAMLLearner(dist, cfg).to(device)
    opt = torch.optim.Adam(learner.parameters(), lr=cfg.meta_lr)
    gen = make_generator(0, "bench-data", device)
    batches = [dist.sample(meta_batch, gen) for _ in range(iterations)]

    def functional(vectorized: bool):
        def run():
            learner.vectorized = vectorized
            for b in batches:
                learner.meta_update(b, opt)
            _sync(device)
        return run

    def loop():
        model = learner.model
        for b in batches:
            meta = params_of(model)
            losses = []
            for i in range(meta_batch):
                inner = task_loss("regression", model.forward_with(meta, b["xs"][i]), b["ys"][i])
                grads = torch.autograd.grad(inner, list(meta.values()), create_graph=True)
                adapted = {k: p - cfg.inner_lr * g for (k, p), g in zip(meta.items(), grads)}
                losses.append(task_loss("regression", model.forward_with(adapted, b["xq"][i]), b["yq"][i]))
            loss = torch.stack(losses).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)

    runs = {"meta_iters_per_s": functional(True), "vmap_meta_iters_per_s": functional(False),
            "loop_meta_iters_per_s": loop}
    for fn in runs.values():  # warm-up
        fn()
    figures = {k: iterations / _best_time(fn, repeats) for k, fn in runs.items()}
    learner.vectorized = True
    figures["speedup"] = figures["meta_iters_per_s"] / figures["loop_meta_iters_per_s"]
    figures["vmap_speedup"] = figures["vmap_meta_iters_per_s"] / figures["loop_meta_iters_per_s"]
    figures["minutes_for_70k_iterations"] = 70_000 / figures["meta_iters_per_s"] / 60
    figures.update({"meta_batch": meta_batch, "shots": shots, "threads": torch.get_num_threads()})
    return {"bench": "maml-sinusoid", "device": str(device), "figures": figures}


def _fake_runs(root, runs: int, tasks: int, seed: int = 0) -> list:
    """`runs` evaluated bandit run directories (two agents, seeds alternating), each with
    config.toml, metrics.jsonl, timing.jsonl and an eval.json holding six baselines, as
    `metarl train` + `metarl eval` write them; scores are random."""
    import json
    from pathlib import Path

    import numpy as np

    from metarl.config import dump_toml
    from metarl.eval.result import EVAL_SCHEMA, STEPS_IN_TRIAL, Curve, result
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(runs):
        p = Path(root) / f"run{i}"
        p.mkdir(parents=True)
        agent_cfg = {"hidden_size": 128 if i % 2 == 0 else 256}  # two agent configs: two methods
        (p / "config.toml").write_text(dump_toml({"run": {"agent": "rl2", "env": "bandit", "seed": i // 2},
                                                  "env": {"k": 5, "n": 100}, "agent": agent_cfg}))
        (p / "metrics.jsonl").write_text("".join(json.dumps({"iteration": k, "env_steps": 1000 * (k + 1),
                                                              "trial_return": float(k)}) + "\n" for k in range(200)))
        (p / "timing.jsonl").write_text("".join(json.dumps({"iteration": k, "wall_clock_s": 2.0 * (k + 1)}) + "\n"
                                                for k in range(200)))
        results = {}
        for name in ["rl2", "random", "greedy", "epsilon-greedy", "ucb1", "thompson", "gittins"]:
            sc = rng.normal(70, 10, size=tasks)
            ys = rng.random(100).round(4)
            curve = Curve(STEPS_IN_TRIAL, "mean reward", [{"x": k + 1, "mean": y, "ci_low": y, "ci_high": y}
                                                           for k, y in enumerate(ys.tolist())]).to_json()
            results[name] = result("mean total reward", {"mean": float(sc.mean())}, curve, sc.round(4).tolist())
        (p / "eval.json").write_text(json.dumps({"schema": EVAL_SCHEMA, "env": "bandit", "env_config": {"k": 5, "n": 100}, "agent": "rl2",
                                                 "tasks": tasks, "seed": 0, "env_steps": 200_000,
                                                 "metric": "mean total reward", "results": results}))
        paths.append(p)
    return paths


def bench_compare(device: torch.device, runs: int = 10) -> dict:
    """Seconds `metarl compare` takes to write its whole report (statistics with 2000 bootstrap
    resamples, CSVs, plots) over 10 evaluated runs of two methods plus six baselines, with 1000
    and with 10,000 held-out tasks per run."""
    import tempfile

    from metarl.eval.compare import compare
    figures = {"runs": runs}
    for tasks in (1000, 10_000):
        with tempfile.TemporaryDirectory() as tmp:
            paths = _fake_runs(tmp, runs, tasks)
            t = time.perf_counter()
            compare([str(p) for p in paths], f"{tmp}/report")
            figures[f"seconds_{tasks}_tasks"] = time.perf_counter() - t
    return {"bench": "compare", "device": "cpu", "figures": figures}
