"""Parallel simulation for CPU simulators (MuJoCo, Meta-World): a BatchedEnv whose sub-envs
live in worker processes.

Each of W workers owns a contiguous block of the B sub-envs and steps them in a loop. Actions,
observations and rewards travel through shared-memory tensors ([B, A], [B, D], [B]); the pipe
to each worker carries only a one-word command and its reply, so a step costs one small
message per worker, not a pickled batch. run_policy() goes further for a policy that can act
for any block of sub-envs (RowPolicy: MAML's MLP, RL²'s GRU with its state): each worker acts
for its own sub-envs and steps whole episodes (an RL² trial's, resets included) on one message,
writing them into shared [T, B, ...] buffers, one chunk of sub-envs at a time (a chunk's
simulators stay in the cache). Given a step_cost per task, set_tasks sizes the blocks so every
worker carries the same cost (Meta-World's classes differ 4x in step time). A worker that dies,
raises, or does not answer within `timeout` seconds surfaces as a WorkerError naming the worker and what it was doing (never a
hang; during run_policy a worker that keeps stepping is never timed out); the remaining
workers are shut down. Workers ignore Ctrl-C: the main process handles
it, and `close()` (also called on garbage collection and at exit) stops them.

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

import atexit
import contextlib
import os
import signal
import time
import traceback
import weakref
from multiprocessing.connection import wait
from typing import Callable

import gymnasium as gym
import numpy as np
import torch
import torch.multiprocessing as mp

from metarl.batched_env import BatchedEnv
from metarl.distributions import box_bounds
from metarl.errors import UserError
from metarl.tasks import Tasks


class WorkerError(UserError):
    """A simulation worker died, raised, or hung."""


@contextlib.contextmanager
def main_thread_only():
    """Run the main process's torch ops on one thread while workers simulate: idle OpenMP
    threads of the main process spin and steal the workers' cores (measured: mujoco bench
    efficiency 0.27 with 2 torch threads vs 0.64 with 1 on 2 cores). Restored afterwards, so
    the learner's update still uses every core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _worker(index: int, block: tuple[int, int], factory: Callable, obs: torch.Tensor, act: torch.Tensor,
            rew: torch.Tensor, info: torch.Tensor, info_keys: tuple, episode: tuple, progress: torch.Tensor,
            chunk: int, conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process owns Ctrl-C
    torch.set_num_threads(1)
    try:
        lo, hi = block  # this worker's block of sub-envs [lo, hi); set_tasks may move it
        envs, spare = [factory() for _ in range(lo, hi)], []  # envs[j] is sub-env lo + j
        obs_np, act_np, rew_np, info_np = obs.numpy(), act.numpy(), rew.numpy(), info.numpy()
        conn.send(("ready", os.getpid()))
        ep_obs, ep_act, ep_rew, ep_info = (x.numpy() for x in episode)
        # [env steps, seconds stepping (wall), seconds stepping (this process's CPU), seconds in the policy]
        stats = [0, 0.0, 0.0, 0.0]

        def step_rows(a: int, b: int) -> None:
            """Step sub-envs [a, b) with the actions in the shared buffer."""
            t0, c0 = time.perf_counter(), time.process_time()
            for row in range(a, b):
                o, r, *extra = envs[row - lo].step(act_np[row])
                obs_np[row] = o
                rew_np[row] = r
                if info_keys:
                    d = extra[0] if extra else {}
                    info_np[row] = [float(d.get(k, 0.0)) for k in info_keys]
            stats[0] += b - a
            stats[1] += time.perf_counter() - t0
            stats[2] += time.process_time() - c0

        while True:
            cmd, arg = conn.recv()
            if cmd == "step":
                step_rows(lo, hi)
            elif cmd == "buffers":  # arg: new episode buffers (a run of another length)
                ep_obs, ep_act, ep_rew, ep_info = (x.numpy() for x in arg)
            elif cmd == "episode":  # arg: (RowPolicy for rows [lo, hi), action low, high, seeds [E][hi - lo])
                # Chunk by chunk: E whole episodes of `chunk` sub-envs, then the next, so the
                # simulators of one chunk stay in the cache (see auto_chunk); each episode starts
                # with a reset of the chunk's sub-envs by the seeds the main process drew.
                # (Buffers are handled as numpy views: a torch op costs ~5 us here, per chunk-step.)
                policy, low, high, seeds = arg
                if low is not None:
                    low, high = low.numpy(), high.numpy()
                H = ep_obs.shape[0] // len(seeds)
                for c0 in range(lo, hi, chunk):
                    c1 = min(c0 + chunk, hi)
                    part = policy.rows(c0 - lo, c1 - lo)
                    observe = getattr(part, "observe", None)
                    for e, episode_seeds in enumerate(seeds):
                        for row in range(c0, c1):
                            obs_np[row] = envs[row - lo].reset(int(episode_seeds[row - lo]))
                        for t in range(e * H, (e + 1) * H):
                            t0 = time.perf_counter()
                            ep_obs[t, c0:c1] = obs_np[c0:c1]
                            with torch.no_grad():
                                a = part.act(torch.from_numpy(ep_obs[t, c0:c1]), t)
                            ep_act[t, c0:c1] = a.numpy()
                            a = part.to_env(a).numpy()
                            act_np[c0:c1] = a if low is None else np.clip(a, low, high)
                            stats[3] += time.perf_counter() - t0
                            step_rows(c0, c1)
                            ep_rew[t, c0:c1] = rew_np[c0:c1]
                            ep_info[t, c0:c1] = info_np[c0:c1]
                            if observe is not None:
                                t0 = time.perf_counter()
                                with torch.no_grad():
                                    observe(torch.from_numpy(ep_rew[t, c0:c1]), t)
                                stats[3] += time.perf_counter() - t0
                            progress[index] += 1
            elif cmd == "stats":  # read and reset the step timings
                conn.send(("ok", {"env_steps": stats[0], "envs": hi - lo, "step_s": stats[1],
                                  "step_cpu_s": stats[2], "policy_s": stats[3]}))
                stats = [0, 0.0, 0.0, 0.0]
                continue
            elif cmd == "reset":
                for j, e in enumerate(envs):
                    obs_np[lo + j] = e.reset(int(arg[j]))
            elif cmd == "set_tasks":  # arg: (block [lo, hi), one task per sub-env of the block)
                (new_lo, new_hi), tasks = arg
                if (new_lo, new_hi) != (lo, hi):  # rebalanced: keep the envs of rows it keeps
                    mine = dict(zip(range(lo, hi), envs))
                    spare += [e for row, e in mine.items() if not new_lo <= row < new_hi]
                    envs = [mine[row] if row in mine else (spare.pop() if spare else factory())
                            for row in range(new_lo, new_hi)]
                    lo, hi = new_lo, new_hi
                for e, task in zip(envs, tasks):
                    e.set_task(task)
            elif cmd == "close":
                for e in envs + spare:
                    getattr(e, "close", lambda: None)()
                conn.send(("ok", None))
                return
            conn.send(("ok", None))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        return
    except BaseException:  # report anything else to the main process, then exit
        try:
            conn.send(("error", traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass


def auto_chunk(num_envs: int, workers: int) -> int:
    """Sub-envs per chunk of run_policy: at most 64, so a chunk's simulators stay in the cache
    (HalfCheetah, one process: 59 us a step round-robin over 400 envs, 45 over 100, 43 over 20),
    and no fewer, since each chunk-step costs one policy call (~85 us for a 2x100 MLP here)."""
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


def _shutdown(procs, conns) -> None:
    for c in conns:
        try:
            c.send(("close", None))
        except (BrokenPipeError, OSError):
            pass
    deadline = time.monotonic() + 2.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.terminate()
            p.join(1.0)
        if p.is_alive():
            p.kill()
    for c in conns:
        c.close()


class ParallelEnv(BatchedEnv):
    """B sub-envs built by `factory` in `workers` processes (0 = one per CPU core).
    Samplers should step it inside `main_thread_only()` (see `rollout_context`).

    task_rows(tasks) -> one picklable task per sub-env (default: each row as a dict of lists);
    info_keys: info values of each step to expose as `self.info` {key: [B]};
    chunk: sub-envs per chunk in run_policy (0 = auto_chunk; the block's size = no chunking);
    step_cost(task row) -> relative cost of one step, to balance the workers' blocks by."""

    def rollout_context(self):
        return main_thread_only()

    def __init__(self, factory: Callable, num_envs: int, horizon: int, observation_space: gym.spaces.Box,
                 action_space: gym.spaces.Box, device="cpu", generator: torch.Generator | None = None,
                 workers: int = 0, timeout: float = 60.0, start_timeout: float = 120.0,
                 task_rows: Callable[[Tasks], list] | None = None, info_keys: tuple[str, ...] = (),
                 chunk: int = 0, step_cost: Callable[[object], float] | None = None):
        self.num_envs, self.horizon, self.device = num_envs, horizon, torch.device(device)
        self.observation_space, self.action_space = observation_space, action_space
        self.timeout = timeout
        self.gen = generator if generator is not None else torch.Generator()
        W = max(1, min(workers or os.cpu_count() or 1, num_envs))
        # Contiguous blocks: batches are task-major, so a worker keeps few distinct simulators
        # (measured on ML10, 20 envs: 2185 steps/s with blocks vs 2004 with sub-env b in worker
        # b % W, whose workers each cycle through all 10 classes' models and miss the cache).
        # With step_cost (the relative cost of a step of each task row), set_tasks moves the
        # bounds so every worker gets the same summed cost (ML10's classes step at different
        # speeds: even blocks leave one worker waiting). The blocks follow from the tasks alone,
        # so a seeded run samples the same on every rerun.
        self._bounds = [round(i * num_envs / W) for i in range(W + 1)]
        self.step_cost = step_cost
        self.chunk = chunk or auto_chunk(num_envs, W)
        self._obs = torch.zeros(num_envs, self.obs_dim).share_memory_()
        act_shape = (num_envs,) if self.discrete else (num_envs, self.num_actions)
        self._act = torch.zeros(act_shape, dtype=torch.int64 if self.discrete else torch.float32).share_memory_()
        self._rew = torch.zeros(num_envs).share_memory_()
        self.info_keys, self._task_rows = tuple(info_keys), task_rows
        self._info = torch.zeros(num_envs, max(1, len(self.info_keys))).share_memory_()
        self.info = {k: torch.zeros(num_envs, device=self.device) for k in self.info_keys}
        # run_policy(): whole episodes, written by the workers in place: obs [T, B, D], actions
        # [T, B(, A)], rewards [T, B], info [T, B, K] with T = episodes x H (reallocated when a
        # run of another length comes); progress [W] counts each worker's steps.
        self._episode = (torch.zeros(horizon, num_envs, self.obs_dim).share_memory_(),
                         torch.zeros((horizon, *act_shape), dtype=self._act.dtype).share_memory_(),
                         torch.zeros(horizon, num_envs).share_memory_(),
                         torch.zeros(horizon, num_envs, self._info.shape[1]).share_memory_())
        self._progress = torch.zeros(W, dtype=torch.int64).share_memory_()
        if not self.discrete:  # actions are clipped to the space before they reach the workers
            self._low, self._high = box_bounds(action_space)
        self._done = torch.ones(num_envs, dtype=torch.bool, device=self.device)
        self._not_done = torch.zeros(num_envs, dtype=torch.bool, device=self.device)
        ctx = mp.get_context("spawn")
        self._procs, self._conns = [], []
        for i in range(W):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(i, self._bounds[i:i + 2], factory, self._obs, self._act, self._rew,
                                                  self._info, self.info_keys, self._episode, self._progress,
                                                  self.chunk, child),
                            daemon=True, name=f"metarl-sim-{i}")
            p.start()
            child.close()
            self._procs.append(p)
            self._conns.append(parent)
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._conns)
        atexit.register(self._finalizer)
        self.pids = [pid for pid in self._gather("start", start_timeout, expect="ready")]
        self.t = 0

    # -- talking to workers
    def _broadcast(self, cmd: str, args=None) -> None:
        if self._closed:
            raise WorkerError("this ParallelEnv was closed (after an error or close()); build a new env")
        for i, c in enumerate(self._conns):
            try:
                c.send((cmd, None if args is None else args[i]))
            except (BrokenPipeError, OSError):
                self._fail(f"worker {i} (pid {self._procs[i].pid}) is gone (exit code {self._procs[i].exitcode}) "
                           f"before {cmd}")

    def _gather(self, what: str, timeout: float, expect: str = "ok", progress: bool = False) -> list:
        """Every worker's reply to `what`. A worker that neither answers nor (with `progress`, for
        whole episodes) steps for `timeout` seconds is hung."""
        replies = [None] * len(self._conns)
        pending = {c: i for i, c in enumerate(self._conns)}
        sentinels = {self._procs[i].sentinel: i for i in range(len(self._procs))}
        deadline = time.monotonic() + timeout
        seen = self._progress.clone() if progress else None
        while pending:
            left = deadline - time.monotonic()
            ready = wait(list(pending) + [s for s, i in sentinels.items() if i in pending.values()],
                         timeout=max(0.0, left))
            if not ready and progress and not torch.equal(self._progress, seen):
                seen = self._progress.clone()  # still stepping: a long episode, not a hang
                deadline = time.monotonic() + timeout
                continue
            if not ready:
                late = sorted(pending.values())
                self._fail(f"worker {late[0]} (pid {self._procs[late[0]].pid}) did not answer {what} within "
                           f"{timeout:.0f} s (hung simulator?); workers shut down")
            for r in ready:
                if r in pending:
                    i = pending[r]
                    try:
                        kind, payload = r.recv()
                    except (EOFError, OSError):
                        self._fail(f"worker {i} (pid {self._procs[i].pid}) died during {what} "
                                   f"(exit code {self._procs[i].exitcode})")
                    if kind == "error":
                        last = payload.strip().splitlines()[-1]
                        self._fail(f"worker {i} raised during {what}: {last}")
                    replies[i] = payload
                    del pending[r]
            for r in ready:
                i = sentinels.get(r)
                if i is not None and i in pending.values():
                    c = self._conns[i]
                    if not c.poll():
                        self._procs[i].join(0.1)
                        self._fail(f"worker {i} (pid {self._procs[i].pid}) died during {what} "
                                   f"(exit code {self._procs[i].exitcode}, e.g. killed or out of memory)")
        return replies

    def _fail(self, message: str):
        self.close()
        raise WorkerError(message)

    # -- BatchedEnv
    def set_tasks(self, tasks: Tasks) -> None:
        rows = (self._task_rows(tasks) if self._task_rows else
                [{k: v[b].tolist() for k, v in tasks.items()} for b in range(self.num_envs)])
        if self.step_cost is not None and len(self._conns) > 1:
            self._bounds = balanced_blocks([float(self.step_cost(r)) for r in rows], len(self._conns))
        # (a worker whose block moved builds or reuses sub-envs, which can take a while)
        self._broadcast("set_tasks", [((lo, hi), rows[lo:hi]) for lo, hi in self._blocks()])
        self._gather("set_tasks", self.timeout)
        self._tasks = tasks

    def reset(self) -> torch.Tensor:
        seeds = torch.randint(2**31 - 1, (self.num_envs,), generator=self.gen, device=self.gen.device).tolist()
        self._broadcast("reset", [seeds[lo:hi] for lo, hi in self._blocks()])
        self._gather("reset", self.timeout)
        self.t = 0
        return self._obs.to(self.device, copy=True)

    def step(self, actions: torch.Tensor):
        self._act.copy_(self._clip(actions))
        self._broadcast("step")
        self._gather("step", self.timeout)
        reward = self._rew.to(self.device, copy=True)
        if self.info_keys:
            info = self._info.to(self.device, copy=True)
            self.info = {k: info[:, i] for i, k in enumerate(self.info_keys)}
        self.t += 1
        if self.t >= self.horizon:
            return self.reset(), reward, self._done
        return self._obs.to(self.device, copy=True), reward, self._not_done

    def run_policy(self, policy, episodes: int = 1) -> dict:
        """BatchedEnv.run_policy with the policy inside the workers: each worker gets
        policy.rows(lo, hi) for its block of sub-envs and runs the whole run (every episode
        after a reset, with seeds drawn here as that many reset() calls draw them; the
        in-process BatchedEnv.run_policy also draws one for the auto-reset after its last
        episode, so the two agree per call, not on the generator's state after), acting and
        stepping with no message to the main process per step, which only waits. (A policy in
        the main process leaves the workers idle while it acts and costs a round trip per
        step: efficiency 0.43-0.53 on 2 cores, experiments/bench.py.)"""
        if self._closed:
            raise WorkerError("this ParallelEnv was closed (after an error or close()); build a new env")
        if episodes < 1:
            raise ValueError(f"run_policy needs episodes >= 1, got {episodes}")
        seeds = [torch.randint(2**31 - 1, (self.num_envs,), generator=self.gen, device=self.gen.device).tolist()
                 for _ in range(episodes)]
        self._episode_buffers(episodes * self.horizon)
        bounds = (None, None) if self.discrete else (self._low, self._high)
        self._progress.zero_()
        self._broadcast("episode", [(policy.rows(lo, hi), *bounds, [s[lo:hi] for s in seeds])
                                    for lo, hi in self._blocks()])
        self._gather("episode", self.timeout, progress=True)
        self.t = self.horizon  # the episode is over: reset() before stepping again
        ep_obs, ep_act, ep_rew, ep_info = self._episode
        info = {k: ep_info[:, :, i].to(self.device, copy=True) for i, k in enumerate(self.info_keys)}
        if self.info_keys:
            self.info = {k: v[-1] for k, v in info.items()}
        return {"obs": ep_obs.to(self.device, copy=True), "actions": ep_act.to(self.device, copy=True),
                "rewards": ep_rew.to(self.device, copy=True), "info": info}

    def _episode_buffers(self, T: int) -> None:
        """Shared buffers of T steps for run_policy, sent to the workers when T changes."""
        if self._episode[0].shape[0] != T:
            self._episode = tuple(torch.zeros((T, *x.shape[1:]), dtype=x.dtype).share_memory_()
                                  for x in self._episode)
            self._broadcast("buffers", [self._episode] * len(self._conns))
            self._gather("buffers", self.timeout)

    def _blocks(self) -> list[tuple[int, int]]:
        """Each worker's sub-envs [lo, hi)."""
        return list(zip(self._bounds, self._bounds[1:]))

    def _clip(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions on the CPU in the shared buffer's dtype, clipped to a Box action space."""
        a = actions.detach().to("cpu", self._act.dtype)
        return a if self.discrete else a.clamp(self._low, self._high)

    def worker_stats(self) -> list[dict]:
        """Per worker, since the last call: step commands, sub-envs, and the seconds spent
        stepping them (wall clock and the worker's CPU time). With the caller's wall clock this
        splits a rollout's cost into simulation inside the workers and everything else
        (policy, messages, workers waiting for each other)."""
        self._broadcast("stats")
        return self._gather("stats", self.timeout)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._finalizer()
