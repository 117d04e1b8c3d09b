"""One simulation worker: a contiguous block [lo, hi) of a ParallelEnv's sub-envs and the
commands that act on it, one method each. metarl.sim.pool runs it in a worker process
(serving the commands over a pipe) or in the calling process.

The worker reads actions from and writes observations, rewards and info into buffers shared with
the main process (`SimBuffers`, in shared memory for worker processes): per step obs [B, D],
act [B(, A)], rew [B], info [B, K]; per run_policy obs [T, B, D], actions [T, B(, A)],
rewards [T, B], info [T, B, K]; progress [W] counts each worker's steps (hang detection). The
rows of a block are the block's own; a command's argument is the block's share of the batch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass
class SimBuffers:
    obs: torch.Tensor
    act: torch.Tensor
    rew: torch.Tensor
    info: torch.Tensor
    episode: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    progress: torch.Tensor


class SimWorker:
    """The sub-envs [lo, hi) of worker `index`, built by `factory()`; `chunk`: sub-envs per chunk
    of an episode command (see `episode`)."""
    COMMANDS = ("step", "buffers", "episode", "stats", "reset", "set_tasks", "close")

    def __init__(self, index: int, block: tuple[int, int], factory: Callable, buffers: SimBuffers,
                 info_keys: tuple[str, ...], chunk: int):
        self.index, self.factory, self.info_keys, self.chunk = index, factory, info_keys, chunk
        self.lo, self.hi = block  # set_tasks may move it
        self.envs, self.spare = [factory() for _ in range(self.lo, self.hi)], []  # envs[j] is sub-env lo + j
        # (buffers as numpy views: a torch op costs microseconds, per chunk-step)
        self.obs, self.act, self.rew, self.info = (x.numpy() for x in (buffers.obs, buffers.act, buffers.rew,
                                                                       buffers.info))
        self.progress = buffers.progress
        self.buffers(buffers.episode)
        # [env steps, seconds stepping (wall), seconds stepping (this process's CPU), seconds in the policy]
        self._stats = [0, 0.0, 0.0, 0.0]

    def _step_rows(self, a: int, b: int) -> None:
        """Step sub-envs [a, b) with the actions in the shared buffer."""
        t0, c0 = time.perf_counter(), time.process_time()
        for row in range(a, b):
            o, r, *extra = self.envs[row - self.lo].step(self.act[row])
            self.obs[row] = o
            self.rew[row] = r
            if self.info_keys:
                d = extra[0] if extra else {}
                self.info[row] = [float(d.get(k, 0.0)) for k in self.info_keys]
        self._stats[0] += b - a
        self._stats[1] += time.perf_counter() - t0
        self._stats[2] += time.process_time() - c0

    # -- commands
    def step(self, _=None) -> None:
        self._step_rows(self.lo, self.hi)

    def buffers(self, episode) -> None:
        """New run_policy buffers (a run of another length)."""
        self.ep_obs, self.ep_act, self.ep_rew, self.ep_info = (x.numpy() for x in episode)

    def episode(self, arg) -> None:
        """arg: (RowPolicy for rows [lo, hi), action low, high, seeds [E][hi - lo]). Chunk by chunk:
        E whole episodes of `chunk` sub-envs, then the next, so the simulators of one chunk stay in
        the cache (see parallel.auto_chunk); each episode starts with a reset of the chunk's
        sub-envs by the seeds the main process drew."""
        policy, low, high, seeds = arg
        if low is not None:
            low, high = low.numpy(), high.numpy()
        lo, hi, stats = self.lo, self.hi, self._stats
        obs, act, rew, info = self.obs, self.act, self.rew, self.info
        ep_obs, ep_act, ep_rew, ep_info = self.ep_obs, self.ep_act, self.ep_rew, self.ep_info
        H = ep_obs.shape[0] // len(seeds)
        for c0 in range(lo, hi, self.chunk):
            c1 = min(c0 + self.chunk, hi)
            part = policy.rows(c0 - lo, c1 - lo)
            observe = getattr(part, "observe", None)
            for e, episode_seeds in enumerate(seeds):
                for row in range(c0, c1):
                    obs[row] = self.envs[row - lo].reset(int(episode_seeds[row - lo]))
                for t in range(e * H, (e + 1) * H):
                    t0 = time.perf_counter()
                    ep_obs[t, c0:c1] = obs[c0:c1]
                    with torch.no_grad():
                        a = part.act(torch.from_numpy(ep_obs[t, c0:c1]), t)
                    ep_act[t, c0:c1] = a.numpy()
                    a = part.to_env(a).numpy()
                    act[c0:c1] = a if low is None else np.clip(a, low, high)
                    stats[3] += time.perf_counter() - t0
                    self._step_rows(c0, c1)
                    ep_rew[t, c0:c1] = rew[c0:c1]
                    ep_info[t, c0:c1] = info[c0:c1]
                    if observe is not None:
                        t0 = time.perf_counter()
                        with torch.no_grad():
                            observe(torch.from_numpy(ep_rew[t, c0:c1]), t)
                        stats[3] += time.perf_counter() - t0
                    self.progress[self.index] += 1

    def stats(self, _=None) -> dict:
        """The step timings since the last call (then reset)."""
        s = self._stats
        self._stats = [0, 0.0, 0.0, 0.0]
        return {"env_steps": s[0], "envs": self.hi - self.lo, "step_s": s[1], "step_cpu_s": s[2], "policy_s": s[3]}

    def reset(self, seeds) -> None:
        for j, e in enumerate(self.envs):
            self.obs[self.lo + j] = e.reset(int(seeds[j]))

    def set_tasks(self, arg) -> None:
        """arg: (block [lo, hi), one task per sub-env of the block). A moved block keeps the envs of
        the rows it keeps and builds (or reuses spare) envs for the others."""
        (new_lo, new_hi), tasks = arg
        if (new_lo, new_hi) != (self.lo, self.hi):
            mine = dict(zip(range(self.lo, self.hi), self.envs))
            self.spare += [e for row, e in mine.items() if not new_lo <= row < new_hi]
            self.envs = [mine[row] if row in mine else (self.spare.pop() if self.spare else self.factory())
                         for row in range(new_lo, new_hi)]
            self.lo, self.hi = new_lo, new_hi
        for e, task in zip(self.envs, tasks):
            e.set_task(task)

    def close(self, _=None) -> None:
        for e in self.envs + self.spare:
            getattr(e, "close", lambda: None)()
