"""Few-shot generation (agent fewshot-gen): the VAE's ELBO, Reptile's meta-update, the pretrain
baseline, and its own evaluation protocol (recognition of generated drawings, held-out ELBO)."""
import copy
import json

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
    g = make(dist, meta_lr=1.0, inner_steps=3, meta_batch=2)
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


def test_reptile_step_anneals_to_zero():
    dist = glyphs()
    g = make(dist, meta_lr=1.0, inner_steps=1, iterations=4)
    g.meta_steps.fill_(4)  # the end of training: epsilon annealed to 0
    before = [p.detach().clone() for p in g.parameters()]
    g.meta_update(dist.sample(2, torch.Generator().manual_seed(1)), torch.optim.SGD(g.parameters(), lr=1.0))
    assert all(torch.equal(a, b) for a, b in zip(before, g.parameters()))


def test_pretrain_mode_fits_all_drawings_with_adam():
    dist = glyphs()
    g = make(dist, mode="pretrain", meta_lr=1e-3)
    opt = torch.optim.Adam(g.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(0)
    test = dist.sample(4, torch.Generator().manual_seed(5))
    first = g.meta_loss(test)[0].item()
    for _ in range(60):
        g.meta_update(dist.sample(4, gen), opt)
    assert g.meta_loss(test)[0].item() < first - 50  # nats per drawing


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
    assert 0 <= rec["evaluator_accuracy_on_real"] <= 1
    assert (run / "eval_samples.png").stat().st_size > 1000
    code, _, err = cli("eval", run, "--attack", "fgsm", "--eps", 0.1)
    assert code == 2 and "own evaluation" in err


def test_generation_refuses_what_it_cannot_generate(cli):
    for env, sets, words in (("sinusoid", [], "28x28"), ("glyphs", ["--set", "env.shots=0"], "shots")):
        code, _, err = cli("train", "fewshot-gen", "--env", env, *sets, "--quiet")
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1


def test_trainer_steps_reptile_by_sgd_at_meta_lr_and_pretrain_by_adam():
    from metarl.agents.fewshot_gen import FEWSHOT_GEN
    from metarl.registry import ENVS, lookup
    spec = lookup("env", ENVS, "glyphs")
    env_cfg = build(GlyphConfig, {"classes": 40, "variants": 20, "ways": 4}, "env")
    for mode, kind, lr in (("reptile", torch.optim.SGD, 0.5), ("pretrain", torch.optim.Adam, 1e-3)):
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
                                 "fewshot-gen (ELBO)": {**ci(-90.0), "curve": curve(-120.0, -90.0)}},
                     "paired_with": {"experiment": "base", "fewshot-gen": ci(0.1), "fewshot-gen (ELBO)": ci(5.0)}}}
    row = rt.generation_row(s)
    assert "20.0% ± 1.0 / 70.0% ± 1.0 after 50 steps (20%)" in row and "-120.00 ± 0.01 / -90.00 ± 0.01" in row
    assert "+0.100 [+0.090, +0.110]; +5.000 [+4.990, +5.010] vs base" in row and "| 90.0% |" in row
