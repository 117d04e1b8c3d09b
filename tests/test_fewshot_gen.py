"""Few-shot generation (agent fewshot-gen): the VAE's ELBO, Reptile's meta-update, the pretrain
baseline, and its own evaluation protocol (recognition of generated drawings, held-out ELBO)."""
import copy
import json
import math

import pytest
import torch

from metarl.agents.fewshot_gen import ELBO, RECOGNISED, FewShotGenerator, GenConfig
from metarl.config import build
from metarl.envs.image_tasks import GlyphConfig, make_glyphs


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METARL_CACHE", str(tmp_path / "cache"))


def glyphs():
    return make_glyphs(build(GlyphConfig, {"classes": 40, "variants": 20, "ways": 4, "shots": 2, "query": 3}, "env"))


def make(dist, **agent):
    torch.manual_seed(0)
    return FewShotGenerator(dist, build(GenConfig, {"latent": 4, **agent}, "agent"))


def meta_train(g, dist, iterations: int) -> tuple[float, float]:
    """Adam 1e-3 meta-iterations of g on 4-task batches: its meta-loss on fixed tasks before, after."""
    opt = torch.optim.Adam(g.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(0)
    test = dist.sample(4, torch.Generator().manual_seed(5))
    first = g.meta_loss(test)[0].item()
    for _ in range(iterations):
        g.meta_update(dist.sample(4, gen), opt)
    return first, g.meta_loss(test)[0].item()


def test_elbo_is_a_bound_with_a_nonnegative_kl():
    dist = glyphs()
    g = make(dist)
    x = dist.sample(2, torch.Generator().manual_seed(0))["xs"].flatten(0, 1)
    elbo, kl = g.vae.elbo(x, torch.randn(x.shape[0], 4))
    assert elbo.shape == kl.shape == (x.shape[0],) and (kl >= 0).all() and (elbo < 0).all()


def test_reptile_moves_the_init_to_the_mean_of_the_fine_tuned_copies():
    """meta_lr 1 at the first iteration (no annealing yet): the new init is the average of the
    copies fine-tuned on each task's class, the same copies a replay with the same noise gives."""
    dist = glyphs()
    g = make(dist, mode="reptile", meta_lr=1.0, inner_steps=3, meta_batch=2)
    batch = dist.sample(2, torch.Generator().manual_seed(1))
    replay = copy.deepcopy(g)
    opt = torch.optim.SGD(g.parameters(), lr=1.0)
    g.meta_update(batch, opt)
    xs, xq = batch["xs"].view(2, 4, 2, 1, 28, 28)[:, 0], batch["xq"].view(2, 4, 3, 1, 28, 28)[:, 0]
    copies = []
    for x in torch.cat([xs, xq], 1):
        for _, vae in replay.fine_tune(x, 3, replay._noise):
            pass
        replay._noise(x.shape[0])  # the score's draw after each fine-tuning
        copies.append([p.detach().clone() for p in vae.parameters()])
    for i, p in enumerate(g.vae.parameters()):
        assert torch.allclose(p, torch.stack([c[i] for c in copies]).mean(0), atol=1e-6)
    assert g.meta_steps.item() == 1


@pytest.mark.parametrize("learned", [False, True])
def test_maml_loss_is_the_query_elbo_of_the_copy_fine_tuned_by_the_evaluation_rule(learned):
    """The vmapped functional inner loop and the evaluation's fine_tune (SGD at inner_lr, or at
    the learned per-weight step sizes, on a copy) adapt alike: with the same z noise, each
    task's adapted query ELBO matches."""
    dist = glyphs()
    g = make(dist, mode="maml", inner_steps=2, inner_lr=1e-3, learn_inner_lr=learned)
    if learned:
        with torch.no_grad():
            for v in g.log_lr.values():
                v.uniform_(math.log(1e-4), math.log(2e-3))
    batch = dist.sample(3, torch.Generator().manual_seed(1))
    replay = copy.deepcopy(g)
    loss, _ = g.maml_loss(batch)
    xs, xq = batch["xs"].view(3, 4, 2, 1, 28, 28)[:, 0], batch["xq"].view(3, 4, 3, 1, 28, 28)[:, 0]
    eps_s, eps_q = replay._noise(6).view(3, 2, 4), replay._noise(9).view(3, 3, 4)
    elbos = []
    for x, es, xqi, eq in zip(xs, eps_s, xq, eps_q):
        for _, vae in replay.fine_tune(x, 2, lambda n, es=es: es):
            pass
        elbos.append(vae.elbo(xqi, eq)[0].mean())
    assert torch.allclose(loss, -torch.stack(elbos).mean(), rtol=1e-5)


def test_maml_meta_gradient_goes_through_the_inner_loop():
    """Second-order and first-order MAML share the loss but not the gradient; both train."""
    dist = glyphs()
    batch = dist.sample(2, torch.Generator().manual_seed(1))
    grads = {}
    for fo in (False, True):
        g = make(dist, mode="maml", inner_steps=2, inner_lr=1e-3, first_order=fo)
        g.maml_loss(batch)[0].backward()
        grads[fo] = torch.cat([p.grad.flatten() for p in g.vae.parameters()])
    assert grads[False].abs().sum() > 0 and not torch.allclose(grads[False], grads[True])
    g = make(dist, mode="maml", inner_steps=1, inner_lr=1e-3)
    first, last = meta_train(g, dist, 40)
    assert last < first - 30 and g.meta_steps.item() == 40  # nats per drawing


def test_reptile_step_anneals_to_zero():
    dist = glyphs()
    g = make(dist, mode="reptile", meta_lr=1.0, inner_steps=1, iterations=4)
    g.meta_steps.fill_(4)  # the end of training: epsilon annealed to 0
    before = [p.detach().clone() for p in g.parameters()]
    g.meta_update(dist.sample(2, torch.Generator().manual_seed(1)), torch.optim.SGD(g.parameters(), lr=1.0))
    assert all(torch.equal(a, b) for a, b in zip(before, g.parameters()))


def test_pretrain_mode_fits_all_drawings_with_adam():
    dist = glyphs()
    g = make(dist, mode="pretrain", meta_lr=1e-3)
    first, last = meta_train(g, dist, 60)
    assert last < first - 50  # nats per drawing


def test_generation_run_trains_and_evaluates_by_its_own_protocol(cli, tmp_path):
    run = tmp_path / "gen"
    code, _, err = cli("train", "fewshot-gen", "--env", "glyphs", "--run-dir", run, "--set", "env.classes=40",
                       "--set", "env.ways=4", "--set", "env.shots=2", "--set", "env.query=3", "--set", "agent.latent=4",
                       "--set", "agent.iterations=4", "--set", "agent.log_every=2", "--set", "agent.meta_batch=2",
                       "--set", "agent.inner_steps=2", "--set", "agent.eval_steps=5", "--quiet", "--device", "cpu")
    assert code == 0, err
    code, _, err = cli("eval", run, "--tasks", 6)
    assert code == 0, err
    rep = json.loads((run / "eval.json").read_text())
    rec, elbo = rep["results"]["fewshot-gen"], rep["results"]["fewshot-gen (ELBO)"]
    assert rec["metric"] == RECOGNISED and elbo["metric"] == ELBO and rec["chance"] == 0.25
    assert [p["x"] for p in rec["curve"]["points"]] == [0, 1, 5] and len(rec["scores"]) == 6
    assert all(0 <= s <= 1 for s in rec["scores"]) and all(s < 0 for s in elbo["scores"])
    assert 0 <= rec["evaluator_accuracy_on_real"] <= 1 and rec["sample_z"] == "support"
    prior = rep["results"]["fewshot-gen (z from prior)"]
    assert prior["metric"] == RECOGNISED and prior["sample_z"] == "prior" and len(prior["scores"]) == 6
    assert set(rec["evaluator_accuracy_on_blurred_real"]) == {"0.0", "0.5", "1.0", "1.5"}
    assert (run / "eval_samples.png").stat().st_size > 1000
    code, _, err = cli("eval", run, "--attack", "fgsm", "--eps", 0.1)
    assert code == 2 and "own evaluation" in err


def test_generation_refuses_what_it_cannot_generate(cli):
    for env, sets, words in (("sinusoid", [], "28x28"), ("glyphs", ["--set", "env.shots=0"], "shots"),
                             ("glyphs", ["--set", "agent.mode=reptile", "--set", "agent.learn_inner_lr=true"],
                              "learn_inner_lr")):
        code, _, err = cli("train", "fewshot-gen", "--env", env, *sets, "--quiet")
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1


def test_trainer_steps_reptile_by_sgd_at_meta_lr_and_maml_and_pretrain_by_adam():
    from metarl.agents.fewshot_gen import FEWSHOT_GEN
    from metarl.registry import ENVS, lookup
    spec = lookup("env", ENVS, "glyphs")
    env_cfg = build(GlyphConfig, {"classes": 40, "variants": 20, "ways": 4}, "env")
    for mode, kind, lr in (("reptile", torch.optim.SGD, 0.5), ("pretrain", torch.optim.Adam, 1e-3),
                           ("maml", torch.optim.Adam, 1e-3)):
        trainer = FEWSHOT_GEN.trainer_cls(spec, env_cfg, build(GenConfig, {"mode": mode, "meta_lr": lr}, "agent"), 0,
                                          "cpu")
        assert type(trainer.optimizer) is kind and trainer.optimizer.param_groups[0]["lr"] == lr


def test_results_page_row_reads_recognition_elbo_and_the_pairing():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("rt", Path(__file__).parent.parent / "experiments" / "readme_table.py")
    rt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rt)
    ci = lambda m: {"mean": m, "ci_low": m - 0.01, "ci_high": m + 0.01}  # noqa: E731
    curve = lambda a, b: {"points": [{"x": 0, **ci(a)}, {"x": 50, **ci(b)}]}  # noqa: E731
    s = {"experiment": "gen", "config": "no_such_config", "wall_clock_s": 60, "commit": "abc", "command": "c",
         "metrics": {"env": "glyphs", "env_config": {"ways": 5, "shots": 5}, "held_out_tasks": 10,
                     "results": {"fewshot-gen": {**ci(0.7), "curve": curve(0.2, 0.7), "chance": 0.2,
                                                 "evaluator_accuracy_on_real": 0.9},
                                 "fewshot-gen (ELBO)": {**ci(-90.0), "curve": curve(-120.0, -90.0)},
                                 "fewshot-gen (z from support)": ci(0.8)},
                     "paired_with": {"experiment": "base", "fewshot-gen": ci(0.1), "fewshot-gen (ELBO)": ci(5.0)}}}
    row = rt.generation_row(s)
    assert "| reptile, z from prior | 20.0% ± 1.0 / 70.0% ± 1.0 after 50 steps (20%); z from support: 80.0% ± 1.0 |" in row and "-120.00 ± 0.01 / -90.00 ± 0.01" in row
    assert "+0.100 [+0.090, +0.110]; +5.000 [+4.990, +5.010] vs base" in row and "| 90.0% |" in row


def test_class_latents_moment_match_the_support_posteriors():
    """One drawing: z ~ q(z | x) itself. Several: mean of the means, variance the spread of the
    means plus the mean posterior variance."""
    from metarl.agents.fewshot_gen import VAE
    torch.manual_seed(0)
    vae = VAE(4)
    x = glyphs().sample(1, torch.Generator().manual_seed(0))["xs"][0]           # [8, 1, 28, 28]
    eps = torch.randn(3, 4)
    mu, logvar = vae.posterior(x)
    assert torch.allclose(vae.class_latents(x[:1], eps), mu[0] + (0.5 * logvar[0]).exp() * eps, atol=1e-6)
    z = vae.class_latents(x, torch.randn(20000, 4))
    assert torch.allclose(z.mean(0), mu.mean(0), atol=0.03)
    assert torch.allclose(z.var(0), mu.var(0, unbiased=False) + logvar.exp().mean(0), rtol=0.05)


def test_blur_keeps_ink_and_identity_at_zero():
    from metarl.agents.fewshot_gen import blur
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10:14, 10:14] = 1.0
    assert torch.equal(blur(x, 0.0), x)
    b = blur(x, 1.0)
    assert torch.isclose(b.sum(), x.sum(), rtol=1e-3) and b.max() < 1.0 and (b > 0).sum() > (x > 0).sum()
