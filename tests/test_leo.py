"""LEO: latent gradient steps, second-order meta-gradient, class equivariance, saved noise."""
import pytest
import torch

from metarl.agents.leo import LEOConfig, LEOLearner
from metarl.config import build
from metarl.envs.image_tasks import GlyphConfig, make_glyphs
from metarl.envs.regression_tasks import SinusoidConfig, SinusoidDistribution
from metarl.fewshot.core import task_loss


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METARL_CACHE", str(tmp_path / "cache"))


def sinusoid_leo(**kw):
    torch.manual_seed(0)
    dist = SinusoidDistribution(SinusoidConfig())
    return dist, LEOLearner(dist, build(LEOConfig, kw, "agent"))


def test_latent_steps_lower_the_support_loss_and_zero_steps_decode_the_mean_code():
    dist, leo = sinusoid_leo(inner_lr=0.1)
    leo.eval()
    b = dist.sample(16, torch.Generator().manual_seed(1))
    with torch.no_grad():
        losses = [task_loss("regression", leo.predict(leo.adapt(b["xs"], b["ys"], s), b["xs"]), b["ys"]).mean()
                  for s in (0, 1, 5)]
        mu, _ = leo.encode(b["xs"], b["ys"])
        zero = leo.adapt(b["xs"], b["ys"], 0)
    assert losses[0] > losses[1] > losses[2]
    assert all(torch.equal(zero[k], v) for k, v in leo.decode(mu).items())


def test_meta_gradient_is_second_order_through_the_latent_steps():
    """The query loss after the latent steps reaches the encoder, decoder and step size; its
    encoder gradient differs from the first-order one (the steps' own gradients held constant),
    so the second derivatives are really taken."""
    grads = {}
    for first_order in (False, True):
        dist, leo = sinusoid_leo(kl_weight=0.0, penalty_weight=0.0, first_order=first_order)
        leo.eval()  # the mean code: the two runs see the same z
        loss, metrics = leo.meta_loss(dist.sample(4, torch.Generator().manual_seed(2)))
        loss.backward()
        assert leo.log_alpha.grad.abs() > 0 and leo.decoder.weight.grad.abs().sum() > 0
        grads[first_order] = leo.encoder[0].weight.grad.clone()
        assert {"loss", "kl", "penalty", "alpha"} <= set(metrics)
    assert grads[False].abs().sum() > 0 and not torch.allclose(grads[False], grads[True], rtol=1e-3)


def test_training_codes_are_sampled_from_a_saved_stream():
    """Training draws z = mu + sigma * eps from a generator kept in the learner's state, so a
    resumed run draws what the uninterrupted one would; evaluation uses mu."""
    dist, leo = sinusoid_leo()
    b = dist.sample(3, torch.Generator().manual_seed(3))
    state = {k: v.clone() for k, v in leo.state_dict().items()}
    z1, mu, _ = leo._code(b["xs"], b["ys"])
    assert not torch.allclose(z1, mu)
    leo.load_state_dict(state)
    assert torch.equal(leo._code(b["xs"], b["ys"])[0], z1)
    leo.eval()
    z, mu, _ = leo._code(b["xs"], b["ys"])
    assert torch.equal(z, mu)


def test_classification_codes_and_weights_follow_the_class_labels():
    torch.manual_seed(0)
    dist = make_glyphs(build(GlyphConfig, {"classes": 40, "variants": 20, "ways": 3, "shots": 2}, "env"))
    leo = LEOLearner(dist, build(LEOConfig, {"channels": 8}, "agent"))
    leo.eval()
    b = dist.sample(2, torch.Generator().manual_seed(4), "train")
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        logits = leo.predict(leo.adapt(b["xs"], b["ys"], 2), b["xq"])
        relabelled = leo.predict(leo.adapt(b["xs"], perm[b["ys"]], 2), b["xq"])
    assert logits.shape == (2, b["xq"].shape[1], 3)
    assert torch.allclose(relabelled[..., perm], logits, atol=1e-4)
