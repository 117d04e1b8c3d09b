"""sb3-contrib RecurrentPPO on the RL² trial env: the VecEnv contract, training, evaluation, resume."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("sb3_contrib")

from metarl.config import build  # noqa: E402
from metarl.agents.sb3_baselines import trial_vec_env  # noqa: E402
from metarl.envs.bandits import BERNOULLI_BANDIT  # noqa: E402
from metarl.envs.navigation import NAVIGATION  # noqa: E402

RP = ["--set", "agent.num_envs=8", "--set", "agent.hidden_size=16", "--set", "agent.checkpoint_every=1",
      "--quiet", "--device", "cpu"]


def test_trial_vec_env_makes_a_trial_one_episode_with_rl2_inputs():
    cfg = build(BERNOULLI_BANDIT.config_cls, {"k": 3, "n": 4}, "env")
    venv = trial_vec_env(BERNOULLI_BANDIT, cfg, 5, seed=0)
    obs = venv.reset()
    assert obs.shape == (5, venv.observation_space.shape[0]) and venv.action_space.n == 3
    total = np.zeros(5)
    for t in range(4):
        venv.step_async(np.full(5, t % 3))
        obs, r, done, infos = venv.step_wait()
        total += r
        assert done.all() == (t == 3)
    assert [i["episode"]["r"] for i in infos] == pytest.approx(total.tolist())
    assert infos[0]["terminal_observation"][1 + 3] == r[0]  # previous reward sits after the one-hot action
    assert obs[:, 1:].sum() == 0  # the next trial starts: no previous action, reward or done
    assert venv.pop_trial_returns().tolist() == pytest.approx(total.tolist())


def test_continuous_actions_are_scaled_from_unit_box_to_env_bounds():
    cfg = build(NAVIGATION.config_cls, {"horizon": 3, "episodes": 1}, "env")
    venv = trial_vec_env(NAVIGATION, cfg, 2, seed=0)
    assert venv.action_space.low.tolist() == [-1, -1] and venv.action_space.high.tolist() == [1, 1]
    obs = venv.reset()
    venv.step_async(np.ones((2, 2), dtype=np.float32))
    obs2, *_ = venv.step_wait()
    assert np.allclose(obs2[:, :2] - obs[:, :2], 0.1, atol=1e-6)  # moved by the env's max action 0.1


def test_recurrent_ppo_trains_evaluates_and_is_seeded(cli, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        code, _, err = cli("train", "recurrent-ppo", "--env", "bandit", "--set", "agent.total_steps=240",
                           "--run-dir", run, *RP)
        assert code == 0, err
    lines = (a / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and lines == (b / "metrics.jsonl").read_text().splitlines()
    code, _, err = cli("eval", a, "--tasks", 50, "--baselines", "greedy")
    assert code == 0, err
    res = json.loads((a / "eval.json").read_text())["results"]
    assert res["recurrent-ppo"]["total"]["n"] == 50 and len(res["recurrent-ppo"]["scores"]) == 50
    assert 0 <= res["recurrent-ppo"]["total"]["mean"] <= 10
    # resume continues from the checkpoint to the new budget
    code, _, err = cli("train", "recurrent-ppo", "--env", "bandit", "--run-dir", a, "--resume",
                       "--set", "agent.total_steps=400", "--quiet")
    assert code == 0, err
    assert len((a / "metrics.jsonl").read_text().splitlines()) == 5


def test_recurrent_ppo_on_continuous_navigation(cli, tmp_path):
    run = tmp_path / "nav"
    code, _, err = cli("train", "recurrent-ppo", "--env", "navigation-2d", "--set", "env.horizon=5",
                       "--set", "agent.total_steps=80", "--run-dir", run, *RP)
    assert code == 0, err
    assert cli("eval", run, "--tasks", 10)[0] == 0
