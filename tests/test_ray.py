"""env.backend = "ray": simulation workers as Ray actors on a 2-node local cluster (CPU only)
sample exactly what worker processes sample, and a dead actor is one error naming it."""
import functools
import subprocess
import sys
import threading
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from metarl.sim.parallel import ParallelEnv, WorkerError  # noqa: E402

pytestmark = pytest.mark.slow  # a Ray cluster takes seconds to start

OBS = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


class Walker:
    """obs = [position, goal]; a step adds the action; reward = -|pos - goal|; `delay` s a step."""

    def __init__(self, delay=0.0):
        self.delay, self.goal = delay, 0.0

    def set_task(self, task):
        self.goal = task["goal"][0]

    def reset(self, seed):
        self.pos = float(np.random.default_rng(seed).uniform(-1, 1))
        return np.array([self.pos, self.goal])

    def step(self, action):
        time.sleep(self.delay)
        self.pos += float(action[0])
        return np.array([self.pos, self.goal]), -abs(self.pos - self.goal), {"success": float(abs(self.pos) < 0.1)}


class Recall:
    """A RowPolicy with a memory (like RL²'s GRU): pre-drawn noise plus a tenth of the last reward."""

    def __init__(self, noise):
        self.noise = noise

    def rows(self, lo, hi):
        return Recall(self.noise[:, lo:hi].clone())

    def act(self, obs, t):
        last = getattr(self, "last", torch.zeros(obs.shape[0]))
        return 0.5 * (obs[:, 1:2] - obs[:, :1]) + self.noise[t] + 0.1 * last.unsqueeze(1)

    def observe(self, reward, t):
        self.last = reward.clone()

    def to_env(self, a):
        return a


def walker(delay=0.0):
    return Walker(delay)


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this test file


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def _make(backend, workers, delay=0.0, timeout=30.0, cost=False, max_restarts=3):
    return ParallelEnv(functools.partial(walker, delay), 7, 3, OBS, ACT, generator=torch.Generator().manual_seed(0),
                       workers=workers, timeout=timeout, backend=backend, info_keys=("success",),
                       step_cost=(lambda row: 1.0 + 3 * (row["goal"][0] > 0)) if cost else None,
                       max_restarts=max_restarts)


def _sample(env) -> list[torch.Tensor]:
    """Tasks (moving the blocks where step costs differ), plain steps, then a 2-episode run_policy."""
    goals = torch.linspace(-1, 1, 7).view(7, 1)
    env.set_tasks({"goal": goals})
    out = [env.reset()]
    for t in range(4):
        obs, r, d = env.step(torch.full((7, 1), 0.3 * (t - 1)))
        out += [obs, r, d, env.info["success"]]
    ep = env.run_policy(Recall(0.3 * torch.randn(6, 7, 1, generator=torch.Generator().manual_seed(1))), episodes=2)
    return out + [ep.obs, ep.actions, ep.rewards, ep.dones, ep.info["success"]]


def test_ray_actors_sample_what_worker_processes_sample(cluster):
    """Same seeds, same samples: Ray with 1 actor and with 2 (one per node) equal one worker
    process, with even blocks and with blocks moved to balance step costs (test_parallel.py
    checks 1, 2 and 3 worker processes against stepping in this process)."""
    for cost, backends in ((False, (("ray", 1), ("ray", 2))), (True, (("ray", 2),))):
        runs = {}
        for backend, workers in (("local", 1), *backends):
            env = _make(backend, workers, cost=cost)
            try:
                runs[backend, workers] = _sample(env)
            finally:
                env.close()
        want = runs["local", 1]
        for key, got in runs.items():
            assert all(torch.equal(a, b) for a, b in zip(got, want)), (key, cost)


def _steps_and_episode(env, kill=None):
    """Tasks, a reset, 2 steps, [kill an actor], 2 more steps, then a 40-step episode during which
    [an actor is killed]: everything sampled."""
    env.set_tasks({"goal": torch.linspace(-1, 1, 7).view(7, 1)})
    out = [env.reset()]
    for t in range(4):
        if t == 2 and kill is not None:
            ray.kill(env.pool.actors[kill])
        out += list(env.step(torch.full((7, 1), 0.2 * t)))[:2]
    if kill is not None:  # once the episode has begun stepping in that actor
        def kill_mid_episode(actor=env.pool.actors[kill]):
            while ray.get(actor.steps.options(concurrency_group="probe").remote()) == 0:
                time.sleep(0.01)
            ray.kill(actor)
        threading.Thread(target=kill_mid_episode, daemon=True).start()
    ep = env.run_policy(Recall(0.1 * torch.randn(40, 7, 1, generator=torch.Generator().manual_seed(3))), episodes=1)
    return out + [ep.obs, ep.actions, ep.rewards]


def test_an_actor_killed_mid_trial_is_replaced_with_the_same_samples(cluster):
    """A dead actor (between steps; mid-episode) is replaced and brought back to its state by
    replaying its tasks, reset and steps: the samples equal a run without the faults."""
    runs = []
    for kill in (None, 1):
        env = ParallelEnv(functools.partial(walker, 0.005), 7, 40, OBS, ACT,
                          generator=torch.Generator().manual_seed(0), workers=2, backend="ray", info_keys=("success",))
        try:
            runs.append(_steps_and_episode(env, kill))
            assert env.pool.restarts == (0 if kill is None else 2)
        finally:
            env.close()
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_past_max_restarts_a_killed_actor_is_one_error_naming_it(cluster):
    env = _make("ray", 2, delay=0.01, timeout=20.0, max_restarts=0)
    try:
        env.set_tasks({"goal": torch.zeros(7, 1)})
        threading.Timer(0.5, lambda: ray.kill(env.pool.actors[1])).start()
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match="worker 1") as err:
            env.run_policy(Recall(torch.zeros(300, 7, 1)), episodes=100)
        assert time.monotonic() - t0 < 20.0 and len(str(err.value).splitlines()) == 1
        assert "max_restarts=0" in str(err.value)
        with pytest.raises(WorkerError, match="closed"):
            env.reset()
    finally:
        env.close()


def test_a_bad_ray_address_is_one_line():
    """Run in a fresh process (this one is connected to the test cluster)."""
    p = subprocess.run([sys.executable, "-c", "from metarl.app.cli import main; raise SystemExit(main(["
                        "'train', 'rl2', '--env', 'halfcheetah-vel', '--set', 'env.backend=ray', "
                        "'--ray-address', '127.0.0.1:9', '--run-dir', '/nonexistent/x', '--quiet']))"],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "127.0.0.1:9" in lines[0], p.stderr[-2000:]


@pytest.mark.parametrize("env,extra", [("halfcheetah-vel", ["--set", "agent.policy_in_workers=false"]),  # a round
                                       ("ml1", [])])  # trip per step with the policy here; whole trials in actors
def test_a_tiny_run_trains_the_same_on_ray_as_on_worker_processes(cluster, cli, tmp_path, env, extra):
    common = ["--set", "env.horizon=10", "--set", "env.episodes=2", "--set", "env.workers=2",
              "--set", "agent.num_envs=4", "--set", "agent.hidden_size=8", "--set", "agent.total_steps=160",
              "--quiet", "--device", "cpu", *extra]
    metrics = {}
    for backend in ("local", "ray"):
        code, _, err = cli("train", "rl2", "--env", env, *common, "--set", f"env.backend={backend}",
                           "--run-dir", tmp_path / backend)
        assert code == 0, err
        metrics[backend] = (tmp_path / backend / "metrics.jsonl").read_text()
    assert metrics["ray"] == metrics["local"] and metrics["local"].count("\n") == 2


def test_the_ray_bench_alternates_backends_in_one_run(cluster):
    from metarl.app.bench import bench_metaworld_ray
    f = bench_metaworld_ray(torch.device("cpu"), benchmark="ML1", envs_per_worker=2, steps=10, workers=2,
                            rounds=3)["figures"]
    assert f["envs"] == 4 and f["rounds"] == 3 and f["local_steps_per_s"] > 0 and f["ray_steps_per_s"] > 0
    assert f["ray_vs_local_spread"][0] <= f["ray_vs_local"] <= f["ray_vs_local_spread"][1]
