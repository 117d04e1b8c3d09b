"""Latent Neural Process: its ELBO's KL, coherent sampled functions, the Monte Carlo predictive
log-likelihood, learning on GP draws and its beside-CNP evaluation."""
import math

import pytest
import torch

from metarl.agents.neural_process import NeuralProcess, NPConfig
from metarl.config import build
from metarl.envs.regression_tasks import GPConfig, GPDistribution


def make(seed=0, **agent):
    torch.manual_seed(seed)
    dist = GPDistribution(build(GPConfig, {"shots": 0, "context_max": 20}, "env"))
    return dist, NeuralProcess(dist, build(NPConfig, {"hidden": 32, "latent": 8, **agent}, "agent"))


def test_elbo_kl_is_the_gaussian_kl_of_posterior_to_prior():
    dist, np_ = make()
    np_.double()
    b = {k: v.double() for k, v in dist.sample(5, torch.Generator().manual_seed(0), shots=6).items()}
    _, m = np_.meta_loss(b)
    _, mu_c, sig_c = np_.adapt(b["xs"], b["ys"])
    mu_t, sig_t = np_.latent_dist(torch.cat([b["xs"], b["xq"]], 1), torch.cat([b["ys"], b["yq"]], 1))
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mu_t, sig_t),
                                           torch.distributions.Normal(mu_c, sig_c)).sum(-1)
    points = 6 + b["xq"].shape[1]
    assert m["kl"] == pytest.approx(kl.mean().item() / points, rel=1e-9) and m["kl"] > 0


def test_sampled_functions_differ_and_their_mean_is_the_prediction():
    dist, np_ = make(eval_samples=16)
    with torch.no_grad():
        for p in np_.lat_head.parameters():
            p.add_(0.5)  # a wide q(z | C): draws visibly apart
    b = dist.sample(3, torch.Generator().manual_seed(1), shots=5)
    with torch.no_grad():
        state = np_.adapt(b["xs"], b["ys"])
        f = np_.sample_functions(state, b["xq"], 16)
        assert f.shape == (16, 3, 50, 1) and (f.std(0) > 1e-4).all()
        assert torch.allclose(np_.predict(state, b["xq"]), f.mean(0))
        assert torch.equal(f, np_.sample_functions(state, b["xq"], 16))  # the evaluation's draws are fixed


def test_monte_carlo_loglik_is_the_log_mean_of_joint_likelihoods():
    """K = 1: the joint log-likelihood of the one decoded draw per point; K > 1: the log of the
    mean likelihood, at least the mean of the per-draw log-likelihoods (Jensen)."""
    dist, one = make(eval_samples=1)
    b = dist.sample(4, torch.Generator().manual_seed(2), shots=5)
    with torch.no_grad():
        state = one.adapt(b["xs"], b["ys"])
        mu, sigma = one.decode(state[0], one.draws(state, 1), b["xq"])
        direct = torch.distributions.Normal(mu[0], sigma[0]).log_prob(b["yq"]).mean((-2, -1))
        assert torch.allclose(one.loglik(state, b["xq"], b["yq"]), direct, atol=1e-5)
        one.cfg.eval_samples = 8
        mu, sigma = one.decode(state[0], one.draws(state, 8), b["xq"])
        each = torch.distributions.Normal(mu, sigma).log_prob(b["yq"]).mean((-2, -1))      # [8, N]
        assert (one.loglik(state, b["xq"], b["yq"]) >= each.mean(0) - 1e-6).all()


def test_np_learns_gp_regression():
    dist, np_ = make()
    opt = torch.optim.Adam(np_.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    test = dist.sample(64, torch.Generator().manual_seed(9), shots=10)
    with torch.no_grad():
        before = np_.loglik(np_.adapt(test["xs"], test["ys"]), test["xq"], test["yq"]).mean().item()
    for _ in range(300):
        np_.meta_update(dist.sample(16, g), opt)
    with torch.no_grad():
        after = np_.loglik(np_.adapt(test["xs"], test["ys"]), test["xq"], test["yq"]).mean().item()
    assert math.isfinite(after) and after > before + 0.2


def test_np_training_draws_resume_from_the_state_dict():
    dist, a = make()
    b_ = make(seed=3)[1]
    batch = dist.sample(4, torch.Generator().manual_seed(0), shots=5)
    a.meta_loss(batch)
    b_.load_state_dict(a.state_dict())
    assert a.meta_loss(batch)[0].item() == b_.meta_loss(batch)[0].item()


def test_np_refuses_classification(cli):
    code, _, err = cli("train", "np", "--env", "glyphs", "--quiet")
    assert code == 2 and "regressor" in err and len(err.strip().splitlines()) == 1
