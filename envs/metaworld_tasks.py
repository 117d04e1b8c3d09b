"""Meta-World ML1 / ML10 / ML25 / ML45 (metaworld 3.x, v3 envs) as metarl task distributions,
stepped in worker processes by metarl.sim.parallel.ParallelEnv.

A task is one (class, goal) pair of a benchmark split: {"split": [n], "cls": [n], "goal": [n]}
(long tensors; cls indexes the split's class list, goal that class's goal list). A meta-batch
of n tasks is class-major with n / C tasks per class (C classes in the split, as in
Meta-World's own vector envs), and every draw picks fresh goals: the "fresh set of tasks per
meta-iteration" of the Meta-World+ baselines. ML1's train and test splits share one class but
not their goals.

The benchmark's goal lists come from metaworld itself (`metaworld.ML10(seed=...)`); building
them resets every env 50 times (ML10 ~10 s, ML45 ~40 s), so they are cached on disk
(`$METARL_CACHE`, default ~/.cache/metarl, as JSON) keyed by benchmark, task, seed and metaworld
version.

Each step also reports Meta-World's success signal as `env.info["success"]` [B].
"""
from __future__ import annotations

import difflib
import functools
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metarl.cache import cache_root
from metarl.config import option
from metarl.errors import UserError
from metarl.rl.batched_env import EnvSpec
from metarl.sim.options import SimulationOptions
from metarl.tasks import SPLITS, TaskDistribution, Tasks

BENCHMARKS = ("ML1", "ML10", "ML25", "ML45")
MAX_PATH_LENGTH = 500  # Meta-World's episode length; its envs refuse to step past it


@dataclass
class MetaWorldConfig(SimulationOptions):
    task: str = option("reach-v3", "ML1 only: the Meta-World task, e.g. reach-v3, push-v3, pick-place-v3")
    reward_version: str = option("v2", "Meta-World reward function version", choices=("v1", "v2"))
    horizon: int = option(MAX_PATH_LENGTH, "steps per episode (Meta-World: 500)", ge=1, le=MAX_PATH_LENGTH)
    episodes: int = option(10, "episodes per trial (RL²); MAML agents set their own rollout counts", ge=1)
    adapt_episodes: int = option(10, "evaluation protocol: adaptation episodes per held-out task", ge=1)
    eval_episodes: int = option(3, "evaluation protocol: evaluation episodes per held-out task", ge=1)
    goals_per_class: int = option(40, "evaluation protocol: held-out goals per test class", ge=1, le=50)
    benchmark_seed: int = option(0, "seed of metaworld's goal lists (fixed across runs, so runs share tasks)", ge=0)


def require_metaworld():
    try:
        import metaworld
    except ImportError:
        raise UserError("the Meta-World benchmarks need metaworld; install it with: pip install -e \".[metaworld]\"") \
            from None
    return metaworld


def check_task_name(name: str) -> None:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    if name not in ALL_V3_ENVIRONMENTS:
        stem = name.rsplit("-v", 1)[0]
        close = difflib.get_close_matches(stem + "-v3", list(ALL_V3_ENVIRONMENTS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `metarl list` names the envs, metaworld's ALL_V3_ENVIRONMENTS the tasks"
        raise UserError(f"env.task={name!r} is not a Meta-World v3 task{hint}")


def cache_dir() -> Path:
    return cache_root() / "metaworld"


@functools.lru_cache(maxsize=8)
def goal_lists(benchmark: str, task: str, seed: int) -> dict[str, dict[str, list]]:
    """{split: {class name: [metaworld Task, ...]}} in metaworld's class order, built once and
    cached as JSON (plain values: reading a cache runs no code from it)."""
    metaworld = require_metaworld()
    if benchmark not in BENCHMARKS:
        raise UserError(f"unknown Meta-World benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    if benchmark == "ML1":
        check_task_name(task)
    from importlib.metadata import version
    key = f"{benchmark}{'-' + task if benchmark == 'ML1' else ''}-seed{seed}-metaworld{version('metaworld')}.json"
    path = cache_dir() / key
    if path.exists():
        try:
            return _tasks_of(json.loads(path.read_text()))
        except Exception:  # a corrupt cache file is rebuilt, not fatal
            pass
    bench = metaworld.ML1(task, seed=seed) if benchmark == "ML1" else getattr(metaworld, benchmark)(seed=seed)
    plain = {}
    for split in SPLITS:
        classes = bench.train_classes if split == "train" else bench.test_classes
        tasks = bench.train_tasks if split == "train" else bench.test_tasks
        plain[split] = {name: [_plain_goal(t) for t in tasks if t.env_name == name] for name in classes}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(plain))
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
    return _tasks_of(plain)  # the same path as a cached read: built and cached lists are equal


def _plain_goal(task) -> dict:
    """A Task's data (metaworld pickles {rand_vec, env_cls, options}; this one was just built by
    metaworld) as JSON values: the goal vector and the options, the class left to its name."""
    data = pickle.loads(task.data)
    cls = data.pop("env_cls")
    if cls is not _env_classes()[task.env_name]:
        raise RuntimeError(f"metaworld task {task.env_name} has env class {cls.__name__}")
    return {"rand_vec": np.asarray(data.pop("rand_vec"), dtype=np.float64).tolist(), **data}


def _tasks_of(plain: dict) -> dict[str, dict[str, list]]:
    """_plain_goal's JSON back to metaworld Tasks (the pickle metaworld's set_task reads, made here)."""
    from metaworld.types import Task
    classes = _env_classes()
    return {split: {name: [Task(name, pickle.dumps({"rand_vec": np.array(g["rand_vec"], dtype=np.float64),
                                                    "env_cls": classes[name],
                                                    **{k: v for k, v in g.items() if k != "rand_vec"}}))
                           for g in goals] for name, goals in per_class.items()}
            for split, per_class in plain.items()}


def _env_classes() -> dict:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    return ALL_V3_ENVIRONMENTS


class MetaWorldDistribution(TaskDistribution):
    """Class-major (class, goal) draws from a benchmark split."""

    def __init__(self, benchmark: str, cfg: MetaWorldConfig):
        self.benchmark, self.cfg = benchmark, cfg
        self.lists = goal_lists(benchmark, cfg.task, cfg.benchmark_seed)
        self.names = {s: list(self.lists[s]) for s in SPLITS}

    def check_batch(self, n: int, split: str) -> int:
        C = len(self.names[split])
        if n % C:
            raise UserError(f"{self.benchmark} has {C} {split} classes; the meta-batch ({n} tasks) must be a "
                            f"multiple of {C} so every class gets the same number of tasks")
        return C

    def sample(self, n: int, generator: torch.Generator, split: str = "train") -> Tasks:
        C = self.check_batch(n, split)
        cls = torch.arange(C, device=generator.device).repeat_interleave(n // C)
        return self._with_goals(cls, generator, split)

    def sample_any(self, n: int, generator: torch.Generator, split: str = "train") -> Tasks:
        """n tasks with classes drawn uniformly (no class-major batch): the one-task-at-a-time
        gymnasium envs draw from here."""
        cls = (torch.rand(n, generator=generator, device=generator.device) * len(self.names[split])).long()
        return self._with_goals(cls, generator, split)

    def _with_goals(self, cls: torch.Tensor, generator: torch.Generator, split: str) -> Tasks:
        """Tasks for classes cls [n], each with a goal drawn uniformly from its class's list."""
        dev, n = generator.device, cls.shape[0]
        sizes = torch.tensor([len(self.lists[split][name]) for name in self.names[split]], device=dev)
        goal = (torch.rand(n, generator=generator, device=dev) * sizes[cls]).long()
        return {"split": torch.full((n,), SPLITS.index(split), device=dev), "cls": cls, "goal": goal}

    def enumerate(self, split: str, goals_per_class: int) -> Tasks:
        """Every (class, goal) pair of a split with the first `goals_per_class` goals of each
        class, class-major: the official evaluation set (test classes x 40 goals)."""
        cls, goal = [], []
        for c, name in enumerate(self.names[split]):
            g = min(goals_per_class, len(self.lists[split][name]))
            cls += [c] * g
            goal += list(range(g))
        n = len(cls)
        return {"split": torch.full((n,), SPLITS.index(split)), "cls": torch.tensor(cls), "goal": torch.tensor(goal)}

    def task_names(self, tasks: Tasks) -> list[str]:
        return [self.names[SPLITS[int(s)]][int(c)] for s, c in zip(tasks["split"].tolist(), tasks["cls"].tolist())]

    def rows(self, tasks: Tasks) -> list:
        """The metaworld Task of each row (what a worker's sub-env needs)."""
        return [self.lists[SPLITS[s]][self.names[SPLITS[s]][c]][g]
                for s, c, g in zip(tasks["split"].tolist(), tasks["cls"].tolist(), tasks["goal"].tolist())]


class MetaWorldSubEnv:
    """A ParallelEnv sub-env: one Meta-World env per class it has played (built on first use),
    switched by set_task. The simulator is built and given its task at the next reset, not at
    set_task: make_env fills every sub-env with a start task that the samplers replace before
    stepping, and building those would hold a second simulator per sub-env (an evaluation of
    400 sub-envs on held-out classes would then hold 800)."""

    def __init__(self, reward_version: str):
        self.reward_version, self.envs, self.env = reward_version, {}, None
        self.pending = None  # the task set since the last reset

    def set_task(self, task) -> None:
        self.pending = task

    def reset(self, seed: int) -> np.ndarray:
        if self.pending is not None:
            from metaworld.env_dict import ALL_V3_ENVIRONMENTS
            task, self.pending = self.pending, None
            if task.env_name not in self.envs:
                self.envs[task.env_name] = ALL_V3_ENVIRONMENTS[task.env_name](reward_function_version=self.reward_version)
            self.env = self.envs[task.env_name]
            self.env.set_task(task)
        if self.env is None:
            raise RuntimeError("reset before set_task: a Meta-World sub-env needs a task first")
        obs, _ = self.env.reset(seed=seed)
        return obs

    def step(self, action: np.ndarray):
        obs, r, _, _, info = self.env.step(action)
        return obs, float(r), {"success": float(info["success"])}

    def close(self):
        for e in self.envs.values():
            e.close()


def make_sub_env(reward_version: str) -> MetaWorldSubEnv:
    return MetaWorldSubEnv(reward_version)


def spaces():
    """Observation and action spaces of the v3 envs (all the same): float32 Boxes [39], [4]."""
    import gymnasium as gym
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    probe = ALL_V3_ENVIRONMENTS["reach-v3"]()
    obs = gym.spaces.Box(probe.observation_space.low.astype(np.float32),
                         probe.observation_space.high.astype(np.float32), dtype=np.float32)
    act = gym.spaces.Box(probe.action_space.low.astype(np.float32), probe.action_space.high.astype(np.float32),
                         dtype=np.float32)
    probe.close()
    return obs, act


def step_cost(task) -> float:
    """Relative cost of a step of a metaworld Task's class inside a worker's round-robin
    (measured by experiments/metaworld_step_costs.py into envs/metaworld_step_costs.py),
    what ParallelEnv balances its workers by."""
    from metarl.envs.metaworld_step_costs import STEP_US
    return STEP_US.get(task.env_name, 400.0)


def make_env(benchmark: str, cfg: MetaWorldConfig, num_envs: int, device, generator):
    require_metaworld()
    from metarl.sim.parallel import ParallelEnv
    dist = make_distribution(benchmark, cfg)
    obs_space, act_space = spaces()
    # chunk=num_envs: each worker acts on its whole block at once (a 2x512 policy reads ~1 MB of
    # weights a call; calling it per small chunk costs more than the cache it saves, by
    # `metarl bench metaworld`)
    env = ParallelEnv(functools.partial(make_sub_env, cfg.reward_version), num_envs, cfg.horizon, obs_space,
                      act_space, device, generator, task_rows=dist.rows, info_keys=("success",),
                      step_cost=step_cost, chunk=num_envs, **cfg.pool_options())
    env.set_tasks(_spread(dist, num_envs))  # samplers set their own tasks before stepping
    return env


def _spread(dist: MetaWorldDistribution, n: int) -> Tasks:
    """A valid start task for each of n sub-envs, class-major like `sample`: train class i * C // n, goal 0."""
    return {"split": torch.zeros(n, dtype=torch.long), "cls": torch.arange(n) * len(dist.names["train"]) // n,
            "goal": torch.zeros(n, dtype=torch.long)}


def make_distribution(benchmark: str, cfg: MetaWorldConfig) -> MetaWorldDistribution:
    return MetaWorldDistribution(benchmark, cfg)


def _spec(benchmark: str) -> EnvSpec:
    return EnvSpec(benchmark.lower(), MetaWorldConfig, ("metaworld", "continuous"),
                   lambda cfg: make_distribution(benchmark, cfg),
                   lambda cfg, num_envs, device, generator: make_env(benchmark, cfg, num_envs, device, generator),
                   lambda cfg: cfg.episodes)


ML1 = _spec("ML1")
ML10 = _spec("ML10")
ML25 = _spec("ML25")
ML45 = _spec("ML45")
