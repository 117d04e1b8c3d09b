"""Simulation workers as Ray actors (`env.backend = "ray"`), for sampling past one machine.

Each actor holds one SimWorker (a block of sub-envs) over its own copy of the SimBuffers; a
command carries the block's share of the batch in (actions, tasks, seeds, the RowPolicy of a
whole episode) and its reply carries the rows the worker wrote (observations, rewards, info, the
episode), which `RayPool` copies into the main process's buffers. The ParallelEnv above sees the
same buffers as with worker processes, so a run samples the same trajectories on either backend.

Ray is an optional extra (`pip install -e ".[ray]"`), imported only when this backend is chosen.
`address`: "" starts a local Ray instance (or uses the one this process already joined), "auto"
joins the cluster `ray start` made on this machine, "HOST:PORT" a remote head.

Faults: an actor (or its node) that dies is replaced, up to `max_restarts` times per pool: the
new actor is brought to the state the old one had (its tasks, then the reset and every step
since, replayed from a log of the commands sent) and gets the failed command again, so the
samples are those the run would have had without the fault. Past `max_restarts`, an actor that
raises, or one that answers nothing for `timeout` seconds (while stepping an episode: that makes
no step for `timeout` seconds) is a WorkerError naming the worker and the command.
"""
from __future__ import annotations

import os
import socket
import time
from typing import Callable

import torch

from metarl.errors import UserError
from metarl.sim.pool import CLOSED, WorkerError
from metarl.sim.worker import SimBuffers, SimWorker


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("env.backend=ray needs Ray: pip install -e \".[ray]\"") from None
    return ray


def connect(address: str = "") -> None:
    """Join (or start) the Ray instance at `address` once per process; a bad address is one line."""
    ray = import_ray()
    if ray.is_initialized():
        return
    if address not in ("", "auto"):  # Ray retries an unreachable head for minutes: ask it first
        host, _, port = address.split("://")[-1].rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5.0).close()
        except (OSError, ValueError) as e:
            raise UserError(f"cannot reach the Ray cluster at --ray-address {address!r} (HOST:PORT of a head "
                            f"started by `ray start --head`, or auto): {e}") from None
    try:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot reach the Ray cluster at --ray-address {address!r}: {first}") from None


def _private(buffers: SimBuffers) -> SimBuffers:
    """Buffers of the same shapes, this process's own."""
    return SimBuffers(*(torch.zeros_like(x) for x in (buffers.obs, buffers.act, buffers.rew, buffers.info)),
                      tuple(torch.zeros_like(x) for x in buffers.episode), torch.zeros_like(buffers.progress))


class _Block:
    """Inside a Ray actor: a SimWorker, and the rows of its buffers each command returns."""

    def __init__(self, index, block, factory, shapes: SimBuffers, info_keys, chunk):
        torch.set_num_threads(1)
        self.buffers = _private(shapes)
        self.worker = SimWorker(index, block, factory, self.buffers, info_keys, chunk)
        self.index = index

    def pid(self) -> int:
        return os.getpid()

    def steps(self) -> int:
        """Steps taken so far (read while an episode runs: hang detection)."""
        return int(self.buffers.progress[self.index])

    def run(self, cmd: str, arg, actions=None):
        w, b = self.worker, self.buffers
        if cmd == "step":
            b.act[w.lo:w.hi] = actions
        if cmd == "buffers":  # arg: the main process's new episode buffers, as empty shapes
            b.episode = tuple(torch.zeros(shape, dtype=dtype) for shape, dtype in arg)
            arg = b.episode
        out = getattr(w, cmd)(arg)
        lo, hi = w.lo, w.hi
        if cmd in ("step", "reset"):
            return out, (b.obs[lo:hi].clone(), b.rew[lo:hi].clone(), b.info[lo:hi].clone())
        if cmd == "episode":
            return out, tuple(x[:, lo:hi].clone() for x in b.episode)
        return out, None


class RayPool:
    """len(blocks) Ray actors, actor i holding sub-envs blocks[i] = (lo, hi) (the pool interface of
    metarl.sim.pool: call, close, size, pids, closed)."""
    shared_memory = False

    def __init__(self, factory: Callable, blocks: list[tuple[int, int]], buffers: SimBuffers,
                 info_keys: tuple[str, ...], chunk: int, start_timeout: float = 120.0, address: str = "",
                 max_restarts: int = 3):
        ray = import_ray()
        connect(address)
        self.ray, self.buffers, self.blocks = ray, buffers, list(blocks)
        # commands run one at a time; `steps` has a thread of its own, to answer mid-episode
        self._actor = ray.remote(num_cpus=1, concurrency_groups={"probe": 1})(_Block)
        self._spawn_args = (factory, _private(buffers), info_keys, chunk)
        self.max_restarts, self.restarts, self.start_timeout = max_restarts, 0, start_timeout
        # what a replacement actor replays: episode buffer shapes, its tasks, the commands since its last reset
        self._shapes, self._tasks, self._log = None, [None] * len(blocks), [[] for _ in blocks]
        self.actors = [self._spawn(i) for i in range(len(blocks))]
        self.closed = False
        self.pids = self._gather([a.pid.remote() for a in self.actors], "start", start_timeout)

    def _spawn(self, i: int):
        return self._actor.remote(i, self.blocks[i], *self._spawn_args)

    @property
    def size(self) -> int:
        return len(self.actors)

    def call(self, cmd: str, args: list | None = None, timeout: float = 60.0, progress: bool = False) -> list:
        """Send actor i `cmd` with args[i]; copy the rows each wrote into the main buffers; every reply."""
        if self.closed:
            raise WorkerError(CLOSED)
        b = self.buffers
        if cmd == "buffers":  # every actor allocates its own
            args = [[(tuple(x.shape), x.dtype) for x in a] for a in args]
        sends = [(cmd, None if args is None else args[i], b.act[lo:hi].clone() if cmd == "step" else None)
                 for i, (lo, hi) in enumerate(self.blocks)]
        refs = [a.run.remote(*s) for a, s in zip(self.actors, sends)]
        replies = self._gather(refs, cmd, timeout, progress, resend=lambda i: self._replace(i, sends[i], cmd))
        if cmd == "set_tasks":  # the blocks move once every actor has moved (a replacement starts on the old one)
            self.blocks = [block for block, _ in args]
        for i, s in enumerate(sends):  # the log a replacement replays
            if cmd == "set_tasks":
                self._tasks[i], self._log[i] = s, []
            elif cmd == "reset":
                self._log[i] = [s]
            elif cmd == "step":
                self._log[i].append(s)
            elif cmd == "episode":  # self-contained (it resets first); the env is done after it
                self._log[i] = []
            elif cmd == "buffers":
                self._shapes = s
        out = []
        for (lo, hi), (reply, rows) in zip(self.blocks, replies):
            if cmd in ("step", "reset"):
                b.obs[lo:hi], b.rew[lo:hi], b.info[lo:hi] = rows
            elif cmd == "episode":
                for dst, src in zip(b.episode, rows):
                    dst[:, lo:hi] = src
            out.append(reply)
        return out

    def _replace(self, i: int, send: tuple, what: str):
        """A new actor i in the state of the dead one (its log replayed, its step counters zeroed),
        sent `send` again; its reply's ref. A replacement that dies while replaying is replaced
        too. Past max_restarts: a WorkerError."""
        ray = self.ray
        while True:
            if self.restarts >= self.max_restarts:
                self._fail(f"worker {i} (Ray actor) died during {what}, after {self.restarts} restart(s) "
                           f"(env.max_restarts={self.max_restarts}); workers shut down")
            self.restarts += 1
            try:
                ray.kill(self.actors[i])
            except Exception:
                pass
            self.actors[i] = a = self._spawn(i)
            replay = [s for s in (self._shapes, self._tasks[i]) if s is not None] + self._log[i] + [("stats", None)]
            try:
                self.pids[i] = ray.get(a.pid.remote(), timeout=self.start_timeout)
                for s in replay:
                    ray.get(a.run.remote(*s), timeout=self.start_timeout)
            except ray.exceptions.RayTaskError as e:
                self._fail(f"worker {i} (Ray actor) could not be restarted after it died during {what}: "
                           f"{_first_line(e.cause if e.cause else e)}")
            except (ray.exceptions.RayError, TimeoutError) as e:  # died again, or its node: another one
                if isinstance(e, TimeoutError):  # (ray's GetTimeoutError is one)
                    self._fail(f"worker {i} (Ray actor) could not be restarted within {self.start_timeout:.0f} s "
                               f"after it died during {what}")
                continue
            return a.run.remote(*send)

    def _gather(self, refs: list, what: str, timeout: float, progress: bool = False, resend=None) -> list:
        """ray.get of every reply; an actor that died is replaced (resend(i) -> the new ref) while
        restarts remain; an error, or `timeout` seconds without an answer (with `progress`:
        without a step), is a WorkerError naming the actor."""
        ray = self.ray
        pending = {r: i for i, r in enumerate(refs)}
        replies = [None] * len(refs)
        steps = self._steps() if progress else None
        deadline = time.monotonic() + timeout
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            for r in ready:
                i = pending.pop(r)
                try:
                    replies[i] = ray.get(r)
                except ray.exceptions.RayTaskError as e:
                    self._fail(f"worker {i} raised during {what}: {_first_line(e.cause if e.cause else e)}")
                except ray.exceptions.RayError as e:  # the actor, its node or its reply is gone
                    if resend is None:
                        self._fail(f"worker {i} (Ray actor) died during {what}: {_first_line(e)}")
                    pending[resend(i)] = i
                    deadline = time.monotonic() + timeout
            if pending and time.monotonic() >= deadline:
                if progress:
                    now = self._steps(timeout)
                    if now is not None and now != steps:
                        steps, deadline = now, time.monotonic() + timeout
                        continue
                late = min(pending.values())
                self._fail(f"worker {late} (Ray actor) did not answer {what} within {timeout:.0f} s (hung simulator "
                           f"or lost node?); workers shut down")
        return replies

    def _steps(self, timeout: float = 10.0) -> list | None:
        try:
            return self.ray.get([a.steps.options(concurrency_group="probe").remote() for a in self.actors],
                                timeout=timeout)
        except Exception:  # an actor that cannot say: let the caller's deadline decide
            return None

    def _fail(self, message: str):
        self.close()
        raise WorkerError(message)

    def _kill(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:
                pass
        self.closed = True

    def close(self) -> None:
        """Close every sub-env (a few seconds at most), then end the actors."""
        if not self.closed:
            try:
                self.ray.get([a.run.remote("close", None) for a in self.actors], timeout=5.0)
            except Exception:
                pass
            self._kill()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[-1] if text else type(e).__name__

