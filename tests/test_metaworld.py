import numpy as np
import pytest
import torch

pytest.importorskip("metaworld")

from metarl.config import build  # noqa: E402
from metarl.envs import metaworld_tasks as mw  # noqa: E402
from metarl.errors import UserError  # noqa: E402


@pytest.fixture(scope="module")
def ml1():
    return mw.MetaWorldDistribution("ML1", build(mw.MetaWorldConfig, {}, "env"))


def fake_distribution(train_classes: int, goals: int = 50) -> mw.MetaWorldDistribution:
    """A distribution over made-up class lists (building ML10 takes ~10 s): sampling logic only."""
    d = object.__new__(mw.MetaWorldDistribution)
    d.benchmark = f"ML{train_classes}"
    d.lists = {"train": {f"t{i}": list(range(goals)) for i in range(train_classes)},
               "test": {f"h{i}": list(range(goals)) for i in range(5)}}
    d.names = {s: list(d.lists[s]) for s in d.lists}
    return d


def goal_of(task) -> np.ndarray:
    import pickle
    return pickle.loads(task.data)["rand_vec"]


def test_ml1_splits_have_disjoint_goals(ml1):
    train = {tuple(goal_of(t)) for t in ml1.lists["train"]["reach-v3"]}
    test = {tuple(goal_of(t)) for t in ml1.lists["test"]["reach-v3"]}
    assert len(train) == len(test) == 50 and not train & test


def test_sampling_is_class_major_seeded_and_fresh_each_draw():
    d = fake_distribution(10)
    g = torch.Generator().manual_seed(0)
    a, b = d.sample(20, g), d.sample(20, g)
    assert a["cls"].tolist() == [c for c in range(10) for _ in range(2)]
    assert (a["split"] == 0).all() and a["goal"].min() >= 0 and a["goal"].max() < 50
    assert not torch.equal(a["goal"], b["goal"])  # a fresh set of goals per meta-iteration
    again = d.sample(20, torch.Generator().manual_seed(0))
    assert torch.equal(again["goal"], a["goal"])
    t = d.sample(10, g, "test")
    assert (t["split"] == 1).all() and t["cls"].tolist() == [c for c in range(5) for _ in range(2)]
    assert d.task_names(t)[:3] == ["h0", "h0", "h1"]


def test_class_success_averages_each_class_of_the_meta_batch(tmp_path):
    from metarl.eval.plots import class_success_curve
    from metarl.tasks import class_success
    d = fake_distribution(3)
    tasks = d.sample(6, torch.Generator().manual_seed(0))  # classes t0 t0 t1 t1 t2 t2
    got = class_success(d, tasks, torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0]))
    assert got == {"success/t0": 0.5, "success/t1": 1.0, "success/t2": 0.0}
    assert class_success(object(), tasks, torch.zeros(6)) == {}  # no class names, no per-class metrics
    metrics = [{"env_steps": i, "success": 0.5, **got} for i in range(3)]
    assert class_success_curve(metrics, tmp_path / "c.png", "t").stat().st_size > 0
    assert class_success_curve([{"env_steps": 0, "success": 0.5}], tmp_path / "none.png", "t") is None
    assert not (tmp_path / "none.png").exists()


def test_meta_batch_must_divide_into_classes():
    with pytest.raises(UserError, match="multiple of 10"):
        fake_distribution(10).sample(15, torch.Generator())


def test_official_evaluation_set_enumerates_classes_by_goals():
    e = fake_distribution(10).enumerate("test", 40)
    assert len(e["cls"]) == 200 and e["cls"].bincount().tolist() == [40] * 5
    assert e["goal"][:40].tolist() == list(range(40))


def test_protocol_tasks_play_the_training_classes_on_split_train():
    from metarl.eval.success import protocol_tasks
    d = fake_distribution(10)
    train = protocol_tasks(d, 3, batch_tasks=40, split="train")  # 10 classes x 3 goals in one batch
    assert len(train) == 1 and (train[0]["split"] == 0).all() and train[0]["cls"].tolist() == [
        c for c in range(10) for _ in range(3)]
    assert d.task_names(train[0])[::3] == [f"t{i}" for i in range(10)]
    test = protocol_tasks(d, 40, batch_tasks=40)  # 5 classes x 40 goals, 8 goals of each class per batch
    assert len(test) == 5 and all((t["split"] == 1).all() and t["cls"].bincount().tolist() == [8] * 5 for t in test)


def test_rows_are_the_benchmark_tasks(ml1):
    tasks = {"split": torch.tensor([0, 1]), "cls": torch.tensor([0, 0]), "goal": torch.tensor([3, 3])}
    r = ml1.rows(tasks)
    assert r[0] is ml1.lists["train"]["reach-v3"][3] and r[1] is ml1.lists["test"]["reach-v3"][3]


def test_reward_versions_differ_and_success_is_reported(ml1):
    task = ml1.lists["train"]["reach-v3"][0]
    out = {}
    for version in ("v1", "v2"):
        e = mw.MetaWorldSubEnv(version)
        e.set_task(task)
        e.reset(0)
        steps = [e.step(np.full(4, 0.2, dtype=np.float32)) for _ in range(5)]
        assert all(set(info) == {"success"} for _, _, info in steps)
        out[version] = [r for _, r, _ in steps]
        e.close()
    assert not np.allclose(out["v1"], out["v2"])


def test_a_sub_env_builds_only_the_simulator_it_resets():
    """make_env gives every sub-env a start task that samplers replace before stepping: a task set
    and replaced before any reset builds no simulator, and the sub-env then plays exactly as one
    given only the later task (so an evaluation on other classes holds one simulator per sub-env)."""
    lists = mw.goal_lists("ML10", "reach-v3", 0)
    start, task = lists["train"]["reach-v3"][0], lists["test"]["lever-pull-v3"][0]
    replaced, direct = mw.MetaWorldSubEnv("v2"), mw.MetaWorldSubEnv("v2")
    replaced.set_task(start)
    assert replaced.envs == {}
    replaced.set_task(task)
    direct.set_task(task)
    played = []
    for e in (replaced, direct):
        obs = e.reset(0)
        played.append([obs] + [e.step(np.full(4, 0.3, dtype=np.float32))[0] for _ in range(3)])
    assert list(replaced.envs) == ["lever-pull-v3"]
    assert all(np.array_equal(a, b) for a, b in zip(*played))
    replaced.set_task(start)  # switching back builds the start class's simulator at the reset
    replaced.reset(1)
    assert sorted(replaced.envs) == ["lever-pull-v3", "reach-v3"]
    for e in (replaced, direct):
        e.close()


def test_goal_lists_are_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("METARL_CACHE", str(tmp_path))
    mw.goal_lists.cache_clear()
    import json
    import pickle
    import metaworld
    first = mw.goal_lists("ML1", "reach-v3", 3)
    files = list((tmp_path / "metaworld").glob("ML1-reach-v3-seed3-*.json"))
    assert len(files) == 1 and set(json.loads(files[0].read_text())) == {"train", "test"}  # plain JSON
    mw.goal_lists.cache_clear()
    again = mw.goal_lists("ML1", "reach-v3", 3)  # read back from the file
    bench = metaworld.ML1("reach-v3", seed=3)
    for split, tasks in (("train", bench.train_tasks), ("test", bench.test_tasks)):
        for lists in (first, again):  # built and cached: metaworld's own task data, exactly
            own = [pickle.loads(t.data) for t in tasks]
            ours = [pickle.loads(t.data) for t in lists[split]["reach-v3"]]
            assert [t.env_name for t in lists[split]["reach-v3"]] == [t.env_name for t in tasks]
            assert [d.pop("rand_vec").tolist() for d in ours] == [d.pop("rand_vec").tolist() for d in own]
            assert ours == own  # env class and options
    mw.goal_lists.cache_clear()


def test_parallel_env_steps_tasks_and_reports_success(ml1):
    cfg = build(mw.MetaWorldConfig, {"horizon": 5, "workers": 2}, "env")
    env = mw.make_env("ML1", cfg, 4, "cpu", torch.Generator().manual_seed(0))
    try:
        env.set_tasks(ml1.sample(4, torch.Generator().manual_seed(0), "test"))
        obs = env.reset()
        assert obs.shape == (4, 39) and obs.dtype == torch.float32
        for t in range(5):
            obs, r, done = env.step(torch.zeros(4, 4))
            assert set(env.info) == {"success"} and env.info["success"].shape == (4,)
        assert done.all() and torch.isfinite(r).all()
    finally:
        env.close()


@pytest.mark.parametrize("sets, message", [
    (["--set", "env.task=reech-v3"], "did you mean reach-v3"),
    (["--set", "env.reward_version=v3"], "reward_version"),
    (["--set", "env.horizon=501"], "horizon"),
])
def test_bad_metaworld_input_is_one_line(cli, tmp_path, sets, message):
    code, out, err = cli("train", "rl2", "--env", "ml1", *sets, "--quiet", "--run-dir", tmp_path / "r")
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_metaworld_is_one_line(cli, tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "metaworld", None)  # import metaworld now raises ImportError
    mw.goal_lists.cache_clear()
    code, out, err = cli("train", "rl2", "--env", "ml10", "--quiet", "--run-dir", tmp_path / "r")
    mw.goal_lists.cache_clear()
    assert code == 2 and 'pip install -e ".[metaworld]"' in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("agent", ["maml-trpo", "rl2"])
def test_smoke_train_on_ml1_logs_success(cli, tmp_path, agent):
    import json
    rd = tmp_path / agent
    common = ["--set", "env.horizon=10", "--set", "env.workers=2", "--quiet", "--device", "cpu", "--run-dir", rd]
    if agent == "maml-trpo":
        sets = ["--set", "agent.iterations=2", "--set", "agent.meta_batch=2", "--set", "agent.rollouts=2",
                "--set", "agent.hidden_size=8"]
        keys = {"pre_success", "post_success"}
    else:
        sets = ["--set", "agent.num_envs=4", "--set", "agent.hidden_size=8", "--set", "env.episodes=2",
                "--set", "agent.total_steps=160"]
        keys = {"success", "success_last"}
    code, _, err = cli("train", agent, "--env", "ml1", *sets, *common)
    assert code == 0, err
    metrics = [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines()]
    keys.add("success/reach-v3")  # training success per class, drawn in class_success.png
    assert len(metrics) == 2 and all(keys <= set(m) and all(0 <= m[k] <= 1 for k in keys) for m in metrics)
    assert (rd / "class_success.png").stat().st_size > 0
    # Meta-World's protocol on 2 held-out goals, against the random baseline
    code, out, err = cli("eval", rd, "--tasks", "2")
    assert code == 0, err
    report = json.loads((rd / "eval.json").read_text())
    forms = {agent, "random"} | ({"rl2 (deterministic)", "rl2 (metaworld+)"} if agent == "rl2" else set())
    assert report["schema"] == 2 and report["protocol"] == "metaworld" and report["tasks"] == 2
    assert set(report["results"]) == forms
    mine = report["results"][agent]
    curve_points = 13 if agent == "rl2" else 2  # 10 adaptation + 3 evaluation episodes, or before / after
    assert mine["curve"]["x"] == "adaptation episodes seen" and mine["metric"] == "success rate"
    assert [p["x"] for p in mine["curve"]["points"]][:2] == [0, 1 if agent == "rl2" else 10]
    assert len(mine["curve"]["points"]) == curve_points
    assert [t["goal"] for t in mine["per_task"]] == [0, 1] and set(mine["per_class"]) == {"reach-v3"}
    assert 0 <= mine["total"]["mean"] <= 1 and (rd / "eval_adaptation.png").stat().st_size > 0
    tally = mine["metaworld_tally"]  # one group: ML1's single class, both goals
    assert tally["groups"] == 1 and 0 <= tally["total"]["mean"] <= 1
    assert "success rate" in out and "Meta-World tally" in out
    if agent == "rl2":  # sampled and Meta-World+ forms share one trial (eval_branch): each as if played alone
        from metarl.eval.success import evaluate_success, summarize_success
        from metarl.protocols import TRIAL
        from metarl.run_config import load_run
        run = load_run(rd, device="cpu")
        c = run.cfg
        for name, form in (("rl2", "carry"), ("rl2 (metaworld+)", "restart")):
            policy = c["agent_spec"].load_eval_policy(run.checkpoint, c["env_spec"], c["env"], c["agent"], run.device,
                                                      0, form=form)
            alone = summarize_success(evaluate_success(lambda env: policy, TRIAL, c["env_spec"], c["env"], 2, 0, "cpu"))
            shared = report["results"][name]
            assert shared["per_task"] == alone["per_task"] and shared["return"] == alone["return"]
            assert shared["metaworld_tally"]["scores"] == alone["metaworld_tally"]["scores"]
            assert [p["mean"] for p in shared["curve"]["points"]] == [p["mean"] for p in alone["curve"]["points"]]
            # ... played in the simulation workers (evaluate_success) as acting step by step plays it
            from metarl.eval.success import protocol_tasks
            from metarl.eval.trials import play_trial
            from metarl.seeding import make_generator
            tasks = protocol_tasks(c["env_spec"].make_distribution(c["env"]), 2, 40)[0]
            played = []
            for in_workers in (False, True):
                env = c["env_spec"].make_env(c["env"], 2, "cpu", make_generator(0, "eval-env"))
                policy = c["agent_spec"].load_eval_policy(run.checkpoint, c["env_spec"], c["env"], c["agent"],
                                                          run.device, 0, form=form)
                played.append(play_trial(policy, env, tasks, 13, in_workers=in_workers))
                env.close()
            # the same trial to float precision: a worker's GRU over its block of rows (here one) rounds
            # the last bit unlike the GRU over all rows, so rewards may differ by an ulp, nothing more
            assert set(played[0]) == set(played[1]), name
            for k in played[0]:
                same = torch.allclose if k in ("returns", "step_reward") else torch.equal
                assert same(played[0][k], played[1][k]), (name, k)
    # meta-train success by the same protocol: the training goals, in eval_train.json, eval.json kept
    before = (rd / "eval.json").read_bytes()
    assert not (rd / "eval_parts").exists()  # kept only while an evaluation is in progress
    code, out, err = cli("eval", rd, "--tasks", "2", "--split", "train", "--baselines", "none")
    assert code == 0, err
    train = json.loads((rd / "eval_train.json").read_text())
    assert train["split"] == "train" and set(train["results"]) == forms - {"random"} and "training tasks" in out
    assert [t["goal"] for t in train["results"][agent]["per_task"]] == [0, 1]
    assert (rd / "eval.json").read_bytes() == before and (rd / "eval_train_adaptation.png").stat().st_size > 0
    # ... and through Meta-World's own evaluation, unchanged
    import metaworld
    from metaworld.evaluation import metalearning_evaluation
    from metarl.agents.metaworld_agents import load_metaworld_agent
    envs = metaworld.make_ml_envs("reach-v3", seed=0, meta_batch_size=2, total_tasks_per_cls=2, split="test",
                                  terminate_on_success=True, task_select="pseudorandom", max_episode_steps=10,
                                  recurrent_info_in_obs=agent == "rl2")
    try:
        success, mean_return, per_task = metalearning_evaluation(
            load_metaworld_agent(str(rd), envs.num_envs), envs, num_evals=1, adaptation_episodes=2,
            evaluation_episodes=1)
    finally:
        envs.close()
    assert 0 <= success <= 1 and np.isfinite(mean_return) and set(per_task) == {"reach-v3"}


def test_rl2_policy_in_workers_on_ml1_acts_as_the_recomputed_network():
    """RL² with agent.policy_in_workers on Meta-World: two workers run the GRU for their own
    sub-envs over a 2-episode trial (each chunk with a fresh memory, rewards observed, resets
    between episodes); the actions equal mean + std * noise of the network rerun here over the
    recorded inputs, the per-episode success is recorded, and the policy acting in this process
    (a round trip per step) samples the same trial (to float rounding: a worker's GRU runs on
    its block of rows, this process's on all of them)."""
    import dataclasses

    from metarl.agents.rl2 import RL2Config, RL2Trainer
    from metarl.config import build
    from metarl.registry import ENVS, lookup
    spec = lookup("env", ENVS, "ml1")
    env_cfg = build(spec.config_cls, {"horizon": 10, "episodes": 2, "workers": 2}, "env")
    cfg = build(RL2Config, {"num_envs": 4, "hidden_size": 8, "bptt_len": 10, "policy_in_workers": True,
                            "reward_scale": 0.1}, "agent")
    tr = RL2Trainer(spec, env_cfg, cfg, 0, torch.device("cpu"))
    try:
        tasks = tr.dist.sample(4, tr.task_gen)
        state, env_state = tr.act_gen.get_state(), tr.trial_env.env.gen.get_state()
        batch, h_starts = tr.collect(tasks)
        success = tr.trial_env.success
        tr.act_gen.set_state(state)
        noise = tr.net.pi.draw_noise((20, 4), tr.act_gen)
        with torch.no_grad():
            out, _, _ = tr.net(batch.obs, tr.net.initial_state(4, "cpu"))
        dist = tr.net.pi.dist(out)
        assert torch.allclose(batch.actions, dist.mean + dist.log_std.exp() * noise, atol=1e-5)
        assert h_starts.shape == (2, 4, 16) and not torch.equal(h_starts[1], h_starts[0])  # policy + critic GRU
        assert success.shape == (2, 4)
        assert torch.allclose(batch.obs[1:, :, 39 + 4], 0.1 * batch.rewards[:-1])  # previous reward input

        tr.act_gen.set_state(state)
        tr.trial_env.env.gen.set_state(env_state)
        tr.cfg = dataclasses.replace(tr.cfg, policy_in_workers=False)
        here, h_here = tr.collect(tasks)
        for a, b in ((here.obs, batch.obs), (here.actions, batch.actions), (here.rewards, batch.rewards),
                     (here.logprobs, batch.logprobs), (h_here, h_starts), (tr.trial_env.success, success)):
            assert torch.allclose(a, b, atol=1e-5)
    finally:
        tr.trial_env.env.close()


def test_maml_metaworld_agent_adapts_like_the_learner():
    """Sequential episodes buffered per sub-env become the [B, H, R] rollouts MAMLLearner adapts on."""
    from types import SimpleNamespace

    import gymnasium as gym
    from metarl.agents.maml import MAMLConfig, MAMLEvalLearner, MAMLLearner
    from metarl.agents.metaworld_agents import MAMLMetaWorldAgent
    from metaworld.evaluation import Timestep
    fake_env = SimpleNamespace(obs_dim=39, action_space=gym.spaces.Box(-1, 1, (4,)), device=torch.device("cpu"))
    cfg = MAMLConfig(hidden_size=8)
    L = MAMLLearner(fake_env, cfg, torch.Generator().manual_seed(0))
    agent = MAMLMetaWorldAgent(MAMLEvalLearner(L, cfg, torch.Generator().manual_seed(1)), num_envs=2)
    B, H, R = 2, 3, 2
    g = torch.Generator().manual_seed(2)
    obs, act, rew = torch.randn(R * H, B, 39, generator=g), torch.randn(R * H, B, 4, generator=g), \
        torch.randn(R * H, B, generator=g)
    agent.init()
    for t in range(R * H):
        end = np.full(B, (t + 1) % H == 0)
        agent.step(Timestep(obs[t].numpy(), act[t].numpy(), rew[t].numpy(), np.zeros(B, bool), end, {}))
    agent.adapt()
    data = {"obs": obs.view(R, H, B, 39).permute(2, 1, 0, 3), "actions": act.view(R, H, B, 4).permute(2, 1, 0, 3),
            "rewards": rew.view(R, H, B).permute(2, 1, 0)}
    data["adv"] = L.advantages(data)
    params = {k: v.detach() for k, v in L.net.named_parameters()}
    expected = L.adapt(params, data, per_task=False, steps=1, first_order=True)
    assert agent.per_task and all(torch.allclose(agent.params[k], expected[k], atol=1e-6) for k in expected)
    with pytest.raises(UserError, match="equal-length episodes"):
        agent.step(Timestep(obs[0].numpy(), act[0].numpy(), rew[0].numpy(), np.zeros(B, bool), np.zeros(B, bool), {}))
        agent.adapt()


def test_rl2_metaworld_agent_reads_rewards_from_augmented_observations():
    from metarl.agents.metaworld_agents import RL2MetaWorldAgent

    class Recorder:
        def reset(self, n, device):
            self.seen = []

        def act(self, obs):
            assert obs.shape == (2, 39)
            return torch.zeros(2, 4)

        def observe(self, a, r, d, next_obs):
            self.seen.append((r.tolist(), d.tolist()))

    agent = RL2MetaWorldAgent(Recorder(), num_envs=2)
    aug = np.zeros((2, 39 + 4 + 2))
    agent.reset(np.ones(2, bool))
    agent.eval_action(aug)  # first evaluation step: nothing to observe yet
    aug[:, 43] = [0.5, 0.1]  # reward / 10 of the step just taken
    agent.reset(np.array([False, True]))
    agent.eval_action(aug)
    assert agent.policy.seen == [([5.0, 1.0], [False, True])]


@pytest.mark.slow
def test_metaworld_resume_equals_uninterrupted(cli, tmp_path, monkeypatch):
    """Interrupted at iteration 2, then resumed: the same metrics as a run straight through
    (model, optimiser, task / action / env-reset generators all come back from the checkpoint)."""
    import os
    import signal

    from metarl.agents.maml import MAMLTrainer
    args = ["train", "maml-trpo", "--env", "ml1", "--set", "env.horizon=8", "--set", "env.workers=2",
            "--set", "agent.iterations=3", "--set", "agent.meta_batch=2", "--set", "agent.rollouts=2",
            "--set", "agent.hidden_size=8", "--set", "agent.checkpoint_every=1", "--quiet", "--device", "cpu"]
    a, c = tmp_path / "a", tmp_path / "c"
    assert cli(*args, "--run-dir", a)[0] == 0
    real = MAMLTrainer.train_iteration
    with monkeypatch.context() as m:
        m.setattr(MAMLTrainer, "train_iteration",
                  lambda self, it: (os.kill(os.getpid(), signal.SIGINT) if it == 2 else None, real(self, it))[1])
        assert cli(*args, "--run-dir", c)[0] == 130
    code, _, err = cli("train", "maml-trpo", "--env", "ml1", "--run-dir", c, "--resume", "--quiet")
    assert code == 0, err
    assert (c / "metrics.jsonl").read_text() == (a / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_metaworld_bench_reports_stable_keys():
    from metarl.app.bench import bench_metaworld
    f = bench_metaworld(torch.device("cpu"), benchmark="ML1", envs_per_worker=2, steps=10, workers=2)["figures"]
    assert {"single_env_steps_per_s", "parallel_steps_per_s", "independent_steps_per_s", "efficiency",
            "metaworld_async_steps_per_s", "speedup_vs_metaworld_async", "worker_busy_fraction"} <= set(f)
    assert f["efficiency"] == pytest.approx(sorted(f["efficiency_rounds"])[2])  # the median of 5 rounds
    assert f["single_env_steps_per_s_spread"][0] <= f["single_env_steps_per_s"] <= f["single_env_steps_per_s_spread"][1]
    assert f["envs"] == 4 and all(f[k] > 0 for k in ("parallel_steps_per_s", "metaworld_async_steps_per_s"))


@pytest.mark.slow
def test_rl2_eval_bench_reports_both_phases_and_their_ratio():
    from metarl.app.bench import bench_metaworld_rl2_eval
    f = bench_metaworld_rl2_eval(torch.device("cpu"), goals=1, horizon=10, workers=2, rounds=3)["figures"]
    assert f["envs"] == 5 and f["episodes"] == 13 and f["rounds"] == 3
    assert f["step_by_step_steps_per_s"] > 0 and f["in_workers_steps_per_s"] > 0
    assert f["speedup_spread"][0] <= f["speedup"] <= f["speedup_spread"][1]


def test_meta_batch_not_divisible_by_ml10_classes_is_one_line(cli, tmp_path):
    rd = tmp_path / "r"
    code, _, err = cli("train", "maml-trpo", "--env", "ml10", "--set", "agent.meta_batch=15", "--quiet",
                       "--run-dir", rd)
    assert code == 2 and "multiple of 10" in err and len(err.strip().splitlines()) == 1
    assert not rd.exists()  # nothing left behind


@pytest.mark.parametrize("gym_id,kw", [("metarl/ML1-v0", {"task": "push-v3"}), ("metarl/ML10-v0", {})])
def test_metaworld_gym_ids_pass_gymnasium_and_sb3_checkers(gym_id, kw, sb3_checker):
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env
    import metarl.envs  # noqa: F401  registers the ids
    env = gym.make(gym_id, horizon=20, **kw)
    try:
        check_env(env.unwrapped, skip_render_check=True)
        sb3_checker(env.unwrapped)
        _, info = env.reset(seed=3)
        assert info["task"]["split"] == 0  # a training task
        classes = {int(env.reset(seed=s)[1]["task"]["cls"]) for s in range(30)}
        assert len(classes) > (1 if gym_id.startswith("metarl/ML10") else 0)  # any class, one task at a time
    finally:
        env.close()


def test_rl2_metaworld_agent_restart_form_restarts_each_evaluation_episode_from_adaptation():
    """In Meta-World+'s form, a sub-env whose evaluation episode ended (reset mask) acts again as
    at the first evaluation step (same memory, mean action); the others carry on."""
    import gymnasium as gym

    from metarl.agents.metaworld_agents import RL2MetaWorldAgent
    from metarl.agents.rl2 import GRUActorCritic, RL2Config, RL2EvalPolicy
    from metaworld.evaluation import Timestep

    cfg = build(RL2Config, {"hidden_size": 16, "time_feature": False, "reward_scale": 0.1}, "agent")
    net = GRUActorCritic(39 + 4 + 2, gym.spaces.Box(-1, 1, (4,)), 16, torch.Generator().manual_seed(0))
    with torch.no_grad():
        net.pi.linear.weight.mul_(100)
    agent = RL2MetaWorldAgent(RL2EvalPolicy(net, 4, 100, cfg, torch.Generator().manual_seed(0)), num_envs=2)
    g = torch.Generator().manual_seed(1)
    obs = [torch.randn(2, 39, generator=g).double().numpy() for _ in range(3)]
    agent.init()
    for t in range(4):  # two adaptation episodes of two steps
        a, _ = agent.adapt_action(obs[t % 2])
        end = np.full(2, t % 2 == 1)
        agent.step(Timestep(obs[t % 2], a, np.ones(2), np.zeros(2, bool), end, {}))
    agent.adapt()
    agent.reset(np.ones(2, bool))
    first = agent.eval_action(obs[0])
    agent.reset(np.zeros(2, bool))
    agent.eval_action(obs[1])
    agent.reset(np.array([True, False]))  # sub-env 0's evaluation episode ends
    again = agent.eval_action(obs[0])
    assert np.array_equal(again[0], first[0]) and not np.allclose(again[1], first[1])
    carry = RL2MetaWorldAgent(agent.policy, num_envs=2, form="carry")
    carry.init()
    for t in range(4):
        a, _ = carry.adapt_action(obs[t % 2])
        carry.step(Timestep(obs[t % 2], a, np.ones(2), np.zeros(2, bool), np.full(2, t % 2 == 1), {}))
    carry.adapt()
    carry.reset(np.ones(2, bool))
    assert not np.allclose(carry.eval_action(obs[0]), first)  # sampled, not the mean action


@pytest.mark.slow
def test_eval_every_logs_held_out_success_without_changing_training(cli, tmp_path):
    """agent.eval_every=1 adds held-out success (per task and Meta-World's tally) to every row of
    metrics.jsonl; everything training logs is what the same run logs without it."""
    import json
    common = ["--set", "env.horizon=10", "--set", "env.workers=2", "--set", "env.episodes=2", "--set",
              "agent.num_envs=4", "--set", "agent.hidden_size=8", "--set", "agent.total_steps=160", "--quiet",
              "--device", "cpu"]
    rows = {}
    for name, extra in (("plain", []), ("monitored", ["--set", "agent.eval_every=1", "--set", "agent.eval_goals=1"])):
        code, _, err = cli("train", "rl2", "--env", "ml1", *common, *extra, "--run-dir", tmp_path / name)
        assert code == 0, err
        rows[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert len(rows["monitored"]) == 2
    for plain, mon in zip(rows["plain"], rows["monitored"]):
        assert 0 <= mon.pop("heldout_success") <= 1 and 0 <= mon.pop("heldout_success_tally") <= 1
        assert mon == plain


def test_eval_every_on_an_env_without_held_out_protocol_is_one_line(cli, tmp_path):
    code, out, err = cli("train", "rl2", "--env", "bandit", "--set", "agent.eval_every=5", "--quiet",
                         "--run-dir", tmp_path / "r")
    assert code == 2 and "agent.eval_every" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
