import gymnasium as gym
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import metarl.envs  # noqa: F401  registers the gymnasium ids
from metarl.config import build
from metarl.envs.bandits import BanditConfig, BanditDistribution, BanditEnv
from metarl.envs.gym_adapter import GYM_IDS
from metarl.envs.tabular_mdp import TabularMDPConfig, TabularMDPDistribution, TabularMDPEnv
from metarl.tasks import split_generator


def test_bandit_means_are_uniform():
    m = BanditDistribution(5).sample(20000, torch.Generator().manual_seed(0))["means"]
    assert m.shape == (20000, 5)
    assert 0 <= m.min() and m.max() <= 1
    assert abs(m.mean().item() - 0.5) < 0.01
    assert abs(m.var().item() - 1 / 12) < 0.003


@pytest.mark.parametrize("gaussian", [False, True])
def test_bandit_rewards_match_arm_means(gaussian):
    B, k, n = 4000, 3, 50
    env = BanditEnv(k, n, B, "cpu", torch.Generator().manual_seed(1), gaussian=gaussian, sigma=0.5)
    means = torch.tensor([[0.1, 0.5, 0.9]]).repeat(B, 1)
    env.set_tasks({"means": means})
    env.reset()
    total = torch.zeros(k)
    for t in range(n):
        a = torch.full((B,), t % k, dtype=torch.long)
        _, r, done = env.step(a)
        total[t % k] += r.sum()
        if not gaussian:
            assert set(r.unique().tolist()) <= {0.0, 1.0}
        assert bool(done.all()) == (t == n - 1)
    pulls = torch.tensor([len(range(i, n, k)) for i in range(k)]) * B
    assert torch.allclose(total / pulls, torch.tensor([0.1, 0.5, 0.9]), atol=0.02)


def test_mdp_tasks_follow_the_rl2_prior():
    tasks = TabularMDPDistribution(10, 5).sample(4000, torch.Generator().manual_seed(0))
    P, R = tasks["P"], tasks["R"]
    assert P.shape == (4000, 10, 5, 10) and R.shape == (4000, 10, 5)
    assert torch.allclose(P.sum(-1), torch.ones(4000, 10, 5), atol=1e-5)
    # flat Dirichlet(1,...,1) over 10 outcomes: mean 1/10, var (K-1)/(K^2 (K+1)) = 9/1100
    assert abs(P.mean().item() - 0.1) < 1e-4
    assert abs(P.var().item() - 9 / 1100) < 3e-4
    assert abs(R.mean().item() - 1.0) < 0.02 and abs(R.var().item() - 1.0) < 0.03


def test_mdp_transitions_and_rewards_are_sampled_from_the_task():
    B = 20000
    cfg = TabularMDPConfig(n=1, states=3, actions=2, horizon=2)
    env = TabularMDPEnv(cfg, B, "cpu", torch.Generator().manual_seed(3))
    P = torch.zeros(B, 3, 2, 3)
    P[:, 0, 1] = torch.tensor([0.2, 0.3, 0.5])
    P[:, :, 0, 0] = 1.0
    P[:, 1:, 1, 0] = 1.0
    R = torch.zeros(B, 3, 2)
    R[:, 0, 1] = 2.0
    env.set_tasks({"P": P, "R": R})
    obs = env.reset()
    assert torch.equal(obs.argmax(1), torch.zeros(B, dtype=torch.long))  # episodes start in state 0
    obs, r, done = env.step(torch.ones(B, dtype=torch.long))
    assert not done.any()
    freq = torch.bincount(obs.argmax(1), minlength=3).float() / B
    assert torch.allclose(freq, torch.tensor([0.2, 0.3, 0.5]), atol=0.015)
    assert abs(r.mean().item() - 2.0) < 0.03 and abs(r.std().item() - 1.0) < 0.03
    obs, r, done = env.step(torch.zeros(B, dtype=torch.long))
    assert done.all() and torch.equal(obs.argmax(1), torch.zeros(B, dtype=torch.long))  # auto-reset


@pytest.mark.parametrize("rl2", [False, True])
@pytest.mark.parametrize("gym_id", sorted(GYM_IDS))
def test_gymnasium_and_sb3_env_checkers(gym_id, rl2, sb3_checker):
    env = gym.make(gym_id, rl2_inputs=rl2)
    check_env(env.unwrapped, skip_render_check=True)
    sb3_checker(env.unwrapped)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and "task" in info
    steps, terminated = 0, False
    while not terminated:
        obs, r, terminated, truncated, info = env.step(env.action_space.sample())
        steps += 1
    assert steps == env.unwrapped.trial_length


def test_gym_env_reset_seed_is_reproducible_and_task_can_be_fixed():
    env = gym.make("metarl/BernoulliBandit-v0", k=3, n=4)
    _, i1 = env.reset(seed=5)
    _, i2 = env.reset(seed=5)
    assert (i1["task"]["means"] == i2["task"]["means"]).all()
    _, i3 = env.reset(options={"task": {"means": [1.0, 0.0, 0.0]}})
    rewards = [env.step(0)[1] for _ in range(4)]
    assert rewards == [1.0] * 4 and list(i3["task"]["means"]) == [1.0, 0.0, 0.0]


def test_train_and_test_streams_differ_and_are_seeded():
    d = BanditDistribution(4)
    a = d.sample(5, split_generator(0, "train"))["means"]
    b = d.sample(5, split_generator(0, "test"))["means"]
    c = d.sample(5, split_generator(0, "train"))["means"]
    assert torch.equal(a, c) and not torch.equal(a, b)
    assert not torch.equal(a, d.sample(5, split_generator(1, "train"))["means"])


def test_bandit_config_rejects_bad_values():
    from metarl.errors import UserError
    with pytest.raises(UserError, match="env.k must be >= 2"):
        build(BanditConfig, {"k": "1"}, "env")
    with pytest.raises(UserError, match="env.n must be >= 1"):
        build(BanditConfig, {"n": "0"}, "env")
    with pytest.raises(UserError, match="not a valid int"):
        build(BanditConfig, {"k": "five"}, "env")
