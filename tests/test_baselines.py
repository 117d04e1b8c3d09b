import pytest
import torch

from metarl.agents.bandit_baselines import UCB1, Greedy
from metarl.agents.gittins import GittinsPolicy, gittins_table
from metarl.agents.mdp_baselines import PSRL, CertaintyEquivalent, plan
from metarl.config import build
from metarl.eval.trials import evaluate
from metarl.registry import BASELINES, ENVS, load, lookup


def test_gittins_index_matches_published_values():
    # Gittins, Glazebrook & Weber (2011), Table 8.x: gamma = 0.9, Beta(1, 1) -> 0.7029
    t = gittins_table(10, 0.9)
    assert abs(t[1, 1] - 0.7029) < 2e-3
    assert t[2, 1] > t[1, 1] > t[1, 2]                 # more successes, higher index
    assert t[1, 1] > 0.5 and t[5, 5] > 0.5             # exploration bonus over the mean


def _bandit(k=3, n=6):
    spec = lookup("env", ENVS, "bandit")
    cfg = build(spec.config_cls, {"k": k, "n": n}, "env")
    return spec, cfg, spec.make_env(cfg, 2, "cpu", torch.Generator())


def test_greedy_picks_highest_posterior_mean():
    spec, cfg, env = _bandit()
    g = Greedy(env, cfg, 0)
    g.reset(2, "cpu")
    g.observe(torch.tensor([1, 2]), torch.tensor([1.0, 0.0]), torch.zeros(2, dtype=torch.bool), None)
    a = g.act(torch.zeros(2, 1))
    assert a[0] == 1 and a[1] != 2  # env 1: arm 2 failed, arms 0 and 1 tie at 0.5


def test_ucb1_pulls_every_arm_once_first():
    spec, cfg, env = _bandit()
    u = UCB1(env, cfg, 0)
    u.reset(2, "cpu")
    seen = []
    for _ in range(3):
        a = u.act(torch.zeros(2, 1))
        seen.append(a)
        u.observe(a, torch.ones(2), torch.zeros(2, dtype=torch.bool), None)
    assert sorted(torch.stack(seen)[:, 0].tolist()) == [0, 1, 2]


def test_plan_finds_the_better_finite_horizon_policy():
    # two states; action 1 in state 0 pays 0 now but moves to state 1 where action 0 pays 3/step
    P = torch.zeros(1, 2, 2, 2)
    P[0, 0, 0, 0] = P[0, 0, 1, 1] = P[0, 1, 0, 1] = P[0, 1, 1, 0] = 1.0
    R = torch.tensor([[[1.0, 0.0], [3.0, 0.0]]])
    pi = plan(P, R, 3)
    assert pi[0, 0, 0] == 1        # 3 steps to go: 0 + 3 + 3 beats 1 + 1 + 1
    assert pi[2, 0, 0] == 0        # 1 step to go: take the 1 now


@pytest.mark.parametrize("name,env,better_than_random", [
    ("greedy", "bandit", True), ("thompson", "bandit", True), ("gittins", "bandit", True),
    ("ucb1", "gaussian-bandit", True), ("psrl", "tabular-mdp", True), ("mdp-greedy", "tabular-mdp", True)])
def test_baselines_beat_random_on_held_out_tasks(name, env, better_than_random):
    spec = lookup("env", ENVS, env)
    cfg = build(spec.config_cls, {"n": 20} if "bandit" in env else {"n": 5}, "env")
    cls, rnd = lookup("baseline", BASELINES, name), load(BASELINES["random"].target)
    ours = evaluate(lambda e: cls(e, cfg, 0), spec, cfg, 300, 0, "cpu").returns.sum(1).mean()
    base = evaluate(lambda e: rnd(e, cfg, 0), spec, cfg, 300, 0, "cpu").returns.sum(1).mean()
    assert ours > base + 0.5


def test_psrl_posterior_concentrates_on_observed_transitions():
    spec = lookup("env", ENVS, "tabular-mdp")
    cfg = build(spec.config_cls, {"states": 2, "actions": 2}, "env")
    env = spec.make_env(cfg, 1, "cpu", torch.Generator())
    for cls in (PSRL, CertaintyEquivalent):
        p = cls(env, cfg, 0)
        p.reset(1, "cpu")
        p.trans[0, 0, 1, 1] = 1000.0
        P, _ = p.mdp()
        assert P[0, 0, 1, 1] > 0.99
        assert torch.allclose(P.sum(-1), torch.ones(1, 2, 2), atol=1e-5)


def test_gittins_refuses_gaussian_bandits():
    spec = lookup("env", ENVS, "gaussian-bandit")
    cfg = build(spec.config_cls, {}, "env")
    with pytest.raises(ValueError, match="Bernoulli"):
        GittinsPolicy(spec.make_env(cfg, 1, "cpu", torch.Generator()), cfg, 0)


def test_registry_targets_resolve():
    for table in (BASELINES, ENVS):
        for entry in table.values():
            assert load(entry.target) is not None
