import json

import pytest
import torch

from metarl.agents.maml import MAMLConfig, MAMLLearner, repeat_tasks
from metarl.config import build
from metarl.distributions import Categorical
from metarl.envs.navigation import NavigationConfig, NavigationEnv
from metarl.functional import params_of
from metarl.linear_baseline import fit_predict
from metarl.trpo import conjugate_gradient, flat, trpo_step


def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(6, 6, generator=g, dtype=torch.float64)
    A = M @ M.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: A @ v, b, iters=20)
    assert torch.allclose(A @ x, b, atol=1e-8)


def test_trpo_step_respects_kl_bound_and_improves_surrogate():
    g = torch.Generator().manual_seed(1)
    logits = torch.nn.Parameter(torch.randn(32, 4, generator=g))
    actions = torch.randint(4, (32,), generator=g)
    adv = torch.randn(32, generator=g)
    old = Categorical(logits.detach().clone())
    old_logp = old.log_prob(actions)

    def closure():
        new = Categorical(logits)
        ratio = (new.log_prob(actions) - old_logp).exp()
        return -(ratio * adv).mean(), old.kl(new).mean()

    before, _ = closure()
    stats = trpo_step([logits], closure, max_kl=0.01)
    after, kl = closure()
    assert stats["accepted"] == 1.0
    assert after.item() < before.item()
    assert kl.item() <= 0.01 + 1e-6


def test_linear_baseline_recovers_a_linear_function_of_its_features():
    g = torch.Generator().manual_seed(2)
    obs = torch.randn(3, 10, 4, 2, generator=g)
    t = (torch.arange(10.0) / 100).view(1, 10, 1)
    target = 2 * obs[..., 0] - obs[..., 1] ** 2 + 5 * t + 1.0
    assert torch.allclose(fit_predict(obs, target), target, atol=1e-3)


def _learner(**agent):
    cfg = build(MAMLConfig, {"rollouts": 3, "hidden_size": 8, **agent}, "agent")
    env = NavigationEnv(build(NavigationConfig, {"horizon": 6}, "env"), 2 * 3, "cpu")
    return cfg, env, MAMLLearner(env, cfg, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("first_order", [False, True])
def test_batched_adaptation_equals_per_task_autograd(first_order):
    """The vmapped inner step on a meta-batch equals theta - lr * grad of each task's own
    vanilla policy-gradient loss, and its meta-gradient matches a hand-written autograd version."""
    cfg, env, L = _learner(inner_lr=0.3)
    env.set_tasks(repeat_tasks({"goal": torch.tensor([[0.2, -0.3], [-0.4, 0.1]])}, 3))
    params = {k: v.detach() for k, v in params_of(L.net).items()}
    data = L.rollout(env, params, False, torch.Generator().manual_seed(3))
    data["adv"] = L.advantages(data)
    meta = params_of(L.net)
    adapted = L.adapt(meta, data, per_task=False, first_order=first_order)
    outer = sum(v.pow(2).sum() for v in adapted.values())
    g_vmap = torch.autograd.grad(outer, list(meta.values()))
    names = list(meta)
    total = 0
    for i in range(2):
        logp = L.dist(L.net(data["obs"][i])).log_prob(data["actions"][i])
        loss = -(logp * data["adv"][i]).mean()
        grads = torch.autograd.grad(loss, list(meta.values()), create_graph=not first_order)
        for n, p, gr in zip(names, meta.values(), grads):
            a = p - 0.3 * (gr.detach() if first_order else gr)
            assert torch.allclose(a, adapted[n][i], atol=1e-5)
            total = total + a.pow(2).sum()
    g_loop = torch.autograd.grad(total, list(meta.values()))
    assert torch.allclose(flat(g_vmap), flat(g_loop), atol=1e-4)


@pytest.mark.parametrize("unit", [True, False])
def test_unit_actions_scale_the_policy_to_the_env_box(unit):
    """With unit_actions (the default) the policy acts in [-1, 1], which the learner maps onto
    the navigation box [-0.1, 0.1] (clipped) before the env sees it; without, it acts in the box."""
    _, env, L = _learner(unit_actions=unit)
    a = torch.tensor([[1.0, -1.0], [0.5, 0.0], [3.0, -0.05]])
    want = torch.tensor([[0.1, -0.1], [0.05, 0.0], [0.1, -0.005]]) if unit else a
    assert torch.allclose(L.env_actions(a), want)
    # In a rollout the env moves by the mapped action: a policy whose mean is pinned at 0.5 with a
    # tiny std moves 0.05 per step under unit_actions, 0.1 (the clip) without.
    with torch.no_grad():
        L.net.head.linear.weight.zero_()
        L.net.head.linear.bias.fill_(0.5)
        L.net.head.log_std.fill_(-20.0)
    env.set_tasks(repeat_tasks({"goal": torch.tensor([[-0.5, -0.5], [-0.5, -0.5]])}, 3))
    params = {k: v.detach() for k, v in params_of(L.net).items()}
    data = L.rollout(env, params, False, torch.Generator().manual_seed(0))
    assert torch.allclose(data["actions"], torch.tensor(0.5), atol=1e-6)  # stored in the policy's units
    step = 0.05 if unit else 0.1
    assert torch.allclose(data["obs"][0, 1:], torch.arange(1, 6).view(5, 1, 1).expand(5, 3, 2) * step, atol=1e-5)


def test_adaptation_returns_have_one_column_per_step():
    from metarl.agents.maml import MAMLEvalLearner
    cfg, env, L = _learner()
    ev = MAMLEvalLearner(L, cfg, torch.Generator().manual_seed(0))
    out = ev.adaptation_returns(env, {"goal": torch.tensor([[0.2, -0.3], [-0.4, 0.1]])}, steps=3)
    assert out.shape == (2, 4) and torch.isfinite(out).all()


@pytest.mark.parametrize("agent", ["maml-trpo", "maml-ppo"])
def test_smoke_train_and_eval_maml_on_navigation(cli, tmp_path, agent):
    rd = tmp_path / agent
    code, _, err = cli("train", agent, "--env", "navigation-2d", "--set", "env.horizon=10",
                       "--set", "agent.iterations=3", "--set", "agent.meta_batch=4", "--set", "agent.rollouts=4",
                       "--set", "agent.hidden_size=8", "--set", "agent.checkpoint_every=1",
                       "--quiet", "--device", "cpu", "--run-dir", rd)
    assert code == 0, err
    metrics = [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and all("pre_return" in m and "post_return" in m for m in metrics)
    if agent == "maml-trpo":
        assert all(m["kl"] <= 0.01 + 1e-6 for m in metrics)
    code, out, err = cli("eval", rd, "--tasks", "10")
    assert code == 0, err
    for row in (f"{agent} (0 steps)", f"{agent} (1 step)", f"{agent} (3 steps)", "random"):
        assert row in out
    report = json.loads((rd / "eval.json").read_text())
    assert len(report["results"][agent]["per_step_return"]) == 4
    assert (rd / "eval_adaptation.png").stat().st_size > 1000
    # the MAML paper's protocol: evaluate the iteration with the best post-adaptation return
    best_it = max(range(3), key=lambda i: metrics[i]["post_return"]) + 1
    best = torch.load(rd / "checkpoints" / "best.pt", weights_only=False)
    assert best["iteration"] == best_it and best["select_value"] == metrics[best_it - 1]["post_return"]
    code, out, err = cli("eval", rd, "--tasks", "10", "--checkpoint", "best", "--baselines", "none")
    assert code == 0, err
    report = json.loads((rd / "eval.json").read_text())
    assert report["checkpoint"] == "best" and report["checkpoint_iteration"] == best_it


def test_best_checkpoint_of_an_agent_without_selection_metric_is_a_clear_error(cli, tmp_path, tiny):
    rd = tmp_path / "rl2"
    assert cli("train", "rl2", "--env", "bandit", "--set", "agent.total_steps=400", "--run-dir", rd, *tiny)[0] == 0
    code, _, err = cli("eval", rd, "--tasks", "10", "--checkpoint", "best")
    assert code == 2 and "no best checkpoint" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("agent,sets,needle", [
    ("maml-trpo", ["agent.outer=ppo"], "maml-ppo"),
    ("maml-ppo", ["agent.hvp_tasks=0.5"], "hvp_tasks"),
    ("maml-trpo", ["agent.inner_lr=-1"], "inner_lr"),
    ("maml-trpo", ["agent.activation=sigmoid"], "activation"),
])
def test_maml_bad_input_is_one_line(cli, tmp_path, agent, sets, needle):
    args = ["train", agent, "--env", "navigation-2d", "--quiet", "--run-dir", tmp_path / "x"]
    for s in sets:
        args += ["--set", s]
    code, _, err = cli(*args)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_inner_loop_bench_reports_stable_keys(cli):
    code, out, err = cli("bench", "inner-loop", "--json")
    assert code == 0, err
    r = json.loads(out)
    f = r["figures"]
    assert r["bench"] == "inner-loop" and {"vmap_tasks_per_s", "loop_tasks_per_s", "speedup"} <= set(f)
    assert f["speedup"] == pytest.approx(f["vmap_tasks_per_s"] / f["loop_tasks_per_s"])


def test_linear_baseline_survives_degenerate_observations():
    """An agent frozen at its goal sends identical observations: the ridge fit must not raise."""
    obs = torch.zeros(2, 10, 3, 2)
    obs[1] = 0.25
    ret = torch.randn(2, 10, 3, generator=torch.Generator().manual_seed(0))
    v = fit_predict(obs, ret)
    assert torch.isfinite(v).all() and v.shape == ret.shape
