"""Meta-World's own tally, replayed by metarl.eval.success, against metaworld.evaluation itself."""
import numpy as np
import pytest
import torch

metaworld_evaluation = pytest.importorskip("metaworld.evaluation")

from metarl.eval.success import SuccessEvaluation, metaworld_tally, summarize_success  # noqa: E402


class ScriptedEpisodes:
    """A vector env whose evaluation episodes end and succeed as scripted: sub-env i plays
    episodes of lengths[i] steps with outcomes success[i], then fails at the horizon forever;
    the rest of the gymnasium vector-env surface metaworld.evaluation touches."""

    def __init__(self, class_names: list[str], lengths: np.ndarray, success: np.ndarray, horizon: int):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
        self.task_name = [ALL_V3_ENVIRONMENTS[n].__name__ for n in class_names]
        self.num_envs, self.lengths, self.succ, self.H = len(class_names), lengths, success, horizon

    def get_attr(self, name):
        return {"terminate_on_success": [False] * self.num_envs, "task_name": self.task_name}[name]

    def call(self, name, *args):
        pass

    def reset(self):
        self.t, self.ep = np.zeros(self.num_envs, int), np.zeros(self.num_envs, int)
        return np.zeros((self.num_envs, 1)), {}

    def step(self, actions):
        self.t += 1
        E = self.lengths.shape[1]
        length = np.where(self.ep < E, self.lengths[np.arange(self.num_envs), np.minimum(self.ep, E - 1)], self.H)
        ended = self.t >= length
        won = ended & (self.ep < E) & (self.succ[np.arange(self.num_envs), np.minimum(self.ep, E - 1)] > 0)
        info = {"final_info": {"episode": {"r": np.zeros(self.num_envs)}, "success": won.astype(float)}}
        self.t[ended], self.ep[ended] = 0, self.ep[ended] + 1
        return np.zeros((self.num_envs, 1)), np.zeros(self.num_envs), won, ended & ~won, info


class Idle:
    def eval_action(self, obs):
        return np.zeros((len(obs), 4))

    def reset(self, mask):
        pass


@pytest.mark.parametrize("seed", range(4))
def test_tally_equals_metaworlds_own_count(seed):
    """Two classes x four sub-envs (ML10's layout at meta-batch 20 has 4 per class), three
    evaluation episodes each, ending at success or at the horizon (many ties at the horizon):
    metaworld_tally gives each class the rate Meta-World's evaluator counts, not the per-task mean."""
    rng = np.random.default_rng(seed)
    H, E, classes = 50, 3, ["reach-v3", "push-v3"]
    names = [c for c in classes for _ in range(4)]
    success = (rng.random((8, E)) < 0.4).astype(float)
    first = np.where(success > 0, rng.integers(0, H, (8, E)), H)
    lengths = np.where(success > 0, first + 1, H)
    _, _, official, _ = metaworld_evaluation.evaluation(Idle(), ScriptedEpisodes(names, lengths, success, H), E)
    ev = SuccessEvaluation(names, list(range(8)), torch.tensor(success), torch.tensor(first),
                           torch.zeros(8, E), H, [0], torch.zeros(8, 1))
    groups, scores = metaworld_tally(ev, meta_batch=8)
    assert groups == classes
    assert scores.tolist() == pytest.approx([official[c] for c in classes])


def test_tally_favours_episodes_that_end_at_success():
    """One sub-env succeeds fast in every episode, three fail: per task 25%, Meta-World's count 100%
    (its three quick successes end before any failure)."""
    H = 500
    success = torch.tensor([[1.0, 1, 1]] + [[0.0, 0, 0]] * 3)
    first = torch.tensor([[10, 10, 10]] + [[H] * 3] * 3)
    ev = SuccessEvaluation(["reach-v3"] * 4, [0, 1, 2, 3], success, first, torch.zeros(4, 3), H, [0], torch.zeros(4, 1))
    s = summarize_success(ev)
    assert s["total"]["mean"] == pytest.approx(0.25)
    assert s["metaworld_tally"]["total"]["mean"] == pytest.approx(1.0)
    assert s["metaworld_tally"]["group_size"] == 20 and s["metaworld_tally"]["groups"] == 1

