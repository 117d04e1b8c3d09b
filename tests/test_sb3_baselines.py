"""sb3-contrib RecurrentPPO on the RL² trial env: the VecEnv contract, training, evaluation, resume."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("sb3_contrib")

from metarl.agents.sb3_baselines import trial_vec_env  # noqa: E402
from metarl.config import build  # noqa: E402
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


@pytest.mark.slow
def test_ppo_from_scratch_learns_within_each_task_and_is_opt_in(cli, tmp_path):
    """One SB3 PPO per held-out task, trained during the trial: on bandits where one arm always
    pays and the other never does, it must end a 1000-pull trial pulling that arm well above
    chance (SB3's defaults learn slowly: a 100-pull trial is too short to show it)."""
    from metarl.agents.sb3_scratch import PPOFromScratch
    cfg = build(BERNOULLI_BANDIT.config_cls, {"k": 2, "n": 1000}, "env")
    env = BERNOULLI_BANDIT.make_env(cfg, 2, torch.device("cpu"), torch.Generator().manual_seed(0))
    env.set_tasks({"means": torch.tensor([[1.0, 0.0], [0.0, 1.0]])})
    policy = PPOFromScratch(env, cfg, seed=0)
    policy.reset(2, "cpu")
    obs, rewards = env.reset(), []
    for _ in range(1000):
        a = policy.act(obs)
        next_obs, r, d = env.step(a)
        policy.observe(a, r, d, next_obs)
        rewards.append(r)
        obs = next_obs
    early, late = torch.stack(rewards[:100]).mean(), torch.stack(rewards[-100:]).mean()
    assert policy.models[0]._n_updates > 0 and early < 0.6 and late > 0.7  # chance is 0.5
    # opt-in: not among 'all', runs when named, and its per-task scores reach eval.json
    run = tmp_path / "run"
    assert cli("train", "rl2", "--env", "bandit", "--set", "agent.total_steps=320", "--set", "agent.num_envs=16",
               "--set", "agent.hidden_size=16", "--run-dir", run, "--quiet", "--device", "cpu")[0] == 0
    assert cli("eval", run, "--tasks", 20)[0] == 0
    assert "ppo-scratch" not in json.loads((run / "eval.json").read_text())["results"]
    code, _, err = cli("eval", run, "--tasks", 20, "--baselines", "ppo-scratch,greedy")
    assert code == 0, err
    assert len(json.loads((run / "eval.json").read_text())["results"]["ppo-scratch"]["scores"]) == 20


# ---- multi-task PPO: pretrained on the training tasks, evaluated fine-tuned and zero-shot ----------

MT = ["--set", "env.horizon=10", "--set", "env.goal_low=0.2", "--set", "env.goal_high=0.3",
      "--set", "agent.num_envs=32", "--set", "agent.hidden_size=32", "--quiet", "--device", "cpu"]


def test_obs_only_vec_env_gives_plain_episodes_in_fresh_tasks():
    cfg = build(NAVIGATION.config_cls, {"horizon": 3, "episodes": 2}, "env")
    venv = trial_vec_env(NAVIGATION, cfg, 4, seed=0, obs_only=True)
    obs = venv.reset()
    assert obs.shape == (4, 2) == (4, venv.observation_space.shape[0]) and np.allclose(obs, 0)
    goals = venv.trial.env.goal.clone()
    total = np.zeros(4)
    for t in range(3):  # one episode (not the 2-episode trial) is one SB3 episode
        venv.step_async(np.ones((4, 2), dtype=np.float32))
        obs, r, done, infos = venv.step_wait()
        total += r
        assert done.all() == (t == 2) and (t == 2 or np.allclose(obs, 0.1 * (t + 1), atol=1e-6))
    assert [i["episode"]["r"] for i in infos] == pytest.approx(total.tolist()) and np.allclose(obs, 0)
    assert not torch.equal(venv.trial.env.goal, goals)  # the next episode is in new training tasks


@pytest.mark.slow
def test_multitask_ppo_pretrains_then_evaluates_zero_shot_and_fine_tuned(cli, tmp_path):
    """Goals all lie up and to the right: the pretrained policy heads there zero-shot and beats random
    clearly; fine-tuning starts from exactly the pretrained weights; runs are seeded."""
    from metarl.agents.multitask_ppo import MULTITASK_PPO
    from metarl.rundir import load_checkpoint
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        code, _, err = cli("train", "multitask-ppo", "--env", "navigation-2d", "--set", "agent.total_steps=6000",
                           "--run-dir", run, *MT)
        assert code == 0, err
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    code, _, err = cli("eval", a, "--tasks", 30, "--baselines", "random")
    assert code == 0, err
    res = json.loads((a / "eval.json").read_text())["results"]
    assert set(res) == {"multitask-ppo", "multitask-ppo (zero-shot)", "random"}
    assert all(len(r["scores"]) == 30 for r in res.values())
    assert res["multitask-ppo (zero-shot)"]["total"]["mean"] > res["random"]["total"]["mean"] + 2
    ck = load_checkpoint(a, map_location="cpu")
    cfg = build(NAVIGATION.config_cls, {"horizon": 10}, "env")
    agent_cfg = build(MULTITASK_PPO.config_cls, {"num_envs": 32, "hidden_size": 32}, "agent")
    fine = MULTITASK_PPO.load_eval_policy(ck, NAVIGATION, cfg, agent_cfg, "cpu", 0)
    fine.reset(2, "cpu")
    env = NAVIGATION.make_env(cfg, 2, torch.device("cpu"), torch.Generator())
    zero = MULTITASK_PPO.extra_eval(ck, NAVIGATION, cfg, agent_cfg, "cpu", 0)["zero-shot"](env).policy
    for k, v in zero.state_dict().items():
        assert torch.equal(fine.models[1].policy.state_dict()[k], v)
    # fine-tuning moves each task's copy: after its first update (every 5 steps at horizon 10) it differs
    env.set_tasks({"goal": torch.tensor([[0.25, 0.25], [0.3, 0.2]])})
    obs = env.reset()
    for _ in range(fine.n_steps):
        a = fine.act(obs)
        nxt, r, d = env.step(a)
        fine.observe(a, r, d, nxt)
        obs = nxt
    tuned = fine.models[0].policy.state_dict()
    assert fine.models[0]._n_updates > 0 and any(not torch.equal(tuned[k], v) for k, v in zero.state_dict().items())


@pytest.mark.slow
def test_sac_from_scratch_trains_per_task_in_bounds_and_is_opt_in(cli, tmp_path):
    """One SB3 SAC per held-out task: uniform warm-up actions, then a gradient step per env step, each
    model on its own task's transitions only, actions within the env's bounds; opt-in for eval."""
    from metarl.agents.sb3_scratch import SACFromScratch
    cfg = build(NAVIGATION.config_cls, {"horizon": 60, "episodes": 2}, "env")
    env = NAVIGATION.make_env(cfg, 2, torch.device("cpu"), torch.Generator().manual_seed(0))
    env.set_tasks({"goal": torch.tensor([[0.3, 0.3], [-0.3, -0.3]])})
    policy = SACFromScratch(env, cfg, seed=0)
    policy.reset(2, "cpu")
    obs = env.reset()
    for t in range(120):
        a = policy.act(obs)
        assert a.abs().max() <= 0.1 + 1e-6  # the env's max action
        nxt, r, d = env.step(a)
        policy.observe(a, r, d, nxt)
        obs = nxt
    m0, m1 = policy.models
    assert m0._n_updates == m1._n_updates == 120 - m0.learning_starts + 1
    assert m0.replay_buffer.size() == 120 and not np.allclose(m0.replay_buffer.rewards[:120], m1.replay_buffer.rewards[:120])
    run = tmp_path / "run"
    assert cli("train", "rl2", "--env", "navigation-2d", "--set", "env.horizon=5", "--set", "agent.total_steps=160",
               "--set", "agent.num_envs=16", "--set", "agent.hidden_size=8", "--run-dir", run, "--quiet",
               "--device", "cpu")[0] == 0
    assert cli("eval", run, "--tasks", 3)[0] == 0
    assert "sac-scratch" not in json.loads((run / "eval.json").read_text())["results"]
    code, _, err = cli("eval", run, "--tasks", 3, "--baselines", "sac-scratch")
    assert code == 0, err
    assert len(json.loads((run / "eval.json").read_text())["results"]["sac-scratch"]["scores"]) == 3
    code, _, err = cli("eval", run, "--tasks", 3, "--baselines", "sac-scratch,greedy")
    assert code == 2 and "does not apply" in err
