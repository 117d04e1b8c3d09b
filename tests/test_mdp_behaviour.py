import torch

from metarl.agents.mdp_baselines import CertaintyEquivalent, optimal_q, plan
from metarl.config import build
from metarl.eval.mdp_behaviour import behaviour, episode_metrics
from metarl.eval.trials import evaluate, held_out_tasks
from metarl.registry import BASELINES, ENVS, load, lookup

SPEC = lookup("env", ENVS, "tabular-mdp")
CFG = build(SPEC.config_cls, {"n": 4}, "env")
TASKS, SEED = 400, 3


class Oracle:
    """Plans on the true MDPs of the held-out tasks (batched in order, as `behaviour` plays them)."""

    def __init__(self, env):
        tasks = held_out_tasks(SPEC, CFG, TASKS, SEED, "cpu")
        self.pi, self.H = plan(tasks["P"], tasks["R"], CFG.horizon), CFG.horizon

    def reset(self, num_envs, device):
        self.t = 0

    def act(self, obs):
        a = self.pi[self.t % self.H].gather(1, obs.argmax(1, keepdim=True)).squeeze(1)
        self.t += 1
        return a

    def observe(self, *args):
        pass


def _mean(per_episode):
    return [p["mean"] for p in per_episode]


def test_recorded_returns_equal_the_evaluation_protocols():
    psrl = lookup("baseline", BASELINES, "psrl")
    ev = evaluate(lambda e: psrl(e, CFG, SEED), SPEC, CFG, TASKS, SEED, "cpu")
    b = behaviour(lambda e: psrl(e, CFG, SEED), SPEC, CFG, TASKS, SEED, "cpu")
    assert torch.allclose(torch.tensor(_mean(b["return"]), dtype=torch.float64), ev.returns.double().mean(0),
                          atol=1e-4)


def test_the_oracle_has_no_regret_and_random_pays_the_gap():
    oracle = behaviour(Oracle, SPEC, CFG, TASKS, SEED, "cpu")
    assert _mean(oracle["regret"]) == [0.0] * CFG.n and _mean(oracle["optimal"]) == [1.0] * CFG.n
    rnd = load(BASELINES["random"].target)
    b = behaviour(lambda e: rnd(e, CFG, SEED), SPEC, CFG, TASKS, SEED, "cpu")
    for ret, reg in zip(b["return"], b["regret"]):  # E[return] = V*(s0) - E[regret], up to noise
        assert abs(b["oracle"]["mean"] - ret["mean"] - reg["mean"]) < 3 * (ret["ci_high"] - ret["ci_low"])
        assert reg["mean"] > 2.0
    # random tries new pairs in every episode, fewer as the trial goes on
    assert _mean(b["new_pairs"])[0] > _mean(b["new_pairs"])[-1] > 0


def test_certainty_equivalence_agrees_with_itself_and_psrl_less():
    ce = behaviour(lambda e: CertaintyEquivalent(e, CFG, SEED), SPEC, CFG, TASKS, SEED, "cpu")
    assert _mean(ce["agrees_with_ce"]) == [1.0] * CFG.n
    psrl = lookup("baseline", BASELINES, "psrl")
    ps = behaviour(lambda e: psrl(e, CFG, SEED), SPEC, CFG, TASKS, SEED, "cpu")
    assert max(_mean(ps["agrees_with_ce"])) < 0.95


def test_new_pairs_count_first_visits_in_trial_order():
    # one task, 2 states x 2 actions, 2 episodes of 2 steps: pairs (0,1) (1,0) | (0,1) (1,1)
    P = torch.full((1, 2, 2, 2), 0.5)
    R = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]])
    states, actions = torch.tensor([[0, 1, 0, 1]]), torch.tensor([[1, 0, 1, 1]])
    m = episode_metrics(P, R, states, actions, actions.clone(), torch.zeros(1, 2))
    assert m["new_pairs"].tolist() == [[2.0, 1.0]]
    Q = optimal_q(P, R, 2)
    assert m["optimal"].tolist() == [[1.0, 0.5]]
    assert torch.isclose(m["regret"][0, 1], Q[1, 0, 1].max() - Q[1, 0, 1, 1])
    assert torch.isclose(m["oracle"][0], Q[0, 0, 0].max())
