"""The functional inner loop against hand-written torch.autograd versions."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from metarl.functional import adapt, adapt_batch, as_loss, loss_batch, meta_sgd_step_sizes, params_of


def _setup(n_tasks=4, k=6):
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.double) * 0.5)
    xs = torch.randn(n_tasks, k, 1, generator=g, dtype=torch.double)
    ys = torch.sin(3 * xs) + torch.randn(n_tasks, 1, 1, generator=g, dtype=torch.double)
    xq = torch.randn(n_tasks, k, 1, generator=g, dtype=torch.double)
    yq = torch.sin(3 * xq)
    return net, xs, ys, xq, yq


def _by_hand(net, x, y, xq, yq, steps, lr, first_order):
    """MAML written with torch.autograd.grad and an explicit forward: the reference."""
    w1, b1, w2, b2 = list(net.parameters())
    ps = [w1, b1, w2, b2]

    def f(ps, x):
        return torch.tanh(x @ ps[0].T + ps[1]) @ ps[2].T + ps[3]
    for _ in range(steps):
        loss = F.mse_loss(f(ps, x), y)
        gs = torch.autograd.grad(loss, ps, create_graph=not first_order)
        ps = [p - lr * g for p, g in zip(ps, gs)]
    outer = F.mse_loss(f(ps, xq), yq)
    return outer, torch.autograd.grad(outer, list(net.parameters()))


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_adapt_matches_hand_written_autograd(steps, first_order):
    net, xs, ys, xq, yq = _setup()
    loss_fn = as_loss(net, F.mse_loss)
    params = params_of(net)
    adapted = adapt(loss_fn, params, (xs[0], ys[0]), steps=steps, lr=0.3, first_order=first_order)
    outer = loss_fn(adapted, (xq[0], yq[0]))
    got = torch.autograd.grad(outer, list(params.values()))
    ref_outer, ref = _by_hand(net, xs[0], ys[0], xq[0], yq[0], steps, 0.3, first_order)
    assert torch.allclose(outer, ref_outer, atol=1e-12)
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, atol=1e-10)


def test_second_order_differs_from_first_order():
    net, xs, ys, xq, yq = _setup()
    loss_fn, params = as_loss(net, F.mse_loss), params_of(net)
    grads = []
    for fo in (False, True):
        out = loss_fn(adapt(loss_fn, params, (xs[0], ys[0]), 2, 0.3, fo), (xq[0], yq[0]))
        grads.append(torch.autograd.grad(out, list(params.values())))
    assert not all(torch.allclose(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("first_order", [False, True])
def test_vmapped_adaptation_equals_per_task_loop(first_order):
    net, xs, ys, xq, yq = _setup()
    loss_fn, params = as_loss(net, F.mse_loss), params_of(net)
    batched = adapt_batch(loss_fn, params, (xs, ys), steps=2, lr=0.2, first_order=first_order)
    outer = loss_batch(loss_fn, batched, (xq, yq)).mean()
    got = torch.autograd.grad(outer, list(params.values()))
    loop = []
    for i in range(xs.shape[0]):
        a = adapt(loss_fn, params, (xs[i], ys[i]), 2, 0.2, first_order)
        for k in params:
            assert torch.allclose(batched[k][i], a[k], atol=1e-12)
        loop.append(loss_fn(a, (xq[i], yq[i])))
    ref = torch.autograd.grad(torch.stack(loop).mean(), list(params.values()))
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, atol=1e-10)


def test_meta_sgd_step_sizes_are_learned_per_parameter():
    net, xs, ys, xq, yq = _setup()
    loss_fn, params = as_loss(net, F.mse_loss), params_of(net)
    lrs = meta_sgd_step_sizes(params, 0.1)
    assert set(lrs.keys()) == {"0/weight", "0/bias", "2/weight", "2/bias"}
    # per-parameter step sizes all equal to 0.1 reproduce plain MAML with lr 0.1
    plain = adapt(loss_fn, params, (xs[0], ys[0]), 1, 0.1)
    meta = adapt(loss_fn, params, (xs[0], ys[0]), 1, lrs)
    for k in params:
        assert torch.allclose(plain[k], meta[k])
    out = loss_batch(loss_fn, adapt_batch(loss_fn, params, (xs, ys), 1, lrs), (xq, yq)).mean()
    out.backward()
    # the step sizes get an elementwise gradient: d outer / d lr = -grad_outer * grad_inner
    g_lr = lrs["0/weight"].grad
    assert g_lr is not None and g_lr.shape == net[0].weight.shape and g_lr.abs().sum() > 0


def test_zero_steps_returns_the_meta_parameters_and_negative_steps_fail():
    net, xs, ys, _, _ = _setup()
    loss_fn, params = as_loss(net, F.mse_loss), params_of(net)
    assert adapt(loss_fn, params, (xs[0], ys[0]), 0) is params
    with pytest.raises(ValueError):
        adapt(loss_fn, params, (xs[0], ys[0]), -1)
