import json

import gymnasium as gym
import pytest
import torch
from gymnasium.utils.env_checker import check_env

pytest.importorskip("mujoco")

import metarl.envs  # noqa: E402,F401  registers the gymnasium ids
from metarl.envs.gym_adapter import MUJOCO_GYM_IDS  # noqa: E402
from metarl.envs.mujoco_tasks import DirectionDistribution, GoalMujoco, VelocityDistribution  # noqa: E402


def test_task_distributions():
    g = torch.Generator().manual_seed(0)
    v = VelocityDistribution().sample(10000, g)["goal"]
    assert v.min() >= 0 and v.max() <= 2 and abs(v.mean().item() - 1) < 0.03
    d = DirectionDistribution().sample(10000, g)["goal"]
    assert set(d.unique().tolist()) == {-1.0, 1.0} and abs(d.mean().item()) < 0.05


def test_rewards_follow_the_task():
    """The same motion earns opposite rewards for opposite directions, and the velocity task
    rewards being near the target velocity."""
    import numpy as np
    fwd, bwd = GoalMujoco("halfcheetah", "dir"), GoalMujoco("halfcheetah", "dir")
    fwd.set_task({"goal": [1.0]})
    bwd.set_task({"goal": [-1.0]})
    fwd.reset(0), bwd.reset(0)
    a = np.full(6, 0.3)
    (_, rf), (_, rb) = fwd.step(a), bwd.step(a)
    ctrl = 0.05 * float((a ** 2).sum())
    assert rf + ctrl == pytest.approx(-(rb + ctrl), abs=1e-9)
    vel = GoalMujoco("halfcheetah", "vel")
    vel.set_task({"goal": [1.5]})
    vel.reset(0)
    obs, r = vel.step(np.zeros(6))
    assert r <= 0


@pytest.mark.parametrize("gym_id", sorted(MUJOCO_GYM_IDS))
def test_gymnasium_and_sb3_env_checkers_mujoco(gym_id, sb3_checker):
    env = gym.make(gym_id, rl2_inputs=gym_id.endswith("Vel-v0"))
    try:
        check_env(env.unwrapped, skip_render_check=True)
        sb3_checker(env.unwrapped)
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize("agent", ["maml-trpo", "rl2"])
def test_smoke_train_on_halfcheetah(cli, tmp_path, agent):
    rd = tmp_path / agent
    common = ["--set", "env.horizon=10", "--set", "env.workers=2", "--quiet", "--device", "cpu", "--run-dir", rd]
    if agent == "maml-trpo":
        sets = ["--set", "agent.iterations=2", "--set", "agent.meta_batch=2", "--set", "agent.rollouts=2",
                "--set", "agent.hidden_size=8"]
    else:
        sets = ["--set", "agent.num_envs=4", "--set", "agent.hidden_size=8", "--set", "agent.total_steps=160"]
    code, _, err = cli("train", agent, "--env", "halfcheetah-vel", *sets, *common)
    assert code == 0, err
    metrics = [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(torch.isfinite(torch.tensor(list(
        v for v in m.values() if isinstance(v, float)))).all() for m in metrics)
    code, out, err = cli("eval", rd, "--tasks", "2")
    assert code == 0, err
    assert agent in out


def test_bad_mujoco_option_is_one_line(cli, tmp_path):
    code, _, err = cli("train", "maml-trpo", "--env", "ant-dir", "--set", "env.workers=-1", "--quiet",
                       "--run-dir", tmp_path / "x")
    assert code == 2 and "env.workers" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_mujoco_bench_reports_stable_keys(cli):
    code, out, err = cli("bench", "mujoco", "--json")
    assert code == 0, err
    f = json.loads(out)["figures"]
    assert {"single_env_steps_per_s", "parallel_steps_per_s", "cores", "efficiency", "worker_busy_fraction",
            "worker_us_per_env_step", "single_env_us_per_step"} <= set(f)
    assert 0.0 < f["worker_busy_fraction"] <= 1.0 and f["worker_us_per_env_step"] > 0
    assert f["main_cpu_us_per_env_step"] > 0 and 0.0 <= f["worker_wait_fraction"] < 1.0
    # the phases alternate for 15 rounds: the figure is the median round, inside its spread
    assert f["rounds"] == len(f["efficiency_rounds"]) == 15
    assert f["efficiency"] == pytest.approx(sorted(f["efficiency_rounds"])[7])
    assert f["efficiency_spread"][0] <= f["efficiency"] <= f["efficiency_spread"][1]
