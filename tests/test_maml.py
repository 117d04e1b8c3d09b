import json

import pytest
import torch

from metarl.agents.maml import MAMLConfig, MAMLLearner, repeat_tasks
from metarl.config import build
from metarl.envs.navigation import NavigationConfig, NavigationEnv
from metarl.functional import params_of
from metarl.rl.distributions import Categorical
from metarl.rl.linear_baseline import fit_predict
from metarl.rl.trpo import conjugate_gradient, flat, trpo_step


def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(6, 6, generator=g, dtype=torch.float64)
    A = M @ M.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x, ax = conjugate_gradient(lambda v: A @ v, b, iters=20)
    assert torch.allclose(A @ x, b, atol=1e-8)
    x, ax = conjugate_gradient(lambda v: A @ v, b, iters=3)  # unconverged: A x still from the residual
    assert torch.allclose(ax, A @ x, atol=1e-10)


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


def test_line_search_in_pieces_decides_as_the_whole_and_stops_kl_bound_trials_early():
    """Pieces summing to the closure: the same accepted step, loss and KL, while each trial whose
    KL sum passes the bound stops at that piece."""
    from metarl.rl.trpo import line_search
    x = torch.nn.Parameter(torch.zeros(4))
    weights = torch.tensor([0.4, 0.3, 0.2, 0.1])
    calls = []

    def pieces():
        for j in range(4):
            calls.append(j)
            yield -weights[j] * x[j], weights[j] * 0.05 * x[j] ** 2

    def closure():
        return -(weights * x).sum(), (weights * 0.05 * x ** 2).sum()
    step = torch.ones(4)
    whole = line_search([x], closure, step, 0.0, max_kl=0.01, ratio=0.8)
    x.data.zero_()
    parted = line_search([x], closure, step, 0.0, max_kl=0.01, ratio=0.8, parts=pieces)
    assert whole[0] and whole[4] > 1  # accepted after backtracking: the test means something
    assert whole[:2] == parted[:2] and whole[4] == parted[4]
    assert parted[2] == pytest.approx(whole[2]) and parted[3] == pytest.approx(whole[3])
    assert len(calls) < 4 * parted[4]  # rejected trials stopped before the last piece
    assert calls[-4:] == [0, 1, 2, 3]  # the accepted trial summed every piece


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


def _nav_batch(L, env, seed=3):
    """Pre-adaptation rollouts of two navigation tasks with advantages and sampling log-probs."""
    env.set_tasks(repeat_tasks({"goal": torch.tensor([[0.2, -0.3], [-0.4, 0.1]])}, 3))
    params = {k: v.detach() for k, v in params_of(L.net).items()}
    data = L.rollout(env, params, False, torch.Generator().manual_seed(seed))
    data["adv"] = L.advantages(data)
    with torch.no_grad():
        data["old_logp"] = L.dist(L.forward(params, data["obs"], False)).log_prob(data["actions"])
    return data


def test_lvc_inner_step_equals_vanilla_and_adds_the_score_outer_product_to_the_meta_gradient():
    """ProMP's LVC objective mean(pi / pi_old * A) has the vanilla policy gradient at the sampling
    parameters, so the adapted parameters are the same; its Hessian adds mean(A g g^T) (g the
    per-sample score), so the meta-gradient of f(theta') = |theta'|^2 gains
    -lr * mean(A g (g . 2 theta')) per task."""
    cfg, env, L = _learner(inner_lr=0.3)
    data = _nav_batch(L, env)
    meta = params_of(L.net)
    names = list(meta)
    vanilla = L.adapt(meta, {k: v for k, v in data.items() if k != "old_logp"}, per_task=False)
    lvc = L.adapt(meta, data, per_task=False)
    for n in names:
        assert torch.allclose(vanilla[n], lvc[n], atol=1e-6)
    outer = lambda a: sum(v.pow(2).sum() for v in a.values())  # noqa: E731
    g_van = flat(torch.autograd.grad(outer(vanilla), list(meta.values())))
    g_lvc = flat(torch.autograd.grad(outer(lvc), list(meta.values())))
    want = torch.zeros_like(g_van)
    for i in range(2):
        u = flat([2 * lvc[n][i].detach() for n in names])  # d outer / d theta'_i
        obs, act, adv = data["obs"][i].reshape(-1, 2), data["actions"][i].reshape(-1, 2), data["adv"][i].reshape(-1)
        for t in range(obs.shape[0]):
            score = flat(torch.autograd.grad(L.dist(L.net(obs[t])).log_prob(act[t]), list(meta.values())))
            # d theta'/d theta = I - lr * H with H the Hessian of the inner LOSS -mean(ratio * A)
            want += 0.3 * adv[t] * score * (score @ u) / obs.shape[0]
    assert not torch.allclose(g_lvc, g_van, atol=1e-4)
    assert torch.allclose(g_lvc - g_van, want, atol=1e-4)


def test_adapt_log_std_off_keeps_the_meta_log_std_and_adapts_the_rest_the_same():
    _, env, L_on = _learner(inner_lr=0.3)
    _, _, L_off = _learner(inner_lr=0.3, adapt_log_std=False)
    L_off.net.load_state_dict(L_on.net.state_dict())
    data = _nav_batch(L_on, env)
    on = L_on.adapt(params_of(L_on.net), data, per_task=False)
    off = L_off.adapt(params_of(L_off.net), data, per_task=False)
    meta_std = L_off.net.head.log_std.detach()
    assert torch.equal(off["head.log_std"], meta_std.expand_as(off["head.log_std"]))
    assert not torch.allclose(on["head.log_std"], off["head.log_std"])
    for n in on:
        if n != "head.log_std":
            assert torch.allclose(on[n], off[n], atol=1e-6), n  # one step: the same gradient at theta
    # a second step from the adapted (per-task) params still leaves the log-std alone
    off2 = L_off.adapt(off, data, per_task=True, steps=1)
    assert torch.equal(off2["head.log_std"], off["head.log_std"])


@pytest.mark.parametrize("per_task", [True, False])
def test_row_policy_of_any_block_of_sub_envs_acts_as_the_whole(per_task):
    """MLPRows.rows(lo, hi) (what a simulation worker runs) gives the same actions for its
    sub-envs as the whole policy, for blocks that start or end mid-task; actions are the
    distribution's mean plus std times the pre-drawn noise."""
    from metarl.agents.maml import MLPRows
    cfg, env, L = _learner(rollouts=4)
    g = torch.Generator().manual_seed(5)
    params = {k: v.detach() for k, v in params_of(L.net).items()}
    if per_task:  # three tasks with different parameters
        params = {k: v + 0.1 * torch.randn(3, *v.shape, generator=g) for k, v in params.items()}
    noise = L.net.head.draw_noise((2, 12), g)
    whole = MLPRows(L.net, params, per_task, 4, noise, L.bounds)
    obs = torch.randn(12, 2, generator=g)
    want = whole.act(obs, 1)
    out = L.forward(params, obs.view(3, 4, 2), True).reshape(12, -1) if per_task else L.forward(params, obs, False)
    assert torch.allclose(want, L.dist(out).mean + L.dist(out).log_std.exp() * noise[1], atol=1e-6)
    for cuts in ([0, 12], [0, 5, 12], [0, 2, 3, 11, 12], [0, 4, 8, 12]):
        got = torch.cat([whole.rows(lo, hi).act(obs[lo:hi], 1) for lo, hi in zip(cuts, cuts[1:])])
        assert torch.allclose(got, want, atol=1e-6), cuts
    # a slice of a slice (a worker's chunk of its block)
    assert torch.allclose(whole.rows(1, 10).rows(2, 8).act(obs[3:9], 1), want[3:9], atol=1e-6)
    assert torch.allclose(whole.rows(0, 5).to_env(want[:5]), L.env_actions(want[:5]))


@pytest.mark.parametrize("discrete,activation", [(False, "tanh"), (True, "relu")])
def test_policy_sampler_equals_the_modules(discrete, activation):
    """PolicyMLP.sampler (a worker's lean forward pass) samples what head.dist(net(obs))
    .sample_with(noise) samples, for Gaussian and Categorical heads and either activation."""
    import gymnasium as gym
    from metarl.agents.maml import PolicyMLP
    g = torch.Generator().manual_seed(1)
    space = gym.spaces.Discrete(5) if discrete else gym.spaces.Box(-1, 1, (3,))
    cfg = build(MAMLConfig, {"hidden_size": 16, "layers": 3, "activation": activation}, "agent")
    net = PolicyMLP(4, space, cfg, g).requires_grad_(False)
    if not discrete:
        net.head.log_std.fill_(-0.7)
    obs = torch.randn(9, 4, generator=g)
    noise = net.head.draw_noise((9,), g)
    got = net.sampler(dict(net.named_parameters()))(obs, noise)
    want = net.head.dist(net(obs)).sample_with(noise)
    assert got.shape == want.shape
    assert torch.equal(got, want) if discrete else torch.allclose(got, want, atol=1e-6)


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


def test_evaluation_step_sizes_and_rollouts_follow_the_eval_options():
    """eval_lr / eval_later_lr / eval_rollouts (the MAML paper's test schedule: 0.5, then 0.25,
    40 rollouts): the first step uses eval_lr, later ones eval_later_lr, on eval_rollouts
    rollouts per task; unset, every step uses inner_lr on the training rollouts."""
    from metarl.agents.maml import MAMLEvalLearner
    goals = {"goal": torch.tensor([[0.2, -0.3], [-0.4, 0.1]])}
    for opts, lrs, R in (({}, [0.1, 0.1, 0.1], 3), ({"eval_lr": 0.5, "eval_later_lr": 0.25, "eval_rollouts": 5},
                                                       [0.5, 0.25, 0.25], 5)):
        cfg, _, L = _learner(**opts)
        env = NavigationEnv(build(NavigationConfig, {"horizon": 6}, "env"), 2 * R, "cpu")
        seen, adapt = [], L.adapt
        L.adapt = lambda params, data, *a, lr=None, **kw: (seen.append((lr, data["rewards"].shape[-1])),
                                                             adapt(params, data, *a, lr=lr, **kw))[1]
        ev = MAMLEvalLearner(L, cfg, torch.Generator().manual_seed(0))
        assert ev.rollouts == R
        ev.adaptation_returns(env, goals, steps=3)
        assert seen == [(lr, R) for lr in lrs]
    # a larger first step moves the parameters further
    cfg, env, L = _learner()
    env.set_tasks(repeat_tasks(goals, 3))
    params = {k: v.detach() for k, v in params_of(L.net).items()}
    data = L.rollout(env, params, False, torch.Generator().manual_seed(3))
    data["adv"] = L.advantages(data)
    small, big = (L.adapt(params, data, False, 1, True, lr=lr) for lr in (0.1, 0.5))
    k = "body.0.weight"
    assert torch.allclose(big[k] - params[k], 5 * (small[k] - params[k]), atol=1e-5)


@pytest.mark.parametrize("agent", [pytest.param("maml-trpo", marks=pytest.mark.slow), "maml-ppo"])
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
    curve = report["results"][agent]["curve"]
    assert curve["x"] == "gradient steps" and [p["x"] for p in curve["points"]] == [0, 1, 2, 3]
    assert curve["points"][-1]["mean"] == report["results"][agent]["total"]["mean"]
    assert (rd / "eval_adaptation.png").stat().st_size > 1000
    # the MAML paper's protocol: evaluate the iteration with the best post-adaptation return
    # (the parameters that iteration started from, which earned its return: checkpoint "iteration" best_it)
    best_it = max(range(3), key=lambda i: metrics[i]["post_return"])
    best = torch.load(rd / "checkpoints" / "best.pt", weights_only=False)
    assert best["iteration"] == best_it and best["select_value"] == metrics[best_it]["post_return"]
    code, out, err = cli("eval", rd, "--tasks", "10", "--checkpoint", "best", "--baselines", "none")
    assert code == 0, err
    report = json.loads((rd / "eval_best.json").read_text())  # beside the latest checkpoint's eval.json
    assert report["checkpoint"] == "best" and report["checkpoint_iteration"] == best_it
    assert json.loads((rd / "eval.json").read_text())["checkpoint"] == "latest"
    if agent == "maml-trpo":  # evaluation options may change at eval; training options may not
        code, _, err = cli("eval", rd, "--tasks", "10", "--baselines", "none", "--set", "agent.eval_rollouts=2",
                           "--set", "agent.eval_later_lr=0.05")
        assert code == 0, err
        assert json.loads((rd / "eval.json").read_text())["eval_options"] == {"eval_rollouts": 2, "eval_later_lr": 0.05}
        code, _, err = cli("eval", rd, "--tasks", "10", "--set", "agent.inner_lr=0.5")
        assert code == 2 and "only evaluation options (agent.eval_*)" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
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


def _tiny_trainer(**agent):
    from metarl.agents.maml import MAMLTrainer
    from metarl.envs.navigation import NAVIGATION
    cfg = build(MAMLConfig, {"meta_batch": 4, "rollouts": 3, "hidden_size": 16, "activation": "tanh", **agent}, "agent")
    return MAMLTrainer(NAVIGATION, build(NavigationConfig, {"horizon": 8}, "env"), cfg, 0, torch.device("cpu"))


def test_gauss_newton_hvp_equals_double_backward_through_the_inner_step():
    """At the sampling parameters the outer KL is at its minimum, so J^T F J is its exact Hessian,
    second derivatives of the inner step included: equal to double backward, vector by vector."""
    from metarl.rl.trpo import gauss_newton_hvp, kl_hvp
    tr = _tiny_trainer()
    _, pre, post = tr._sample()
    params = list(tr.net.parameters())
    out = tr._post_outputs(pre, post)
    kl = post["old_dist"].kl(tr.learner.dist(out)).mean()
    exact = kl_hvp(kl, params, 1e-5)
    gn = gauss_newton_hvp(out, params, lambda o: post["old_dist"].kl(tr.learner.dist(o)).mean(), 1e-5)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(sum(p.numel() for p in params), generator=g)
        ref = exact(v)
        assert ref.norm() > 1e-3 * v.norm()  # the test means something
        assert torch.allclose(gn(v), ref, rtol=1e-4, atol=1e-6 * ref.abs().max().item())


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_trpo_outer_step_with_gauss_newton_curvature_equals_the_double_backward_step(float64):
    """The MAML-TRPO update (Gauss-Newton products, step size from CG's residual) moves the
    meta-parameters where the textbook step (double backward, one more product) moves them. In
    float64: ten CG iterations on a damping of 1e-5 amplify float32 rounding (either way) to a
    few percent of the direction."""
    from metarl.rl.trpo import trpo_step
    a, b = _tiny_trainer(), _tiny_trainer()
    _, pre, post = a._sample()
    stats = a._trpo(pre, post, 0)
    cfg = b.cfg

    def closure():
        ratio, kl = b._outer_terms(pre, post)
        return -(ratio * post["adv"]).mean(), kl.mean()
    ref = trpo_step(list(b.net.parameters()), closure, cfg.max_kl, cfg.cg_iters, cfg.cg_damping,
                    cfg.ls_backtracks, cfg.ls_ratio)
    assert stats["accepted"] == ref["accepted"] == 1.0 and stats["step_fraction"] == ref["step_fraction"]
    moved = flat(list(b.net.parameters())) - flat([p.detach() for p in _tiny_trainer().net.parameters()])
    assert moved.norm() > 0
    assert torch.allclose(flat(list(a.net.parameters())), flat(list(b.net.parameters())), atol=1e-4 * moved.abs().max().item())


@pytest.mark.parametrize("frac, expected", [(1.0, None), (0.5, [[0, 2], [1, 3]]), (0.25, [[0], [1]])])
def test_hvp_tasks_are_evenly_spaced_and_take_turns(frac, expected):
    tr = _tiny_trainer(hvp_tasks=frac)
    got = [tr.hvp_tasks(it) for it in range(2)]
    assert (got == [None, None]) if expected is None else [g.tolist() for g in got] == expected
