"""Hypernetwork learner: generated weights, bias-HyperInit, two-stage targets, class equivariance."""
import pytest
import torch

from metarl.agents.hypernet import HyperNetConfig, HyperNetLearner, target_weights
from metarl.config import build
from metarl.envs.image_tasks import GlyphConfig, make_glyphs
from metarl.envs.regression_tasks import SinusoidConfig, SinusoidDistribution
from metarl.fewshot.core import task_loss
from metarl.functional import params_of


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METARL_CACHE", str(tmp_path / "cache"))


def sinusoid_learner(**kw):
    torch.manual_seed(0)
    dist = SinusoidDistribution(SinusoidConfig())
    return dist, HyperNetLearner(dist, build(HyperNetConfig, kw, "agent"))


def test_generated_weights_start_at_the_target_init_and_depend_on_the_task():
    """bias-HyperInit: before training every task's generated MLP is close to one standard init
    of the target network, not near zero, and different support sets already give different weights."""
    dist, hn = sinusoid_learner()
    b = dist.sample(8, torch.Generator().manual_seed(1))
    gen = hn.generate(b["xs"], b["ys"])
    base = params_of(hn.target)
    for k, p in base.items():
        assert gen[k].shape == (8, *p.shape)
        assert (gen[k] - p).abs().max() < 0.1 * p.abs().max()
    assert not torch.allclose(gen["w1"][0], gen["w1"][1])


def test_fine_tuning_steps_from_the_generated_weights_lower_the_support_loss():
    dist, hn = sinusoid_learner(inner_lr=0.01)
    b = dist.sample(16, torch.Generator().manual_seed(2))
    with torch.no_grad():
        losses = [task_loss("regression", hn.predict(hn.adapt(b["xs"], b["ys"], s), b["xs"]), b["ys"]).mean()
                  for s in (0, 1, 5)]
    assert losses[0] > losses[1] > losses[2]
    zero = hn.adapt(b["xs"], b["ys"], 0)
    assert all(torch.equal(zero[k], v) for k, v in hn.generate(b["xs"], b["ys"]).items())


def test_end_to_end_training_lowers_the_query_loss():
    dist, hn = sinusoid_learner(meta_lr=1e-3)
    opt = torch.optim.Adam([p for p in hn.parameters() if p.requires_grad], lr=1e-3)
    gen = torch.Generator().manual_seed(3)
    test = dist.sample(200, torch.Generator().manual_seed(4), "test")

    def query_mse():
        with torch.no_grad():
            return task_loss("regression", hn.predict(hn.adapt(test["xs"], test["ys"]), test["xq"]), test["yq"]).mean()
    before = query_mse()
    for _ in range(150):
        hn.meta_update(dist.sample(25, gen), opt)
    assert query_mse() < 0.5 * before


@pytest.mark.parametrize("target_init", ["shared", "independent"])
def test_two_stage_targets_fit_each_task_from_the_chosen_init(target_init):
    """phi* fits each task (its loss is far below the init's), and two copies of one task get
    the same target from a shared init but different ones from independent inits."""
    dist, hn = sinusoid_learner(mode="two-stage", fit_steps=200, target_init=target_init)
    one = dist.sample(1, torch.Generator().manual_seed(5))
    batch = {k: v.expand(2, *v.shape[1:]) for k, v in one.items() if k in ("xs", "ys", "xq", "yq")}
    phi = hn.fit_targets(batch)
    x, y = torch.cat([batch["xs"], batch["xq"]], 1), torch.cat([batch["ys"], batch["yq"]], 1)
    fitted = task_loss("regression", hn.target.forward_with(hn.flat.split(phi), x), y)
    start = task_loss("regression", hn.target(x), y)
    assert (fitted < 0.2 * start).all()
    same = torch.allclose(phi[0], phi[1], atol=1e-5)
    assert same == (target_init == "shared")
    # the parameter-space regression moves the generator toward the targets
    batch2 = dist.sample(4, torch.Generator().manual_seed(6))
    opt = torch.optim.Adam([p for p in hn.parameters() if p.requires_grad], lr=1e-3)
    first = hn.meta_update(batch2, opt)
    assert {"loss", "query_mse", "target_mse"} <= set(first)
    for _ in range(20):
        last = hn.meta_update(batch2, opt)
    assert last["loss"] < first["loss"]


def test_independent_target_draws_are_part_of_the_saved_state():
    """A resumed run draws the same independent inits as the uninterrupted one."""
    dist, hn = sinusoid_learner(mode="two-stage", fit_steps=1, target_init="independent")
    state = {k: v.clone() for k, v in hn.state_dict().items()}
    batch = dist.sample(3, torch.Generator().manual_seed(7))
    first = hn.fit_targets(batch)
    hn.load_state_dict(state)
    assert torch.equal(hn.fit_targets(batch), first)
    assert not torch.equal(hn.fit_targets(batch), first)  # the draw moved on


def test_classification_heads_follow_the_class_labels():
    """Relabelling the support classes permutes the generated head's rows, so the predicted
    labels are relabelled the same way: the generator is equivariant to class order."""
    torch.manual_seed(0)
    dist = make_glyphs(build(GlyphConfig, {"classes": 40, "variants": 20, "ways": 3, "shots": 2}, "env"))
    hn = HyperNetLearner(dist, build(HyperNetConfig, {"channels": 8}, "agent"))
    b = dist.sample(2, torch.Generator().manual_seed(8), "train")
    perm = torch.tensor([2, 0, 1])                                   # class c becomes perm[c]
    with torch.no_grad():
        logits = hn.predict(hn.adapt(b["xs"], b["ys"]), b["xq"])
        relabelled = hn.predict(hn.adapt(b["xs"], perm[b["ys"]]), b["xq"])
    assert torch.allclose(relabelled[..., perm], logits, atol=1e-5)
    assert logits.shape == (2, b["xq"].shape[1], 3)


@pytest.mark.parametrize("hidden,layers", [(40, 2), (7, 1), (3, 4)])
def test_the_size_check_counts_the_target_network_it_would_build(hidden, layers):
    """The memory check counts the target MLP's weights without building it: the same count as built."""
    dist, hn = sinusoid_learner(hidden=hidden, layers=layers)
    assert target_weights(dist, hn.cfg) == hn.flat.total == sum(p.numel() for p in params_of(hn.target).values())


def test_two_stage_on_classification_unknown_modes_and_huge_targets_are_user_errors(cli):
    code, _, err = cli("train", "hypernet", "--env", "glyphs", "--set", "agent.mode=two-stage", "--quiet")
    assert code == 2 and "two-stage" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("train", "hypernet", "--env", "sinusoid", "--set", "agent.mode=backprop", "--quiet")
    assert code == 2 and "mode" in err
    for hidden, layers in ((4000, 2), (100_000, 4)):  # the second: a target MLP too large to build at all
        code, _, err = cli("train", "hypernet", "--env", "sinusoid", "--set", f"agent.hidden={hidden}",
                           "--set", f"agent.layers={layers}", "--quiet")
        assert code == 2 and "generator weights" in err and len(err.strip().splitlines()) == 1


def test_meta_loss_terms_measure_the_generated_weights_against_the_base_network():
    """agent.meta_loss on the hypernetwork: theta is the generator's output bias (the base network),
    phi the generated weights; each term matches its definition and the loss adds them weighted;
    with maml alone the objective is the query loss of the generated weights."""
    dist, hn = sinusoid_learner(meta_loss="maml,l2,proximal,aux-maml,rg", meta_loss_weight=0.5, rg_neighbours=2)
    b = dist.sample(4, torch.Generator().manual_seed(3))
    loss, m = hn.meta_loss(b)
    assert m.keys() == {"loss", "loss_l2", "loss_proximal", "loss_aux-maml", "loss_rg"}
    theta = hn.flat.split(hn.generator[-1].bias)
    phi = hn.generate(b["xs"], b["ys"])
    with torch.no_grad():
        assert m["loss"] == pytest.approx(task_loss("regression", hn.predict(phi, b["xq"]), b["yq"]).mean().item(),
                                          rel=1e-5)
        assert m["loss_l2"] == pytest.approx((hn.generator[-1].bias ** 2).sum().item(), rel=1e-5)
        prox = ((hn.flat.join(phi) - hn.generator[-1].bias) ** 2).sum(1).mean().item()
        assert m["loss_proximal"] == pytest.approx(prox, rel=1e-4)
        x, y = torch.cat([b["xs"], b["xq"]], 1), torch.cat([b["ys"], b["yq"]], 1)
        aux = ((hn.target.forward_with(theta, x) - y) ** 2).mean().item()  # one base network for every task
        assert m["loss_aux-maml"] == pytest.approx(aux, rel=1e-5)
    assert m["loss_rg"] > 0
    assert loss.item() == pytest.approx(m["loss"] + 0.5 * (m["loss_l2"] + m["loss_proximal"] + m["loss_aux-maml"]
                                                           + m["loss_rg"]), rel=1e-5)
    loss.backward()  # the terms reach the generator's base
    assert hn.generator[-1].bias.grad.abs().sum() > 0
    _, plain = sinusoid_learner()
    loss_p, m_p = plain.meta_loss(b)
    assert m_p.keys() == {"loss"} and m_p["loss"] == pytest.approx(m["loss"])  # same init, same query loss


def test_classification_meta_loss_rg_compares_generated_heads():
    torch.manual_seed(0)
    dist = make_glyphs(build(GlyphConfig, {"classes": 40, "variants": 20, "ways": 3, "shots": 2}, "env"))
    hn = HyperNetLearner(dist, build(HyperNetConfig, {"channels": 8, "meta_loss": "maml,rg:1,proximal:1"}, "agent"))
    b = dist.sample(4, torch.Generator().manual_seed(8), "train")
    theta = hn.base_params()
    assert theta["head_w"].shape == (3, hn.embedding.features) and theta["head_b"].shape == (3,)
    loss, m = hn.meta_loss(b)
    assert {"loss_rg", "loss_proximal", "accuracy"} <= m.keys() and m["loss_rg"] > 0 and m["loss_proximal"] > 0


def test_meta_loss_terms_that_do_not_apply_are_user_errors(cli):
    for sets, words in ((["agent.meta_loss=maml,mr-maml"], "not the hypernetwork"),
                        (["agent.mode=two-stage", "agent.meta_loss=maml,l2"], "end-to-end")):
        args = [a for kv in sets for a in ("--set", kv)]
        code, _, err = cli("train", "hypernet", "--env", "sinusoid", *args, "--quiet")
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1
