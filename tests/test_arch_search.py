"""Cell search in the few-shot loop (agent.search=darts, agent.arch): the mixed cell, the
meta-gradient of the architecture weights through the inner loop, the chosen cell."""
import json

import pytest
import torch

from metarl.agents.arch_search import OPS, CellConv4, weight_count
from metarl.agents.fewshot_maml import MAMLConfig, MAMLLearner
from metarl.agents.fewshot_nets import Conv4
from metarl.config import build
from metarl.envs.image_tasks import GlyphConfig, make_glyphs
from metarl.functional import params_of


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METARL_CACHE", str(tmp_path / "cache"))


def test_a_search_cell_with_all_weight_on_one_op_is_that_cell():
    torch.manual_seed(0)
    search = CellConv4(1, 6, 4)
    cell = ["conv5x5", "avg_pool3x3", "skip"]
    fixed = CellConv4(1, 6, 4, cell)
    with torch.no_grad():
        search.arch_alpha.fill_(-1e4)
        for b, op in enumerate(cell):
            search.arch_alpha[b, OPS.index(op)] = 1e4
    shared = {k: v for k, v in params_of(search).items() if k in params_of(fixed)}
    fixed.load_state_dict(shared)
    x = torch.rand(5, 1, 28, 28)
    assert torch.allclose(search(x), fixed(x), atol=1e-5)


def test_per_task_weights_run_as_each_task_alone():
    torch.manual_seed(0)
    net = CellConv4(1, 4, 3)
    p = params_of(net)
    per = {k: (v if k == "arch_alpha" else torch.stack([v + 0.01 * i for i in range(2)])) for k, v in p.items()}
    x = torch.rand(2, 5, 1, 28, 28)
    both = net.forward_with(per, x)
    for i in range(2):
        alone = net.forward_with({k: (v if k == "arch_alpha" else v[i]) for k, v in per.items()}, x[i])
        assert torch.allclose(both[i], alone, atol=1e-5)


def test_architecture_weights_get_the_meta_gradient_and_are_never_adapted():
    dist = make_glyphs(build(GlyphConfig, {"classes": 40, "variants": 20, "ways": 4}, "env"))
    torch.manual_seed(0)
    lrn = MAMLLearner(dist, build(MAMLConfig, {"search": "darts", "channels": 4, "inner_lr": 0.4}, "agent"))
    assert "arch_alpha" not in lrn.inner_params()
    b = dist.sample(2, torch.Generator().manual_seed(0), shots=1, query=2)
    loss, _ = lrn.meta_loss(b)
    (g,) = torch.autograd.grad(loss, lrn.model.arch_alpha)
    assert g.abs().sum() > 0
    fo = MAMLLearner(dist, build(MAMLConfig, {"search": "darts", "channels": 4, "first_order": True}, "agent"))
    assert "arch_alpha" not in fo.adapt(b["xs"], b["ys"])


def test_candidate_cells_share_the_supernet_weights():
    from metarl.agents.arch_search import candidates, with_cell
    dist = make_glyphs(build(GlyphConfig, {"classes": 40, "variants": 20, "ways": 4}, "env"))
    torch.manual_seed(0)
    lrn = MAMLLearner(dist, build(MAMLConfig, {"search": "darts", "channels": 4}, "agent"))
    with torch.no_grad():
        lrn.model.arch_alpha.copy_(torch.arange(len(OPS), dtype=torch.float).expand(3, -1))
    cells = candidates(lrn.model)  # joint weight: skip (5) everywhere first, then one avg_pool (4) among skips
    assert cells[0] == ["skip"] * 3 and len(cells) == 4 and all(c.count("avg_pool3x3") == 1 for c in cells[1:])
    one = with_cell(lrn, ["conv5x5", "skip", "max_pool3x3"])
    assert torch.equal(one.model.c1_conv5x5_w, lrn.model.c1_conv5x5_w) and "arch_alpha" not in one.fixed
    assert set(one.inner_params()) == set(params_of(one.model)) and lrn.model.arch is None  # the search net is kept
    b = dist.sample(2, torch.Generator().manual_seed(0), shots=1, query=2)
    assert one.predict(one.adapt(b["xs"], b["ys"], 1), b["xq"]).shape == (2, 8, 4)


def test_each_candidate_is_scored_at_the_widest_width_within_conv4s_weights():
    """Under Conv4's budget a 5x5 cell is narrowed until it fits (and no wider would); each
    candidate is trained from scratch at its width and scored on validation tasks."""
    from metarl.agents.arch_search import cell_weights, choose_on_validation, width_within
    dist = make_glyphs(build(GlyphConfig, {"classes": 40, "variants": 20, "ways": 4, "shots": 1, "query": 2}, "env"))
    torch.manual_seed(0)
    lrn = MAMLLearner(dist, build(MAMLConfig, {"search": "darts", "channels": 8, "meta_batch": 2}, "agent"))
    with torch.no_grad():
        lrn.model.arch_alpha.zero_()
        lrn.model.arch_alpha[:, OPS.index("conv5x5")] = 3.0
        lrn.model.arch_alpha[:, OPS.index("skip")] = 2.0
    conv4 = weight_count(Conv4(1, 8, 4))
    cell = ["conv5x5"] * 3
    w = width_within(lrn.model, cell, conv4)
    assert w < 8 and cell_weights(lrn.model, cell, w) <= conv4 < cell_weights(lrn.model, cell, w + 1)
    assert width_within(lrn.model, ["skip"] * 3, conv4) > 8 and width_within(lrn.model, cell, None) == 8
    scores, widths = choose_on_validation(lrn, dist, 0, "cpu", 2, 1, top=2, max_weights=conv4, proxy_iterations=2)
    assert set(scores) == set(widths) == {"conv5x5,conv5x5,conv5x5", "conv5x5,conv5x5,skip"}
    assert widths["conv5x5,conv5x5,conv5x5"] == w and all(0 <= a <= 1 for a in scores.values())
    assert list(scores.values()) == sorted(scores.values(), reverse=True)


def test_chosen_cell_skips_none_and_counts_weights_without_alpha():
    torch.manual_seed(0)
    net = CellConv4(1, 8, 5)
    with torch.no_grad():
        net.arch_alpha.zero_()
        net.arch_alpha[:, OPS.index("none")] = 5.0
        net.arch_alpha[0, OPS.index("max_pool3x3")] = 1.0
    assert net.chosen()[0] == "max_pool3x3" and "none" not in net.chosen()
    plain = CellConv4(1, 8, 5, ["conv3x3"] * 3)
    assert weight_count(plain) == weight_count(Conv4(1, 8, 5))  # the hand-designed Conv4, op for op
    assert weight_count(CellConv4(1, 8, 5, ["skip"] * 3)) < weight_count(plain)


def test_search_run_writes_the_chosen_cell_which_trains_from_scratch(cli, tmp_path):
    common = ["--env", "glyphs", "--set", "env.classes=40", "--set", "env.ways=4", "--set", "agent.channels=4",
              "--set", "agent.iterations=2", "--set", "agent.log_every=1", "--set", "agent.meta_batch=2",
              "--set", "agent.search_proxy_iterations=2", "--set", "agent.eval_steps=1", "--quiet", "--device", "cpu"]
    run = tmp_path / "search"
    code, _, err = cli("train", "maml", "--run-dir", run, "--set", "agent.search=darts", *common)
    assert code == 0, err
    assert cli("eval", run, "--tasks", 4)[0] == 0
    rep = json.loads((run / "eval.json").read_text())
    chosen, val = rep["search"]["chosen"], rep["search"]["validation_accuracy"]
    assert len(val) == 4 and chosen == max(val, key=val.get) and all(0 <= a <= 1 for a in val.values())
    assert rep["search"]["chosen_params"] <= rep["search"]["weight_budget"] == rep["search"]["conv4_params"]
    assert set(rep["search"]["supernet_validation_accuracy"]) == set(val) and rep["search"]["channels"] >= 1
    assert rep["search"]["choice_s"] > 0
    assert len(chosen.split(",")) == 3 and chosen in (run / "eval_arch.txt").read_text()
    assert (run / "eval_arch.png").stat().st_size > 1000 and rep["search"]["conv4_params"] > 0
    code, _, err = cli("train", "maml", "--run-dir", tmp_path / "cell", "--set", f"agent.arch={chosen}", *common)
    assert code == 0, err


def test_search_refuses_where_there_is_no_cell(cli):
    for agent, env, key, value, words in (("maml", "sinusoid", "search", "darts", "image classification"),
                                          ("reptile", "glyphs", "search", "darts", "meta-gradient"),
                                          ("maml", "glyphs", "arch", "conv3x3,none,skip", "three comma-separated")):
        code, _, err = cli("train", agent, "--env", env, "--set", f"agent.{key}={value}", "--quiet")
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
