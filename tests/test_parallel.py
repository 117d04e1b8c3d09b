import os
import signal
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

from metarl.parallel import ParallelEnv, WorkerError

OBS = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


class Toy:
    """obs = [position, goal]; a step adds the action to the position; reward = -|pos - goal|."""

    def __init__(self, mode="ok"):
        self.mode, self.goal = mode, 0.0

    def set_task(self, task):
        self.goal = task["goal"][0]

    def reset(self, seed):
        self.pos = float(np.random.default_rng(seed).uniform(-1, 1))
        return np.array([self.pos, self.goal])

    def step(self, action):
        if self.mode == "hang":
            time.sleep(3600)
        if self.mode == "raise":
            raise RuntimeError("simulator exploded")
        if self.mode == "slow":
            time.sleep(0.005)
        self.pos += float(action[0])
        return np.array([self.pos, self.goal]), -abs(self.pos - self.goal)


def toy(mode="ok"):
    return Toy(mode)


def make(mode="ok", num_envs=5, workers=2, timeout=30.0):
    import functools
    return ParallelEnv(functools.partial(toy, mode), num_envs, 3, OBS, ACT, generator=torch.Generator().manual_seed(0),
                       workers=workers, timeout=timeout)


def test_parallel_env_matches_in_process_stepping():
    env = make()
    try:
        goals = torch.arange(5.0).view(5, 1)
        env.set_tasks({"goal": goals})
        obs = env.reset()
        assert torch.equal(obs[:, 1], goals[:, 0])
        start = obs[:, 0].clone()
        a = torch.tensor([[0.5], [-0.5], [2.0], [0.0], [0.1]])
        obs, r, d = env.step(a)
        moved = start + a[:, 0].clamp(-1, 1)  # actions are clipped to the action space
        assert torch.allclose(obs[:, 0], moved.float(), atol=1e-6)
        assert torch.allclose(r, -(moved - goals[:, 0]).abs(), atol=1e-6) and not d.any()
        env.step(a)
        _, _, d = env.step(a)
        assert d.all()  # fixed horizon of 3, then auto-reset
    finally:
        env.close()


def test_worker_stats_count_steps_and_time_spent_stepping():
    """worker_stats(): per worker, the step commands and sub-envs since the last call, and the
    seconds spent stepping them (here each env step sleeps 5 ms); a call resets the counters."""
    env = make("slow", num_envs=5, workers=2)
    try:
        env.set_tasks({"goal": torch.zeros(5, 1)})
        env.reset()
        env.worker_stats()
        for _ in range(2):
            env.step(torch.zeros(5, 1))
        stats = env.worker_stats()
        assert [s["steps"] for s in stats] == [2, 2] and sorted(s["envs"] for s in stats) == [2, 3]
        for s in stats:
            assert s["step_s"] >= 2 * s["envs"] * 0.005 * 0.9
            assert 0.0 <= s["step_cpu_s"] < s["step_s"]  # sleeping is not CPU time
        assert all(s["steps"] == 0 and s["step_s"] == 0.0 for s in env.worker_stats())
    finally:
        env.close()


def _policy(obs_g, g):
    """A deterministic policy: step halfway towards the goal (clipped to the action space later)."""
    return 0.5 * (obs_g[:, 1:2] - obs_g[:, 0:1]) + 0.3


def _episode_in_process(goals):
    """The same episode stepped with Toy envs in this process: obs [H, B, 2], rewards [H, B]."""
    gen = torch.Generator().manual_seed(0)
    seeds = torch.randint(2**31 - 1, (len(goals),), generator=gen).tolist()
    envs = [Toy() for _ in goals]
    obs = []
    for e, g, sd in zip(envs, goals.tolist(), seeds):
        e.set_task({"goal": [g]})
        obs.append(e.reset(sd))
    obs_buf, rew_buf = [], []
    for _ in range(3):
        o = torch.tensor(np.array(obs), dtype=torch.float32)
        a = _policy(o, 0).clamp(-1, 1)
        obs_buf.append(o)
        steps = [e.step(a[i].numpy()) for i, e in enumerate(envs)]
        obs = [s[0] for s in steps]
        rew_buf.append(torch.tensor([s[1] for s in steps], dtype=torch.float32))
    return torch.stack(obs_buf), torch.stack(rew_buf)


@pytest.mark.parametrize("groups", [None, "halves", "interleaved"])
def test_pipelined_episode_equals_stepping_in_process(groups):
    """episode() with the policy answering group by group while workers step the other group
    gives the same observations, actions and rewards as plain in-process stepping."""
    env = make(num_envs=6, workers=2)
    try:
        goals = torch.linspace(-1, 1, 6)
        env.set_tasks({"goal": goals.view(6, 1)})
        idx = {None: None, "halves": [torch.arange(0, 3), torch.arange(3, 6)],
               "interleaved": [torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5])]}[groups]
        seen = []

        def act(obs_g, g):
            seen.append(g)
            return _policy(obs_g, g)
        ep = env.episode(env.reset(), act, idx)
        want_obs, want_rew = _episode_in_process(goals)
        assert torch.allclose(ep["obs"], want_obs, atol=1e-5)
        assert torch.allclose(ep["rewards"], want_rew, atol=1e-5)
        assert torch.allclose(ep["actions"], _policy(want_obs.view(-1, 2), 0).view(3, 6, 1), atol=1e-5)
        assert seen == ([0] * 3 if idx is None else [0, 1] * 3)
        obs = env.reset()  # usable again after the episode
        assert torch.allclose(env.step(torch.zeros(6, 1))[0], obs)
    finally:
        env.close()


def test_pipelined_episode_reports_a_worker_error():
    env = make("raise", num_envs=4)
    env.set_tasks({"goal": torch.zeros(4, 1)})
    with pytest.raises(WorkerError, match="simulator exploded"):
        env.episode(env.reset(), _policy, [torch.tensor([0, 2]), torch.tensor([1, 3])])


def test_killed_worker_raises_clear_error_quickly():
    env = make()
    try:
        env.set_tasks({"goal": torch.zeros(5, 1)})
        env.reset()
        os.kill(env.pids[1], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match="worker 1 .* died"):
            for _ in range(3):
                env.step(torch.zeros(5, 1))
        assert time.monotonic() - t0 < 10
    finally:
        env.close()
    assert not any(p.is_alive() for p in env._procs)


def test_hung_worker_times_out():
    env = make("hang", timeout=2.0)
    env.set_tasks({"goal": torch.zeros(5, 1)})
    env.reset()
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="did not answer step within 2 s"):
        env.step(torch.zeros(5, 1))
    assert time.monotonic() - t0 < 10
    assert not any(p.is_alive() for p in env._procs)


def test_worker_exception_is_reported_with_its_message():
    env = make("raise")
    env.set_tasks({"goal": torch.zeros(5, 1)})
    env.reset()
    with pytest.raises(WorkerError, match="simulator exploded"):
        env.step(torch.zeros(5, 1))
    with pytest.raises(WorkerError, match="closed"):
        env.reset()
