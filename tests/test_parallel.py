import os
import signal
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

from metarl.errors import UserError
from metarl.sim.parallel import ParallelEnv, WorkerError

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


def make(mode="ok", num_envs=5, workers=2, timeout=30.0, **kw):
    import functools
    return ParallelEnv(functools.partial(toy, mode), num_envs, 3, OBS, ACT, generator=torch.Generator().manual_seed(0),
                       workers=workers, timeout=timeout, **kw)


@pytest.mark.parametrize("backend", ["local", "inline"])
def test_parallel_env_matches_in_process_stepping(backend):
    env = make(backend=backend)
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
    """worker_stats(): per worker, the env steps since the last call, its sub-envs, and the
    seconds spent stepping them (here each env step sleeps 5 ms); a call resets the counters."""
    env = make("slow", num_envs=5, workers=2)
    try:
        env.set_tasks({"goal": torch.zeros(5, 1)})
        env.reset()
        env.worker_stats()
        for _ in range(2):
            env.step(torch.zeros(5, 1))
        stats = env.worker_stats()
        assert [s["env_steps"] for s in stats] == [2 * s["envs"] for s in stats]
        assert sorted(s["envs"] for s in stats) == [2, 3]
        for s in stats:
            assert s["step_s"] >= 2 * s["envs"] * 0.005 * 0.9
            assert 0.0 <= s["step_cpu_s"] < s["step_s"]  # sleeping is not CPU time
        assert all(s["env_steps"] == 0 and s["step_s"] == 0.0 for s in env.worker_stats())
    finally:
        env.close()


class HalfwayRows:
    """A RowPolicy: step halfway towards the goal plus pre-drawn noise [H, b, 1]; the env gets
    twice the action (to_env), clipped to the action space."""

    def __init__(self, noise):
        self.noise = noise

    def rows(self, lo, hi):
        return HalfwayRows(self.noise[:, lo:hi].clone())

    def act(self, obs, t):
        return 0.5 * (obs[:, 1:2] - obs[:, 0:1]) + self.noise[t]

    def to_env(self, a):
        return 2 * a


class RecallRows(HalfwayRows):
    """A RowPolicy with a memory, like RL²'s: each action also adds a tenth of the reward it
    observed last (observe(reward [b], t)), kept across episodes."""

    def rows(self, lo, hi):
        return RecallRows(self.noise[:, lo:hi].clone())

    def act(self, obs, t):
        last = getattr(self, "last", torch.zeros(obs.shape[0]))
        return super().act(obs, t) + 0.1 * last.unsqueeze(1)

    def observe(self, reward, t):
        self.last = reward.clone()


def _episode_in_process(goals, policy, episodes=1):
    """The same run stepped with Toy envs in this process, each episode after a reset with seeds
    drawn as ParallelEnv draws them: obs [E * H, B, 2], actions [E * H, B, 1], rewards [E * H, B]."""
    gen = torch.Generator().manual_seed(0)
    envs = [Toy() for _ in goals]
    for e, g in zip(envs, goals.tolist()):
        e.set_task({"goal": [g]})
    obs_buf, act_buf, rew_buf = [], [], []
    for ep in range(episodes):
        seeds = torch.randint(2**31 - 1, (len(goals),), generator=gen).tolist()
        obs = [e.reset(sd) for e, sd in zip(envs, seeds)]
        for t in range(ep * 3, ep * 3 + 3):
            o = torch.tensor(np.array(obs), dtype=torch.float32)
            a = policy.act(o, t)
            obs_buf.append(o)
            act_buf.append(a)
            steps = [e.step(x.numpy()) for x, e in zip(policy.to_env(a).clamp(-1, 1), envs)]
            obs = [s[0] for s in steps]
            rew_buf.append(torch.tensor([s[1] for s in steps], dtype=torch.float32))
            if hasattr(policy, "observe"):
                policy.observe(rew_buf[-1], t)
    return torch.stack(obs_buf), torch.stack(act_buf), torch.stack(rew_buf)


@pytest.mark.parametrize("workers,chunk,backend", [(1, 0, "local"), (2, 0, "local"), (3, 0, "local"),
                                                   (2, 2, "local"), (3, 2, "local"), (2, 7, "local"),
                                                   (1, 0, "inline"), (3, 2, "inline")])
def test_run_policy_in_workers_equals_stepping_in_process(workers, chunk, backend):
    """run_policy(): each worker acts for its own block of sub-envs and steps the whole episode,
    chunk by chunk; observations, actions and rewards equal plain in-process stepping, however
    the sub-envs are split and chunked, in worker processes or inline, and the env is usable
    again afterwards."""
    env = make(num_envs=7, workers=workers, chunk=chunk, backend=backend)
    try:
        goals = torch.linspace(-1, 1, 7)
        env.set_tasks({"goal": goals.view(7, 1)})
        policy = HalfwayRows(0.3 * torch.randn(3, 7, 1, generator=torch.Generator().manual_seed(1)))
        ep = env.run_policy(policy)
        want_obs, want_act, want_rew = _episode_in_process(goals, policy)
        assert torch.allclose(ep.obs, want_obs, atol=1e-5)
        assert torch.allclose(ep.actions, want_act, atol=1e-6)
        assert torch.allclose(ep.rewards, want_rew, atol=1e-5)
        stats = env.worker_stats()
        assert [s["env_steps"] for s in stats] == [3 * s["envs"] for s in stats] and sum(s["envs"] for s in stats) == 7
        obs = env.reset()  # usable again after the episode
        assert torch.allclose(env.step(torch.zeros(7, 1))[0], obs)
    finally:
        env.close()


@pytest.mark.parametrize("workers,chunk,backend", [(1, 0, "local"), (2, 0, "local"), (3, 2, "local"),
                                                   (1, 2, "inline")])
def test_run_policy_of_several_episodes_with_a_remembering_policy(workers, chunk, backend):
    """run_policy(policy, episodes=2): each worker resets its sub-envs before each episode (seeds
    drawn as reset() draws them) and tells the policy every reward (observe); the run equals
    in-process stepping however the sub-envs are split, and a run of another length after it
    (new buffers) is right too."""
    env = make(num_envs=7, workers=workers, chunk=chunk, backend=backend)
    try:
        goals = torch.linspace(-1, 1, 7)
        env.set_tasks({"goal": goals.view(7, 1)})
        noise = 0.3 * torch.randn(6, 7, 1, generator=torch.Generator().manual_seed(1))
        ep = env.run_policy(RecallRows(noise), episodes=2)
        want_obs, want_act, want_rew = _episode_in_process(goals, RecallRows(noise), episodes=2)
        assert ep.obs.shape == (6, 7, 2)
        assert torch.allclose(ep.obs, want_obs, atol=1e-5)
        assert torch.allclose(ep.actions, want_act, atol=1e-5)
        assert torch.allclose(ep.rewards, want_rew, atol=1e-5)
        env.gen.manual_seed(0)
        ep = env.run_policy(HalfwayRows(noise[:3]))
        want_obs, want_act, _ = _episode_in_process(goals, HalfwayRows(noise[:3]))
        assert torch.allclose(ep.obs, want_obs, atol=1e-5) and torch.allclose(ep.actions, want_act, atol=1e-6)
    finally:
        env.close()


def test_in_process_run_policy_of_several_episodes_matches_the_workers():
    """BatchedEnv.run_policy (what pure-tensor envs use) runs the same episodes, resets and
    observe calls as the workers, per call from the same generator state: here stepping a
    one-worker ParallelEnv through step()."""
    from metarl.rl.batched_env import BatchedEnv
    env = make(num_envs=4, workers=1)
    try:
        env.set_tasks({"goal": torch.linspace(-1, 1, 4).view(4, 1)})
        noise = 0.3 * torch.randn(6, 4, 1, generator=torch.Generator().manual_seed(2))
        env.gen.manual_seed(5)
        want = env.run_policy(RecallRows(noise), episodes=2)
        env.gen.manual_seed(5)
        got = BatchedEnv.run_policy(env, RecallRows(noise), episodes=2)
        for k in ("obs", "actions", "rewards"):
            assert torch.allclose(getattr(got, k), getattr(want, k), atol=1e-5), k
        assert torch.equal(got.dones, want.dones) and got.dones[2::3].all() and got.dones.sum() == 2 * 4
    finally:
        env.close()


def test_inline_backend_starts_no_process_and_raises_where_the_simulator_raises():
    import multiprocessing
    before = set(multiprocessing.active_children())
    env = make(num_envs=3, workers=4, backend="inline")
    try:
        assert env.pids == [os.getpid()] and set(multiprocessing.active_children()) == before
        env.set_tasks({"goal": torch.zeros(3, 1)})
        env.reset()
        env.step(torch.zeros(3, 1))
    finally:
        env.close()
    with pytest.raises(WorkerError, match="closed"):
        env.reset()
    bad = make("raise", num_envs=2, backend="inline")
    bad.set_tasks({"goal": torch.zeros(2, 1)})
    bad.reset()
    with pytest.raises(RuntimeError, match="simulator exploded"):
        bad.step(torch.zeros(2, 1))
    with pytest.raises(UserError, match="unknown simulation backend 'ray2'"):
        make(backend="ray2")


def test_run_policy_reports_a_worker_error():
    env = make("raise", num_envs=4)
    env.set_tasks({"goal": torch.zeros(4, 1)})
    with pytest.raises(WorkerError, match="simulator exploded"):
        env.run_policy(HalfwayRows(torch.zeros(3, 4, 1)))


@pytest.mark.slow
def test_long_episode_is_not_a_hang_but_a_stalled_one_is():
    """run_policy waits as long as the workers keep stepping (each step here takes 5 ms, the
    episode longer than the 0.3 s timeout); a worker that stops stepping times out."""
    import functools
    env = ParallelEnv(functools.partial(toy, "slow"), 4, 40, OBS, ACT, workers=2, timeout=0.3)
    try:
        env.set_tasks({"goal": torch.zeros(4, 1)})
        ep = env.run_policy(HalfwayRows(torch.zeros(40, 4, 1)))
        assert ep.rewards.shape == (40, 4)
    finally:
        env.close()
    env = make("hang", timeout=1.0)
    env.set_tasks({"goal": torch.zeros(5, 1)})
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="did not answer episode within 1 s"):
        env.run_policy(HalfwayRows(torch.zeros(3, 5, 1)))
    assert time.monotonic() - t0 < 10


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
    assert not any(p.is_alive() for p in env.pool.procs)


def test_hung_worker_times_out():
    env = make("hang", timeout=2.0)
    env.set_tasks({"goal": torch.zeros(5, 1)})
    env.reset()
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="did not answer step within 2 s"):
        env.step(torch.zeros(5, 1))
    assert time.monotonic() - t0 < 10
    assert not any(p.is_alive() for p in env.pool.procs)


def test_worker_exception_is_reported_with_its_message():
    env = make("raise")
    env.set_tasks({"goal": torch.zeros(5, 1)})
    env.reset()
    with pytest.raises(WorkerError, match="simulator exploded"):
        env.step(torch.zeros(5, 1))
    with pytest.raises(WorkerError, match="closed"):
        env.reset()


def test_balanced_blocks_minimise_the_slowest_worker():
    """balanced_blocks: contiguous non-empty blocks, one per worker, whose largest summed cost
    is the smallest possible (checked against every split)."""
    import itertools

    from metarl.sim.parallel import balanced_blocks
    rng = np.random.default_rng(0)
    load = lambda cost, bounds: max(sum(cost[a:b]) for a, b in zip(bounds, bounds[1:]))  # noqa: E731
    for _ in range(50):
        B = int(rng.integers(3, 10))
        cost = rng.exponential(1.0, B).tolist()
        for W in (2, 3):
            got = balanced_blocks(cost, W)
            assert len(got) == W + 1 and got[0] == 0 and got[-1] == B and all(a < b for a, b in zip(got, got[1:]))
            best = min(load(cost, [0, *cut, B]) for cut in itertools.combinations(range(1, B), W - 1))
            assert load(cost, got) <= best * (1 + 1e-9)


def test_step_cost_balances_the_blocks_and_samples_stay_the_same():
    """With step_cost, set_tasks gives every worker the same summed cost: slow tasks (cost 3)
    in the first four sub-envs pull the first block's end back (3 + 3 + 3 against 3 + 1 * 4); sub-envs that change worker
    keep their tasks, and episodes equal those of an env with even blocks."""
    import functools
    goals = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0]).view(8, 1)
    noise = 0.3 * torch.randn(5, 8, 1, generator=torch.Generator().manual_seed(2))
    cost = lambda task: 3.0 if task["goal"][0] > 0 else 1.0  # noqa: E731
    eps = {}
    for balanced in (True, False):
        env = ParallelEnv(functools.partial(toy), 8, 5, OBS, ACT, generator=torch.Generator().manual_seed(0),
                          workers=2, step_cost=cost if balanced else None)
        try:
            env.set_tasks({"goal": torch.ones(8, 1)})  # equal costs: even blocks
            assert env._blocks() == [(0, 4), (4, 8)]
            env.set_tasks({"goal": goals})
            assert env._blocks() == ([(0, 3), (3, 8)] if balanced else [(0, 4), (4, 8)])
            assert sorted(s["envs"] for s in env.worker_stats()) == sorted(hi - lo for lo, hi in env._blocks())
            eps[balanced] = [env.run_policy(HalfwayRows(noise)) for _ in range(2)]
            obs = env.reset()  # plain stepping works on the new blocks
            assert torch.allclose(env.step(torch.zeros(8, 1))[0], obs)
        finally:
            env.close()
    for a, b in zip(eps[True], eps[False]):
        for k in ("obs", "actions", "rewards"):
            assert torch.equal(getattr(a, k), getattr(b, k))


def test_every_simulated_env_takes_the_one_set_of_simulation_options():
    """Env configs get workers / backend / ray_address / max_restarts / timeout only by inheriting
    SimulationOptions (one definition: resume, compare and gym.make's inline probe key on it)."""
    import dataclasses

    from metarl.registry import ENVS, load
    from metarl.sim.options import SIMULATION_FIELDS, SimulationOptions
    simulated = []
    for name, e in ENVS.items():
        cls = load(e.target).config_cls
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if issubclass(cls, SimulationOptions):  # inherited as they are, not redeclared
            simulated.append(name)
            shared = {f.name: f for f in dataclasses.fields(SimulationOptions)}
            assert all(fields[f] is shared[f] for f in SIMULATION_FIELDS), name
        else:
            assert not fields.keys() & set(SIMULATION_FIELDS), name
    assert {"halfcheetah-vel", "ml10"} <= set(simulated)
