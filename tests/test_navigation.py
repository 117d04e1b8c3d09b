import math

import pytest
import torch

from metarl.config import build
from metarl.envs.navigation import GoalDistribution, NavigationConfig, NavigationEnv
from metarl.rl.distributions import Categorical, DiagGaussian, GaussianHead, make_head


def test_goals_are_uniform_in_the_square():
    g = GoalDistribution(-0.5, 0.5).sample(20000, torch.Generator().manual_seed(0))["goal"]
    assert g.shape == (20000, 2) and g.min() >= -0.5 and g.max() <= 0.5
    assert g.mean(0).abs().max() < 0.01 and abs(g.var().item() - 1 / 12) < 0.003


def test_navigation_dynamics_clip_reward_and_absorb_at_goal():
    cfg = build(NavigationConfig, {"horizon": 5}, "env")
    env = NavigationEnv(cfg, 2, "cpu")
    env.set_tasks({"goal": torch.tensor([[0.3, 0.0], [0.1, 0.1]])})
    obs = env.reset()
    assert torch.equal(obs, torch.zeros(2, 2))
    a = torch.tensor([[1.0, 0.0], [0.1, 0.1]])  # first action is clipped to 0.1
    obs, r, d = env.step(a)
    assert torch.allclose(obs, torch.tensor([[0.1, 0.0], [0.1, 0.1]]))
    assert torch.allclose(r, torch.tensor([-0.2, 0.0]), atol=1e-6) and not d.any()
    # the second sub-env reached its goal: it stays there and earns 0 from now on
    obs, r, d = env.step(torch.tensor([[0.1, 0.0], [0.1, 0.1]]))
    assert torch.allclose(obs[1], torch.tensor([0.1, 0.1])) and r[1] == 0
    assert torch.isclose(r[0], torch.tensor(-0.1))
    for _ in range(3):
        obs, r, d = env.step(torch.zeros(2, 2))
    assert d.all() and torch.equal(obs, torch.zeros(2, 2))  # auto-reset after the horizon


def test_gaussian_distribution_matches_torch():
    mean, log_std = torch.randn(4, 3), torch.randn(3) * 0.3
    ours, ref = DiagGaussian(mean, log_std), torch.distributions.Normal(mean, log_std.exp())
    a = torch.randn(4, 3)
    assert torch.allclose(ours.log_prob(a), ref.log_prob(a).sum(-1), atol=1e-5)
    assert torch.allclose(ours.entropy(), ref.entropy().sum(-1), atol=1e-5)
    other = DiagGaussian(mean + 0.5, log_std - 0.2)
    ref2 = torch.distributions.Normal(mean + 0.5, (log_std - 0.2).exp())
    assert torch.allclose(ours.kl(other), torch.distributions.kl_divergence(ref, ref2).sum(-1), atol=1e-5)
    s = ours.sample(torch.Generator().manual_seed(0))
    assert s.shape == (4, 3)


def test_categorical_distribution_matches_torch():
    logits = torch.randn(5, 4)
    ours, ref = Categorical(logits), torch.distributions.Categorical(logits=logits)
    a = torch.tensor([0, 1, 2, 3, 1])
    assert torch.allclose(ours.log_prob(a), ref.log_prob(a))
    assert torch.allclose(ours.entropy(), ref.entropy())
    other = torch.randn(5, 4)
    assert torch.allclose(ours.kl(Categorical(other)),
                          torch.distributions.kl_divergence(ref, torch.distributions.Categorical(logits=other)),
                          atol=1e-6)


def test_make_head_picks_by_action_space():
    import gymnasium as gym
    import numpy as np
    h = make_head(8, gym.spaces.Box(-1, 1, (2,), np.float32), init_std=0.5)
    assert isinstance(h, GaussianHead)
    out = h(torch.zeros(3, 8))
    assert out.shape == (3, 4) and torch.allclose(out[:, 2:], torch.full((3, 2), math.log(0.5)))
    assert make_head(8, gym.spaces.Discrete(3))(torch.zeros(3, 8)).shape == (3, 3)
    with pytest.raises(ValueError):
        make_head(8, gym.spaces.MultiBinary(3))


def test_rl2_trains_on_continuous_navigation(cli, tmp_path):
    """RL² runs unchanged on a continuous-action env; then eval compares it with random."""
    rd = tmp_path / "nav"
    code, _, err = cli("train", "rl2", "--env", "navigation-2d", "--set", "env.horizon=10", "--set", "env.episodes=2",
                       "--set", "agent.num_envs=8", "--set", "agent.hidden_size=8", "--set", "agent.total_steps=480",
                       "--quiet", "--device", "cpu", "--run-dir", rd)
    assert code == 0, err
    code, out, err = cli("eval", rd, "--tasks", "20")
    assert code == 0, err
    assert "rl2" in out and "random" in out
