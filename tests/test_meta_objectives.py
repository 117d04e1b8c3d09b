"""agent.meta_loss terms beyond l2/proximal/aux-maml (rg, mr-maml), per-term lambdas, ADML
(agent.adversarial) and the non-mutually-exclusive sinusoid (env.task_ids)."""
import pytest
import torch
import torch.nn.functional as F

from metarl.agents.fewshot_maml import MAMLConfig, MAMLLearner
from metarl.agents.meta_objectives import parse_meta_loss, task_neighbours, weighted_objective
from metarl.config import build
from metarl.envs.image_tasks import GlyphConfig, make_glyphs
from metarl.envs.regression_tasks import SinusoidConfig, SinusoidDistribution
from metarl.errors import UserError
from metarl.fewshot.core import task_loss
from metarl.functional import params_of


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METARL_CACHE", str(tmp_path / "cache"))


def learner(dist, seed=0, **agent):
    torch.manual_seed(seed)
    return MAMLLearner(dist, build(MAMLConfig, agent, "agent"))


def sinusoid(**env):
    return SinusoidDistribution(build(SinusoidConfig, env, "env"))


def repeated(batch, pattern):
    """The batch's tasks in the order of `pattern` (task indices; repeats give identical tasks)."""
    idx = torch.tensor(pattern)
    return {k: v[idx] for k, v in batch.items()}


def test_per_term_lambdas_and_the_shared_default():
    assert parse_meta_loss("l2:0.5, maml, rg", 0.1) == {"maml": 1.0, "l2": 0.5, "rg": 0.1}
    for spec, words in (("maml,l2:x", "number"), ("maml,l2:-1", ">= 0"), ("maml,l2,l2:2", "twice"),
                        ("maml,rgg", "unknown: rgg"), ("l2", "with maml")):
        with pytest.raises(UserError, match=words):
            parse_meta_loss(spec, 0.1)
    dist = sinusoid()
    b = dist.sample(4, torch.Generator().manual_seed(0))
    loss, m = learner(dist, meta_loss="maml,l2:0.5,proximal", meta_loss_weight=0.2).meta_loss(b)
    assert loss.item() == pytest.approx(m["loss"] + 0.5 * m["loss_l2"] + 0.2 * m["loss_proximal"], rel=1e-5)
    # a weighted term nobody computed (mr-maml on a learner that forgot to refuse it) is never dropped
    with pytest.raises(NotImplementedError, match="mr-maml"):
        weighted_objective({"maml": 1.0, "mr-maml": 0.1}, {"maml": torch.tensor(1.0)})


def test_rg_on_identical_tasks_is_the_maml_term_and_neighbours_are_the_twins():
    """Tasks 0,1 are one task and 2,3 another: each task's nearest neighbour is its twin, so the
    cross form is each adapted model's loss on its own query set (= the maml term) and the param
    form is zero."""
    dist = sinusoid()
    b = repeated(dist.sample(2, torch.Generator().manual_seed(1)), [0, 0, 1, 1])
    cross = learner(dist, meta_loss="maml,rg", rg_neighbours=1)
    _, m = cross.meta_loss(b)
    assert m["loss_rg"] == pytest.approx(m["loss"], rel=1e-5)
    phi = cross.adapt(b["xs"], b["ys"])
    idx, w = task_neighbours(phi, cross.inner_params(), 1, 0.1)
    assert idx.view(-1).tolist() == [1, 0, 3, 2] and torch.equal(w, torch.ones(4, 1))
    _, m = learner(dist, meta_loss="maml,rg", rg_neighbours=1, rg_form="param").meta_loss(b)
    assert m["loss_rg"] == pytest.approx(0.0, abs=1e-10)


def test_rg_cross_matches_its_definition_on_distinct_tasks():
    dist = sinusoid()
    b = dist.sample(5, torch.Generator().manual_seed(2))
    lrn = learner(dist, meta_loss="maml,rg", rg_neighbours=3, rg_temperature=0.5)
    _, m = lrn.meta_loss(b)
    phi = lrn.adapt(b["xs"], b["ys"])
    theta = params_of(lrn.model)
    d = torch.cat([(phi[k] - p).flatten(1) for k, p in theta.items()], 1)
    cos = F.normalize(d, dim=1) @ F.normalize(d, dim=1).T
    expect = 0.0
    for i in range(5):
        others = sorted((j for j in range(5) if j != i), key=lambda j: -cos[i, j].item())[:3]
        w = torch.softmax(torch.stack([cos[i, j] for j in others]) / 0.5, 0)
        for wj, j in zip(w, others):
            out = lrn.model.forward_with({k: v[i] for k, v in phi.items()}, b["xq"][j])
            expect += wj.item() * ((out - b["yq"][j]) ** 2).mean().item()
    assert m["loss_rg"] == pytest.approx(expect / 5, rel=1e-4)


def test_rg_needs_two_tasks(cli):
    code, _, err = cli("train", "maml", "--env", "sinusoid", "--set", "agent.meta_loss=maml,rg",
                       "--set", "agent.meta_batch=1", "--set", "agent.iterations=1", "--set", "agent.log_every=1",
                       "--quiet")
    assert code == 2 and "meta_batch" in err


def test_mr_maml_encoder_is_stochastic_in_training_only_and_never_adapted():
    dist = sinusoid()
    lrn = learner(dist, meta_loss="maml,mr-maml:0.001")
    assert set(lrn.inner_params()) == {"w1", "b1", "w2", "b2"} and set(lrn.encoder.keys) == {"w0", "b0"}
    with torch.no_grad():
        for r in lrn.encoder.rho.values():
            r.fill_(-1.0)                             # sigma = softplus(-1) ~ 0.31: draws differ visibly
    b = dist.sample(3, torch.Generator().manual_seed(0))
    phi = lrn.adapt(b["xs"], b["ys"])
    assert "w0" not in phi
    mean = lrn.predict(phi, b["xq"])                                    # evaluation: the encoder's mean
    assert torch.equal(mean, lrn.model.forward_with({"w0": lrn.model.w0, "b0": lrn.model.b0,
                                                     **{k: v for k, v in phi.items()}}, b["xq"]))
    a, b_ = lrn.base(sample=True), lrn.base(sample=True)
    assert not torch.equal(a["w0"], b_["w0"]) and torch.equal(lrn.base()["w0"], lrn.model.w0)
    loss, m = lrn.meta_loss(b)
    sig2 = F.softplus(torch.tensor(-1.0)) ** 2
    kl = sum(0.5 * (sig2 + p ** 2 - 1 - torch.log(sig2)).sum() for p in (lrn.model.w0, lrn.model.b0))
    assert m["loss_mr-maml"] == pytest.approx(kl.item(), rel=1e-5)
    loss.backward()
    assert all(r.grad is not None and r.grad.abs().sum() > 0 for r in lrn.encoder.rho.values())


def test_mr_maml_draws_resume_from_the_state_dict():
    """The encoder's noise stream is in the state dict: a learner loaded from another's state
    draws the same weights next."""
    dist = sinusoid()
    one = learner(dist, meta_loss="maml,mr-maml")
    one.base(sample=True)
    two = learner(dist, seed=5, meta_loss="maml,mr-maml")
    two.load_state_dict(one.state_dict())
    assert torch.equal(one.base(sample=True)["w0"], two.base(sample=True)["w0"])


def test_mr_maml_on_conv4_keeps_the_last_block_and_head_adaptive():
    dist = make_glyphs(build(GlyphConfig, {"classes": 40, "variants": 20, "ways": 4}, "env"))
    lrn = learner(dist, meta_loss="maml,mr-maml", channels=8)
    assert set(lrn.inner_params()) == {"conv3_w", "conv3_b", "bn3_w", "bn3_b", "head_w", "head_b"}
    b = dist.sample(2, torch.Generator().manual_seed(0), shots=1, query=2)
    loss, m = lrn.meta_loss(b)
    assert torch.isfinite(loss) and m["loss_mr-maml"] > 0
    with pytest.raises(UserError, match="mr_layers=5"):
        learner(dist, meta_loss="maml,mr-maml", mr_layers=5, channels=8)
    with pytest.raises(UserError, match="mr_layers=3"):
        learner(sinusoid(), meta_loss="maml,mr-maml", mr_layers=3)


def test_adml_with_a_vanishing_radius_is_maml():
    """ADML's loss pairs clean-adapted weights with attacked queries and attacked-support weights
    with clean queries: at eps -> 0 both are MAML's query loss."""
    dist = make_glyphs(build(GlyphConfig, {"classes": 40, "variants": 20, "ways": 4}, "env"))
    b = dist.sample(2, torch.Generator().manual_seed(0), shots=1, query=2)
    _, plain = learner(dist, channels=8).meta_loss(b)
    _, tiny = learner(dist, channels=8, adversarial="fgsm", adv_eps=1e-7).meta_loss(b)
    _, big = learner(dist, channels=8, adversarial="pgd", adv_eps=0.3, adv_steps=3).meta_loss(b)
    assert tiny["loss"] == pytest.approx(plain["loss"], rel=1e-4)
    assert big["loss"] > plain["loss"] + 0.01  # the attack raises the loss it is trained on
    assert tiny["accuracy"] == plain["accuracy"]


def test_adml_examples_stay_in_the_ball_and_raise_the_loss():
    dist = make_glyphs(build(GlyphConfig, {"classes": 40, "variants": 20, "ways": 4}, "env"))
    lrn = learner(dist, channels=8, adversarial="fgsm", adv_eps=0.05)
    b = dist.sample(2, torch.Generator().manual_seed(0), shots=1, query=2)
    phi = lrn.adapt(b["xs"], b["ys"])
    from metarl.agents.fewshot_maml import _Predictor
    x = lrn.attack.perturb(_Predictor(lrn, lrn.base()), {k: v.detach() for k, v in phi.items()}, b["xq"], b["yq"],
                           torch.Generator())
    assert (x - b["xq"]).abs().max() <= 0.05 + 1e-6 and x.min() >= 0 and x.max() <= 1
    clean = task_loss("classification", lrn.predict(phi, b["xq"]), b["yq"]).mean()
    attacked = task_loss("classification", lrn.predict(phi, x), b["yq"]).mean()
    assert attacked > clean


def test_adml_and_objectives_refuse_where_they_do_not_apply(cli):
    for agent, key, value, words in (("maml", "adversarial", "fgsm", "images"),
                                     ("reptile", "adversarial", "fgsm", "own update")):
        code, _, err = cli("train", agent, "--env", "sinusoid", "--set", f"agent.{key}={value}", "--quiet")
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1


def test_task_ids_sinusoid_is_identifiable_from_inputs_and_holds_ids_out():
    dist = sinusoid(task_ids=20)
    assert dist.x_shape == (21,)
    train = dist.sample(2000, torch.Generator().manual_seed(0), "train")
    test = dist.sample(2000, torch.Generator().manual_seed(0), "test")
    ids = {s: b["xs"][:, 0, 1:].argmax(-1) for s, b in (("train", train), ("test", test))}
    assert set(ids["train"].tolist()) == {i for i in range(20) if i % 4 != 3 and i % 8 != 1}
    assert set(ids["test"].tolist()) == {3, 7, 11, 15, 19}
    val = dist.sample(500, torch.Generator().manual_seed(0), "val")["xs"][:, 0, 1:].argmax(-1)
    assert set(val.tolist()) == {1, 9, 17}
    for b, i in ((train, ids["train"]), (test, ids["test"])):
        assert torch.allclose(b["amplitude"], 0.1 + 4.9 * i / 19)             # the id fixes the amplitude
        assert torch.equal(b["xq"][..., 1:], b["xs"][:, :1, 1:].expand_as(b["xq"][..., 1:]))
        assert torch.allclose(b["yq"], b["amplitude"].view(-1, 1, 1) * torch.sin(b["xq"][..., :1]))
    with pytest.raises(UserError, match="maml is the objective"):
        parse_meta_loss("maml:0.5,l2", 0.1)
    with pytest.raises(UserError, match="task_ids=2"):
        sinusoid(task_ids=2)
