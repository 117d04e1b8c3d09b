"""Learned optimizer: gradient features, the SGD path at init, meta-training, the comparison row."""
import json
import math

import pytest
import torch

from metarl.agents.learned_opt import LearnedOptConfig, LearnedOptLearner, SGDFromInit, preprocess
from metarl.config import build
from metarl.envs.regression_tasks import SinusoidConfig, SinusoidDistribution
from metarl.fewshot.core import task_loss


def learner(**kw):
    torch.manual_seed(0)
    dist = SinusoidDistribution(SinusoidConfig())
    return dist, LearnedOptLearner(dist, build(LearnedOptConfig, {"hidden": 16, **kw}, "agent"))


def test_gradient_features_put_every_magnitude_on_one_scale():
    f = preprocess(torch.tensor([-2.0, 1e-3, 1e-6, 0.0]))
    assert f[0].tolist() == pytest.approx([math.log(2.0) / 10, -1.0])
    assert f[1].tolist() == pytest.approx([math.log(1e-3) / 10, 1.0])
    assert f[2].tolist() == pytest.approx([-1.0, 1e-6 * math.exp(10)])  # below e^-10: scaled, not logged
    assert f[3].tolist() == [-1.0, 0.0]


def test_with_a_silent_lstm_the_learned_optimizer_is_sgd_from_its_init():
    """Two paths, one answer: zero LSTM output leaves -lr * g, the comparison row's SGD."""
    dist, lo = learner(inner_lr=0.01)
    with torch.no_grad():
        lo.out.weight.zero_()
        lo.out.bias.zero_()
    b = dist.sample(6, torch.Generator().manual_seed(1))
    sgd = SGDFromInit(dist, lo)
    with torch.no_grad():
        a, s = lo.adapt(b["xs"], b["ys"], 3), sgd.adapt(b["xs"], b["ys"], 3)
    assert all(torch.allclose(a[k], s[k], atol=1e-6) for k in a)
    assert not torch.allclose(a["w0"], lo.model.w0.expand_as(a["w0"]))  # the steps did move the weights


def test_meta_training_lowers_the_query_loss_after_the_unrolled_steps():
    dist, lo = learner(inner_lr=0.01, meta_batch=8)
    opt = torch.optim.Adam(lo.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(2)
    test = dist.sample(100, torch.Generator().manual_seed(3), "test")

    def after_steps():
        with torch.no_grad():
            out = lo.predict(lo.adapt(test["xs"], test["ys"]), test["xq"])
        return task_loss("regression", out, test["yq"]).mean()
    before = after_steps()
    for _ in range(60):
        lo.meta_update(dist.sample(8, gen), opt)
    assert after_steps() < 0.95 * before  # 60 of the 20,000 iterations a run takes: the start of a descent


def test_task_conditioning_changes_the_update_for_the_same_gradients(monkeypatch):
    """Two copies of one task (the same gradients) given two different support-set codes end in
    different weights only when the optimizer is task-conditioned."""
    for conditioned in (False, True):
        dist, lo = learner(task_conditioned=conditioned)
        one = dist.sample(1, torch.Generator().manual_seed(4))
        xs, ys = one["xs"].expand(2, -1, -1), one["ys"].expand(2, -1, -1)
        if conditioned:
            codes = torch.stack([torch.zeros(16), torch.ones(16)])
            monkeypatch.setattr(lo, "_task_context", lambda xs, ys: codes)
        with torch.no_grad():
            lo.out.weight.normal_()  # an LSTM whose output matters
            w = lo.adapt(xs, ys, 2)["w1"]
        assert torch.allclose(w[0], w[1]) != conditioned


def test_learned_opt_evaluates_beside_sgd_from_the_same_init(cli, tmp_path):
    run = tmp_path / "run"
    code, _, err = cli("train", "learned-opt", "--env", "sinusoid", "--run-dir", run, "--quiet", "--device", "cpu",
                       "--set", "agent.iterations=4", "--set", "agent.log_every=2", "--set", "agent.meta_batch=2",
                       "--set", "agent.hidden=8")
    assert code == 0, err
    code, out, err = cli("eval", run, "--tasks", 20)
    assert code == 0, err
    res = json.loads((run / "eval.json").read_text())["results"]
    assert set(res) == {"learned-opt", "learned-opt (sgd (same init and rate))"}
    lo, sgd = res["learned-opt"], res["learned-opt (sgd (same init and rate))"]
    assert [p["x"] for p in lo["curve"]["points"]] == [0, 1, 5, 10] == [p["x"] for p in sgd["curve"]["points"]]
    assert lo["curve"]["points"][0]["mean"] == pytest.approx(sgd["curve"]["points"][0]["mean"])  # same init, tasks


def test_task_conditioned_classification_is_a_user_error(cli):
    code, _, err = cli("train", "learned-opt", "--env", "glyphs", "--set", "agent.task_conditioned=true", "--quiet")
    assert code == 2 and "task_conditioned" in err
