"""Parallel simulation for CPU simulators (MuJoCo, Meta-World): a BatchedEnv whose sub-envs
live in simulation workers (metarl.sim.worker), run by a worker pool (metarl.sim.pool):
worker processes (backend "local"), the calling process (backend "inline": no processes,
for one env made by gym.make or an env built to read its dimensions), or Ray actors on a
cluster (backend "ray", metarl.sim.ray_pool: the same samples, replies carry the rows).

Each of W workers owns a contiguous block of the B sub-envs and steps them. Actions,
observations and rewards travel through shared-memory tensors ([B, A], [B, D], [B]); the pipe
to each worker carries only a one-word command and its reply, so a step costs one small
message per worker, not a pickled batch. run_policy() goes further for a policy that can act
for any block of sub-envs (RowPolicy: MAML's MLP, RL²'s GRU with its state): each worker acts
for its own sub-envs and steps whole episodes (an RL² trial's, resets included) on one message,
writing them into shared [T, B, ...] buffers, one chunk of sub-envs at a time (a chunk's
simulators stay in the cache). Given a step_cost per task, set_tasks sizes the blocks so every
worker carries the same cost (Meta-World's classes differ 4x in step time). Worker failures
surface as a WorkerError naming the worker and what it was doing (metarl.sim.pool).

A sub-env is any object with
    set_task(task) -> None          (task: one row of `task_rows(tasks)`, by default dict[str, list])
    reset(seed: int) -> obs (np.ndarray [D])
    step(action: np.ndarray) -> (obs [D], reward: float) or (obs, reward, info: dict[str, float])
built in the worker by a picklable `factory()`. Info values named in `info_keys` (e.g. Meta-World's
"success") come back through shared memory too, as `env.info[key]` [B] after every step.
Episodes have a fixed length `horizon`; the
ParallelEnv auto-resets every sub-env after it, as every BatchedEnv does.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable

import gymnasium as gym
import torch

from metarl.errors import UserError
from metarl.rl.batched_env import BatchedEnv
from metarl.rl.distributions import box_bounds
from metarl.rl.episodes import EpisodeBatch, episode_ends
from metarl.sim.pool import InlinePool, ProcessPool, WorkerError
from metarl.sim.ray_pool import RayPool, connect, import_ray
from metarl.sim.worker import SimBuffers
from metarl.tasks import Tasks

POOLS = {"local": ProcessPool, "inline": InlinePool, "ray": RayPool}  # env.backend -> where the workers run

__all__ = ["ParallelEnv", "WorkerError", "auto_chunk", "balanced_blocks", "main_thread_only"]


@contextlib.contextmanager
def main_thread_only():
    """Run the main process's torch ops on one thread while workers simulate: idle OpenMP
    threads of the main process spin and steal the workers' cores (`metarl bench mujoco`
    drops by more than half with 2 torch threads on 2 cores). Restored afterwards, so the
    learner's update still uses every core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def auto_chunk(num_envs: int, workers: int) -> int:
    """Sub-envs per chunk of run_policy: at most 64, so a chunk's simulators stay in the cache
    (stepping hundreds of envs round-robin in one process is slower per step than tens), and no
    fewer, since each chunk-step costs one policy call."""
    return min(64, -(-num_envs // workers))


def balanced_blocks(cost: list[float], workers: int) -> list[int]:
    """Bounds [0, b1, ..., B] of `workers` non-empty contiguous blocks of sub-envs that minimise
    the largest block's summed cost (cost [B], one per sub-env): a bisection on that largest
    sum with a greedy fill, then blocks split until every worker has one."""
    def fill(cap: float) -> list[int]:  # where each greedy block starts, then B
        starts, load = [0], 0.0
        for b, c in enumerate(cost):
            if load + c > cap and load > 0.0:
                starts.append(b)
                load = 0.0
            load += c
        return starts + [len(cost)]

    lo, hi = max(cost), sum(cost)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if len(fill(mid)) - 1 <= workers else (mid, hi)
    starts = fill(hi)
    while len(starts) - 1 < workers:  # split the widest block (never raises the largest sum)
        i = max(range(len(starts) - 1), key=lambda j: starts[j + 1] - starts[j])
        starts.insert(i + 1, (starts[i] + starts[i + 1]) // 2)
    return starts


def _cores(backend: str, ray_address: str) -> int:
    """Default worker count: this machine's cores, or with Ray the cluster's CPUs."""
    if backend == "ray":
        ray = import_ray()
        connect(ray_address)
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    return os.cpu_count() or 1


class ParallelEnv(BatchedEnv):
    """B sub-envs built by `factory` in `workers` simulation workers (0 = one per CPU core; with
    Ray one per CPU of the cluster), run by the pool `backend` ("local": worker processes;
    "inline": one worker in this process; "ray": Ray actors, on the cluster at `ray_address`,
    a dead one replaced up to `max_restarts` times with the same samples).
    Samplers should step it inside `main_thread_only()` (see `rollout_context`).

    task_rows(tasks) -> one picklable task per sub-env (default: each row as a dict of lists);
    info_keys: info values of each step to expose as `self.info` {key: [B]};
    chunk: sub-envs per chunk in run_policy (0 = auto_chunk; the block's size = no chunking);
    step_cost(task row) -> relative cost of one step, to balance the workers' blocks by;
    task_features (F, fn): fn(tasks) -> [B, F] the privileged description of each sub-env's task
    (task_features(); zeros before the first set_tasks)."""

    def rollout_context(self):
        return main_thread_only()

    def __init__(self, factory: Callable, num_envs: int, horizon: int, observation_space: gym.spaces.Box,
                 action_space: gym.spaces.Box, device="cpu", generator: torch.Generator | None = None,
                 workers: int = 0, timeout: float = 60.0, start_timeout: float = 120.0,
                 task_rows: Callable[[Tasks], list] | None = None, info_keys: tuple[str, ...] = (),
                 chunk: int = 0, step_cost: Callable[[object], float] | None = None, backend: str = "local",
                 task_features: tuple[int, Callable[[Tasks], torch.Tensor]] | None = None, ray_address: str = "",
                 max_restarts: int = 3):
        if backend not in POOLS:
            raise UserError(f"unknown simulation backend {backend!r}; choose one of {', '.join(POOLS)}")
        pool_cls = POOLS[backend]
        self.num_envs, self.horizon, self.device = num_envs, horizon, torch.device(device)
        self.observation_space, self.action_space = observation_space, action_space
        self.timeout = timeout
        self.gen = generator if generator is not None else torch.Generator()
        W = 1 if backend == "inline" else max(1, min(workers or _cores(backend, ray_address), num_envs))
        # Contiguous blocks: batches are task-major, so a worker keeps few distinct simulators
        # (with sub-env b in worker b % W instead, every worker cycles through all the classes'
        # models and misses the cache).
        # With step_cost (the relative cost of a step of each task row), set_tasks moves the
        # bounds so every worker gets the same summed cost (ML10's classes step at different
        # speeds: even blocks leave one worker waiting). The blocks follow from the tasks alone,
        # so a seeded run samples the same on every rerun.
        self._bounds = [round(i * num_envs / W) for i in range(W + 1)]
        self.step_cost = step_cost
        self.chunk = chunk or auto_chunk(num_envs, W)
        self._shared = pool_cls.shared_memory

        def new(*shape, dtype=torch.float32):
            x = torch.zeros(shape, dtype=dtype)
            return x.share_memory_() if self._shared else x
        act_shape = (num_envs,) if self.discrete else (num_envs, self.num_actions)
        act_dtype = torch.int64 if self.discrete else torch.float32
        self.info_keys, self._task_rows = tuple(info_keys), task_rows
        K = max(1, len(self.info_keys))
        # run_policy(): whole episodes, written by the workers in place: obs [T, B, D], actions
        # [T, B(, A)], rewards [T, B], info [T, B, K] with T = episodes x H (reallocated when a
        # run of another length comes); progress [W] counts each worker's steps.
        self._buffers = SimBuffers(
            obs=new(num_envs, self.obs_dim), act=new(*act_shape, dtype=act_dtype), rew=new(num_envs),
            info=new(num_envs, K),
            episode=(new(horizon, num_envs, self.obs_dim), new(horizon, *act_shape, dtype=act_dtype),
                     new(horizon, num_envs), new(horizon, num_envs, K)),
            progress=new(W, dtype=torch.int64))
        self._new = new
        self.info = {k: torch.zeros(num_envs, device=self.device) for k in self.info_keys}
        if not self.discrete:  # actions are clipped to the space before they reach the workers
            self._low, self._high = box_bounds(action_space)
        self._done = torch.ones(num_envs, dtype=torch.bool, device=self.device)
        self._not_done = torch.zeros(num_envs, dtype=torch.bool, device=self.device)
        kw = {"local": {"start_timeout": start_timeout}, "inline": {},
              "ray": {"start_timeout": start_timeout, "address": ray_address, "max_restarts": max_restarts}}[backend]
        self.pool = pool_cls(factory, self._blocks(), self._buffers, self.info_keys, self.chunk, **kw)
        self.pids = self.pool.pids
        self.tasks: Tasks | None = None
        self._features = task_features
        self.t = 0

    def _call(self, cmd: str, args: list | None = None, progress: bool = False) -> list:
        return self.pool.call(cmd, args, self.timeout, progress)

    # -- BatchedEnv
    def task_features(self) -> torch.Tensor | None:
        if self._features is None:
            return None
        dim, fn = self._features
        if self.tasks is None:
            return torch.zeros(self.num_envs, dim, device=self.device)
        return fn(self.tasks).to(self.device)

    def set_tasks(self, tasks: Tasks) -> None:
        rows = (self._task_rows(tasks) if self._task_rows else
                [{k: v[b].tolist() for k, v in tasks.items()} for b in range(self.num_envs)])
        if self.step_cost is not None and self.pool.size > 1:
            self._bounds = balanced_blocks([float(self.step_cost(r)) for r in rows], self.pool.size)
        # (a worker whose block moved builds or reuses sub-envs, which can take a while)
        self._call("set_tasks", [((lo, hi), rows[lo:hi]) for lo, hi in self._blocks()])
        self.tasks = tasks

    def reset(self) -> torch.Tensor:
        seeds = torch.randint(2**31 - 1, (self.num_envs,), generator=self.gen, device=self.gen.device).tolist()
        self._call("reset", [seeds[lo:hi] for lo, hi in self._blocks()])
        self.t = 0
        return self._buffers.obs.to(self.device, copy=True)

    def step(self, actions: torch.Tensor):
        b = self._buffers
        b.act.copy_(self._clip(actions))
        self._call("step")
        reward = b.rew.to(self.device, copy=True)
        if self.info_keys:
            info = b.info.to(self.device, copy=True)
            self.info = {k: info[:, i] for i, k in enumerate(self.info_keys)}
        self.t += 1
        if self.t >= self.horizon:
            return self.reset(), reward, self._done
        return b.obs.to(self.device, copy=True), reward, self._not_done

    def run_policy(self, policy, episodes: int = 1) -> EpisodeBatch:
        """BatchedEnv.run_policy with the policy inside the workers: each worker gets
        policy.rows(lo, hi) for its block of sub-envs and runs the whole run (every episode
        after a reset, with seeds drawn here as that many reset() calls draw them; the
        in-process BatchedEnv.run_policy also draws one for the auto-reset after its last
        episode, so the two agree per call, not on the generator's state after), acting and
        stepping with no message to the main process per step, which only waits (a policy in
        the main process leaves the workers idle while it acts and costs a round trip per step)."""
        if self.pool.closed:
            raise WorkerError("this ParallelEnv was closed (after an error or close()); build a new env")
        if episodes < 1:
            raise ValueError(f"run_policy needs episodes >= 1, got {episodes}")
        seeds = [torch.randint(2**31 - 1, (self.num_envs,), generator=self.gen, device=self.gen.device).tolist()
                 for _ in range(episodes)]
        self._episode_buffers(episodes * self.horizon)
        bounds = (None, None) if self.discrete else (self._low, self._high)
        self._buffers.progress.zero_()
        self._call("episode", [(policy.rows(lo, hi), *bounds, [s[lo:hi] for s in seeds]) for lo, hi in self._blocks()],
                   progress=True)
        self.t = self.horizon  # the episode is over: reset() before stepping again
        ep_obs, ep_act, ep_rew, ep_info = self._buffers.episode
        info = {k: ep_info[:, :, i].to(self.device, copy=True) for i, k in enumerate(self.info_keys)}
        if self.info_keys:
            self.info = {k: v[-1] for k, v in info.items()}
        rewards = ep_rew.to(self.device, copy=True)
        return EpisodeBatch(ep_obs.to(self.device, copy=True), ep_act.to(self.device, copy=True), rewards,
                            episode_ends(*rewards.shape, self.horizon, self.device), info=info)

    def _episode_buffers(self, T: int) -> None:
        """Shared buffers of T steps for run_policy, sent to the workers when T changes."""
        b = self._buffers
        if b.episode[0].shape[0] != T:
            b.episode = tuple(self._new(T, *x.shape[1:], dtype=x.dtype) for x in b.episode)
            self._call("buffers", [b.episode] * self.pool.size)

    def _blocks(self) -> list[tuple[int, int]]:
        """Each worker's sub-envs [lo, hi)."""
        return list(zip(self._bounds, self._bounds[1:]))

    def _clip(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions on the CPU in the shared buffer's dtype, clipped to a Box action space."""
        a = actions.detach().to("cpu", self._buffers.act.dtype)
        return a if self.discrete else a.clamp(self._low, self._high)

    def worker_stats(self) -> list[dict]:
        """Per worker, since the last call: step commands, sub-envs, and the seconds spent
        stepping them (wall clock and the worker's CPU time). With the caller's wall clock this
        splits a rollout's cost into simulation inside the workers and everything else
        (policy, messages, workers waiting for each other)."""
        return self._call("stats")

    def close(self) -> None:
        self.pool.close()
