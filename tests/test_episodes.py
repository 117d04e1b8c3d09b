import torch

from metarl.rl.episodes import discounted_returns, gae, per_task_scale


def test_discounted_returns_hand_computed():
    r = torch.tensor([[1.0], [2.0], [3.0]])
    d = torch.zeros(3, 1)
    out = discounted_returns(r, d, 0.5)
    assert torch.allclose(out[:, 0], torch.tensor([1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]))


def test_discounted_returns_stop_at_done_and_bootstrap():
    r = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    d = torch.tensor([[0, 0], [1, 0], [0, 0]], dtype=torch.bool)
    out = discounted_returns(r, d, 0.9, bootstrap=torch.tensor([10.0, 0.0]))
    # env 0: episode ends after t=1; the last step bootstraps 10
    assert torch.allclose(out[:, 0], torch.tensor([1 + 0.9, 1.0, 1 + 0.9 * 10]))
    assert torch.allclose(out[:, 1], torch.tensor([1 + 0.9 + 0.81, 1 + 0.9, 1.0]))


def test_gae_hand_computed():
    r = torch.tensor([[1.0], [0.0], [2.0]])
    v = torch.tensor([[0.5], [1.0], [1.5]])
    d = torch.zeros(3, 1)
    g, lam = 0.9, 0.8
    adv, ret = gae(r, v, d, g, lam, last_value=torch.tensor([2.0]))
    d2 = 2.0 + g * 2.0 - 1.5
    d1 = 0.0 + g * 1.5 - 1.0
    d0 = 1.0 + g * 1.0 - 0.5
    a2 = d2
    a1 = d1 + g * lam * a2
    a0 = d0 + g * lam * a1
    assert torch.allclose(adv[:, 0], torch.tensor([a0, a1, a2]))
    assert torch.allclose(ret, adv + v)


def test_gae_lambda_one_equals_returns_minus_values():
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(7, 3, generator=gen)
    v = torch.randn(7, 3, generator=gen)
    d = torch.zeros(7, 3, dtype=torch.bool)
    d[3, 1] = True
    adv, _ = gae(r, v, d, 0.95, 1.0)
    assert torch.allclose(adv, discounted_returns(r, d, 0.95) - v, atol=1e-5)


def test_gae_does_not_cross_done():
    r = torch.ones(4, 1)
    v = torch.zeros(4, 1)
    d = torch.tensor([[0], [1], [0], [0]], dtype=torch.bool)
    adv, _ = gae(r, v, d, 1.0, 1.0)
    assert adv[:, 0].tolist() == [2.0, 1.0, 2.0, 1.0]


def test_per_task_scale_is_blind_to_each_tasks_reward_scale():
    """Multiplying one task's rewards and baseline by c > 0 leaves its scaled advantages as they
    were, and every task's advantages come out with unit std and their signs."""
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g)
    dones = torch.zeros(50, 3)
    adv = per_task_scale(gae(r, v, dones, 0.99, 0.95)[0])
    c = torch.tensor([1.0, 40.0, 0.01])
    adv_c = per_task_scale(gae(r * c, v * c, dones, 0.99, 0.95)[0])
    assert torch.allclose(adv, adv_c, atol=1e-5)
    assert torch.allclose(adv.std(0), torch.ones(3), atol=1e-5)
    raw = gae(r, v, dones, 0.99, 0.95)[0]
    assert torch.equal(adv.sign(), raw.sign())
