"""Pools of simulation workers (metarl.sim.worker.SimWorker): start them, send each a command,
gather the replies, shut them down.

- `ProcessPool`: one spawned process per worker; the pipe carries a one-word command and its
  reply (the data travels through the shared-memory SimBuffers). A worker that dies, raises, or
  does not answer within `timeout` seconds surfaces as a WorkerError naming the worker and the
  command (never a hang; with `progress`, a worker that keeps stepping is never timed out); the
  pool is then shut down. Workers ignore Ctrl-C: the main process handles it, and `close()`
  (also on garbage collection and at exit) stops them.
- `InlinePool`: the workers live in the calling process and run each command in turn: no
  processes, for one env made by `gym.make` or an env built only to read its dimensions.
"""
from __future__ import annotations

import atexit
import os
import signal
import time
import traceback
import weakref
from multiprocessing.connection import wait
from typing import Callable

import torch
import torch.multiprocessing as mp

from metarl.errors import UserError
from metarl.sim.worker import SimBuffers, SimWorker


class WorkerError(UserError):
    """A simulation worker died, raised, or hung."""


CLOSED = "the simulation workers were closed (after an error or close()); build a new env"


def _serve(index: int, block: tuple[int, int], factory: Callable, buffers: SimBuffers, info_keys: tuple,
           chunk: int, conn) -> None:
    """A worker process: build the SimWorker, then run each command it is sent and reply."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process owns Ctrl-C
    torch.set_num_threads(1)
    try:
        worker = SimWorker(index, block, factory, buffers, info_keys, chunk)
        conn.send(("ready", os.getpid()))
        while True:
            cmd, arg = conn.recv()
            if cmd not in SimWorker.COMMANDS:
                raise ValueError(f"unknown worker command {cmd!r}")
            conn.send(("ok", getattr(worker, cmd)(arg)))
            if cmd == "close":
                return
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        return
    except BaseException:  # report anything else to the main process, then exit
        try:
            conn.send(("error", traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass


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


class ProcessPool:
    """len(blocks) worker processes, worker i holding sub-envs blocks[i] = (lo, hi)."""
    shared_memory = True

    def __init__(self, factory: Callable, blocks: list[tuple[int, int]], buffers: SimBuffers,
                 info_keys: tuple[str, ...], chunk: int, start_timeout: float = 120.0):
        self.progress = buffers.progress
        ctx = mp.get_context("spawn")
        self.procs, self.conns = [], []
        for i, block in enumerate(blocks):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_serve, args=(i, block, factory, buffers, info_keys, chunk, child),
                            daemon=True, name=f"metarl-sim-{i}")
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)
        self.closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self.procs, self.conns)
        atexit.register(self._finalizer)
        self.pids = self._gather("start", start_timeout, expect="ready")

    @property
    def size(self) -> int:
        return len(self.conns)

    def call(self, cmd: str, args: list | None = None, timeout: float = 60.0, progress: bool = False) -> list:
        """Send worker i `cmd` with args[i] (None: no argument), then every worker's reply."""
        if self.closed:
            raise WorkerError(CLOSED)
        for i, c in enumerate(self.conns):
            try:
                c.send((cmd, None if args is None else args[i]))
            except (BrokenPipeError, OSError):
                self._fail(f"worker {i} (pid {self.procs[i].pid}) is gone (exit code {self.procs[i].exitcode}) "
                           f"before {cmd}")
        return self._gather(cmd, timeout, progress=progress)

    def _gather(self, what: str, timeout: float, expect: str = "ok", progress: bool = False) -> list:
        """Every worker's reply to `what`. A worker that neither answers nor (with `progress`, for
        whole episodes) steps for `timeout` seconds is hung."""
        replies = [None] * len(self.conns)
        pending = {c: i for i, c in enumerate(self.conns)}
        sentinels = {self.procs[i].sentinel: i for i in range(len(self.procs))}
        deadline = time.monotonic() + timeout
        seen = self.progress.clone() if progress else None
        while pending:
            left = deadline - time.monotonic()
            ready = wait(list(pending) + [s for s, i in sentinels.items() if i in pending.values()],
                         timeout=max(0.0, left))
            if not ready and progress and not torch.equal(self.progress, seen):
                seen = self.progress.clone()  # still stepping: a long episode, not a hang
                deadline = time.monotonic() + timeout
                continue
            if not ready:
                late = sorted(pending.values())
                self._fail(f"worker {late[0]} (pid {self.procs[late[0]].pid}) did not answer {what} within "
                           f"{timeout:.0f} s (hung simulator?); workers shut down")
            for r in ready:
                if r in pending:
                    i = pending[r]
                    try:
                        kind, payload = r.recv()
                    except (EOFError, OSError):
                        self._fail(f"worker {i} (pid {self.procs[i].pid}) died during {what} "
                                   f"(exit code {self.procs[i].exitcode})")
                    if kind == "error":
                        last = payload.strip().splitlines()[-1]
                        self._fail(f"worker {i} raised during {what}: {last}")
                    replies[i] = payload
                    del pending[r]
            for r in ready:
                i = sentinels.get(r)
                if i is not None and i in pending.values():
                    c = self.conns[i]
                    if not c.poll():
                        self.procs[i].join(0.1)
                        self._fail(f"worker {i} (pid {self.procs[i].pid}) died during {what} "
                                   f"(exit code {self.procs[i].exitcode}, e.g. killed or out of memory)")
        return replies

    def _fail(self, message: str):
        self.close()
        raise WorkerError(message)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._finalizer()


class InlinePool:
    """The workers in this process; a command runs on each in turn (errors propagate as raised)."""
    shared_memory = False

    def __init__(self, factory: Callable, blocks: list[tuple[int, int]], buffers: SimBuffers,
                 info_keys: tuple[str, ...], chunk: int):
        self.workers = [SimWorker(i, block, factory, buffers, info_keys, chunk) for i, block in enumerate(blocks)]
        self.pids = [os.getpid()] * len(self.workers)
        self.closed = False

    @property
    def size(self) -> int:
        return len(self.workers)

    def call(self, cmd: str, args: list | None = None, timeout: float = 60.0, progress: bool = False) -> list:
        if self.closed:
            raise WorkerError(CLOSED)
        return [getattr(w, cmd)(None if args is None else args[i]) for i, w in enumerate(self.workers)]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for w in self.workers:
                w.close()

