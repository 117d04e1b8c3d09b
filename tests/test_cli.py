"""Every user-caused error prints one line, exits 2, shows no traceback and overwrites nothing."""
import os
import subprocess
import sys

import pytest
import torch


def _one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("args,needles", [
    (["train", "rl3", "--env", "bandit"], ["unknown agent 'rl3'", "rl2"]),
    (["train", "rl2", "--env", "bandits"], ["unknown env 'bandits'", "did you mean bandit"]),
    (["train", "rl2", "--env", "bandit", "--set", "agent.learning_rate=1"], ["unknown option agent.learning_rate"]),
    (["train", "rl2", "--env", "bandit", "--set", "env.k=1"], ["env.k must be >= 2"]),
    (["train", "rl2", "--env", "bandit", "--set", "env.n=0"], ["env.n must be >= 1"]),
    (["train", "rl2", "--env", "tabular-mdp", "--set", "env.n=0"], ["env.n must be >= 1"]),
    (["train", "rl2", "--env", "bandit", "--set", "agent.lr=-0.1"], ["agent.lr must be > 0"]),
    (["train", "rl2", "--env", "bandit", "--set", "env.k=five"], ["env.k='five' is not a valid int"]),
    (["train", "rl2", "--env", "bandit", "--set", "k=5"], ["SECTION.KEY=VALUE"]),
    (["train", "rl2", "--env", "bandit", "--seed", "x"], ["invalid int value"]),
    (["train", "rl2", "--env", "bandit", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["train", "rl2", "--env", "bandit", "--device", "tpu"], ["unknown device 'tpu'"]),
    (["train", "rl2", "--env", "bandit", "--config", "/nonexistent.toml"], ["does not exist"]),
    (["eval", "/nonexistent/run"], ["does not exist"]),
    (["bench", "nope"], ["unknown benchmark 'nope'"]),
    (["train", "rl2", "--env", "navigation-2d", "--set", "agent.baseline=mlp"], ["agent.baseline", "gru", "linear"]),
    (["train", "rl2", "--env", "navigation-2d", "--set", "agent.encoder_layers=2", "--set", "agent.encoder_size=0"],
     ["agent.encoder_size must be >= 1"]),
    (["train", "rl2", "--env", "bandit", "--set", "agent.head=tanh"], ["agent.head=tanh", "continuous"]),
    (["train", "rl2", "--env", "navigation-2d", "--set", "agent.separate_critic=true", "--set",
      "agent.encoder_layers=1"], ["agent.separate_critic", "encoder"]),
    (["train", "rl2", "--env", "bandit", "--set", "agent.bptt_len=5", "--set", "agent.bptt_overlap=5"],
     ["agent.bptt_overlap=5 must be below agent.bptt_len=5"]),
    (["train", "rl2", "--env", "navigation-2d", "--set", "agent.baseline=linear", "--set",
      "agent.privileged_critic=true"], ["agent.baseline=linear has no learned critic"]),
    (["train", "rl2", "--env", "navigation-2d", "--set", "agent.encoder_layers=1"],
     ["agent.separate_critic=false with agent.encoder_layers"]),
    (["train", "rl2", "--env", "bandit", "--set", "agent.eval_every=3"], ["agent.eval_every", "held-out protocol"]),
    (["train", "rl2", "--env", "bandit", "--set", "agent.reward_per_pair=true"], ["agent.reward_per_pair", "one-hot"]),
    # the agents that fit come from the registry: every RL agent, no few-shot learner, and the reverse
    (["train", "maml", "--env", "bandit"], ["cannot train on env 'bandit'", "rl2, recurrent-ppo, multitask-ppo, maml-trpo"]),
    (["train", "rl2", "--env", "sinusoid"], ["cannot train on env 'sinusoid'", "np, learned-opt, leo, hypernet"]),
])
def test_bad_input_is_one_line_exit_2(cli, tmp_path, args, needles):
    code, out, err = cli(*args, "--run-dir", str(tmp_path / "r")) if args[0] == "train" else cli(*args)
    _one_line_error(code, err, *needles)
    assert not (tmp_path / "r").exists()  # nothing was created


def test_cuda_without_cuda_is_a_clear_error(cli, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = cli("train", "rl2", "--env", "bandit", "--device", "cuda", "--run-dir", tmp_path / "r")
    _one_line_error(code, err, "--device cuda", "--device cpu")


def test_corrupt_config_file(cli, tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[agent\nlr = ")
    code, _, err = cli("train", "rl2", "--env", "bandit", "--config", f, "--run-dir", tmp_path / "r")
    _one_line_error(code, err, "not valid TOML")


@pytest.mark.slow
def test_existing_run_dir_is_refused_and_kept(cli, tmp_path, tiny):
    run = tmp_path / "run"
    code, _, err = cli("train", "rl2", "--env", "bandit", "--set", "agent.total_steps=160", "--run-dir", run, *tiny)
    assert code == 0, err
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and "tb" not in p.parts}
    code, _, err = cli("train", "rl2", "--env", "bandit", "--set", "agent.total_steps=160", "--run-dir", run, *tiny)
    _one_line_error(code, err, "already exists", "--resume", "--overwrite")
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and "tb" not in p.parts}


def test_missing_and_corrupt_checkpoint(cli, tmp_path, tiny):
    run = tmp_path / "run"
    assert cli("train", "rl2", "--env", "bandit", "--set", "agent.total_steps=160", "--run-dir", run, *tiny)[0] == 0
    ck = run / "checkpoints" / "latest.pt"
    ck.write_bytes(b"not a checkpoint")
    code, _, err = cli("eval", run, "--tasks", "10")
    _one_line_error(code, err, "corrupt")
    assert ck.read_bytes() == b"not a checkpoint"
    ck.unlink()
    code, _, err = cli("eval", run, "--tasks", "10")
    _one_line_error(code, err, "no checkpoint")
    code, _, err = cli("train", "rl2", "--env", "bandit", "--run-dir", run, "--resume", "--quiet")
    _one_line_error(code, err, "cannot resume")


class _RunsCode:
    """Unpickling this calls os.system: what a malicious shared checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_and_never_runs(cli, tmp_path, tiny):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    assert cli("train", "rl2", "--env", "bandit", "--set", "agent.total_steps=160", "--run-dir", run, *tiny)[0] == 0
    ck = run / "checkpoints" / "latest.pt"
    state = torch.load(ck, weights_only=True)  # the honest checkpoint loads as tensors and plain values
    state["trainer"]["extra"] = _RunsCode(marker)
    torch.save(state, ck)
    for args in (("eval", run, "--tasks", "10"),
                 ("train", "rl2", "--env", "bandit", "--run-dir", run, "--resume", "--quiet",
                  "--set", "agent.total_steps=320")):
        code, _, err = cli(*args)
        _one_line_error(code, err, "could run code")
        assert not marker.exists()


def test_eval_rejects_baseline_that_does_not_apply(cli, tmp_path, tiny):
    run = tmp_path / "run"
    assert cli("train", "rl2", "--env", "gaussian-bandit", "--set", "agent.total_steps=160", "--run-dir", run,
               *tiny)[0] == 0
    code, _, err = cli("eval", run, "--baselines", "gittins", "--tasks", "10")
    _one_line_error(code, err, "does not apply")
    code, _, err = cli("eval", run, "--baselines", "nope", "--tasks", "10")
    _one_line_error(code, err, "unknown baseline")
    code, _, err = cli("eval", run, "--split", "train", "--tasks", "10")  # train = test distribution here
    _one_line_error(code, err, "for Meta-World runs")
    assert not (run / "eval_train.json").exists()


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(cli, tmp_path, tiny, monkeypatch):
    from metarl.agents.rl2 import RL2Trainer
    real = RL2Trainer.train_iteration

    def flaky(self, it):
        m = real(self, it)
        if it == 2:
            m["loss"] = float("nan")
        return m
    monkeypatch.setattr(RL2Trainer, "train_iteration", flaky)
    run = tmp_path / "run"
    code, _, err = cli("train", "rl2", "--env", "bandit", "--set", "agent.total_steps=1600", "--run-dir", run, *tiny)
    _one_line_error(code, err, "non-finite at iteration 2", "last good checkpoint")
    ck = torch.load(run / "checkpoints" / "latest.pt", weights_only=False)
    assert ck["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in ck["trainer"]["net"].values())


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint(cli, tmp_path, tiny, monkeypatch):
    import signal
    from metarl.agents.rl2 import RL2Trainer
    real = RL2Trainer.train_iteration

    def interrupted(self, it):
        if it == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C mid-iteration
        return real(self, it)
    monkeypatch.setattr(RL2Trainer, "train_iteration", interrupted)
    run = tmp_path / "run"
    code, _, err = cli("train", "rl2", "--env", "bandit", "--set", "agent.total_steps=1600",
                       "--set", "agent.checkpoint_every=100", "--run-dir", run, *tiny)
    assert code == 130 and "--resume" in err and "Traceback" not in err
    assert torch.load(run / "checkpoints" / "latest.pt", weights_only=False)["iteration"] == 4


@pytest.mark.slow
def test_same_seed_same_metrics_and_resume_is_exact(cli, tmp_path, tiny, monkeypatch):
    import signal
    from metarl.agents.rl2 import RL2Trainer
    args = ["train", "rl2", "--env", "tabular-mdp", "--set", "env.n=2", "--set", "agent.bptt_len=10",
            "--set", "agent.total_steps=2560", *tiny]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert cli(*args, "--run-dir", a)[0] == 0
    assert cli(*args, "--run-dir", b)[0] == 0
    ma = (a / "metrics.jsonl").read_text()
    assert ma == (b / "metrics.jsonl").read_text() and len(ma.splitlines()) == 8
    # run c is interrupted during iteration 4, then resumed: the same metrics, bit for bit
    real = RL2Trainer.train_iteration
    with monkeypatch.context() as m:
        m.setattr(RL2Trainer, "train_iteration",
                  lambda self, it: (os.kill(os.getpid(), signal.SIGINT) if it == 4 else None, real(self, it))[1])
        assert cli(*args, "--set", "agent.checkpoint_every=3", "--run-dir", c)[0] == 130
    assert len((c / "metrics.jsonl").read_text().splitlines()) == 5
    code, _, err = cli("train", "rl2", "--env", "tabular-mdp", "--run-dir", c, "--resume", "--quiet")
    assert code == 0, err
    assert (c / "metrics.jsonl").read_text() == ma
    assert cli(*args, "--seed", "1", "--run-dir", tmp_path / "d")[0] == 0
    assert (tmp_path / "d" / "metrics.jsonl").read_text() != ma


def test_resume_takes_the_starting_command_and_refuses_config_changes(cli, tmp_path, tiny):
    run = tmp_path / "run"
    start = ["train", "rl2", "--env", "bandit", "--set", "agent.total_steps=160", "--set", "env.k=3", "--seed", "2",
             "--run-dir", run, *tiny]
    assert cli(*start)[0] == 0
    metrics = (run / "metrics.jsonl").read_text()
    # the command that started it, plus --resume; or only AGENT --run-dir --resume; or a longer run
    for args in (start + ["--resume"], ["train", "rl2", "--run-dir", run, "--resume", "--quiet"],
                 start + ["--resume", "--set", "agent.total_steps=320"]):
        code, _, err = cli(*args)
        assert code == 0, err
    assert (run / "metrics.jsonl").read_text().startswith(metrics) and len((run / "metrics.jsonl").read_text()) > len(metrics)
    for args, needle in ((["--set", "agent.lr=1"], "agent.lr is 0.001 there, 1.0 here"),
                         (["--set", "env.k=4"], "env.k is 3 there, 4 here"),
                         (["--seed", "3"], "seed 2, not 3"),
                         (["--env", "tabular-mdp"], "env 'bandit', not 'tabular-mdp'")):
        code, _, err = cli("train", "rl2", "--run-dir", run, "--resume", *args)
        _one_line_error(code, err, needle)
    code, _, err = cli("train", "rl2", "--run-dir", tmp_path / "new")
    _one_line_error(code, err, "--env ENV is needed")


@pytest.mark.parametrize("env", ["bandit", pytest.param("gaussian-bandit", marks=pytest.mark.slow),
                                 pytest.param("tabular-mdp", marks=pytest.mark.slow)])
def test_smoke_train_then_eval(cli, tmp_path, tiny, env):
    import json
    run = tmp_path / env
    code, _, err = cli("train", "rl2", "--env", env, "--set", "agent.total_steps=500", "--run-dir", run, *tiny)
    assert code == 0, err
    for f in ("config.toml", "metrics.jsonl", "timing.jsonl", "checkpoints/latest.pt", "learning_curve.png"):
        assert (run / f).exists(), f
    assert any((run / "tb").iterdir())
    code, out, err = cli("eval", run, "--tasks", "50", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["tasks"] == 50 and "rl2" in report["results"] and "random" in report["results"]
    assert (run / "eval_adaptation.png").exists()
    from metarl.eval.result import EVAL_SCHEMA, read_eval
    assert read_eval(run / "eval.json") == report and report["schema"] == EVAL_SCHEMA
    one_episode = env != "tabular-mdp"  # a bandit trial is one episode: its curve is per pull
    for r in report["results"].values():
        c = r["curve"]
        assert c["x"] == ("step (pull) within the trial" if one_episode else "episode within the trial")
        assert [p["x"] for p in c["points"]] == list(range(1, len(c["points"]) + 1)) and len(c["points"]) > 1
        assert all(p["ci_low"] <= p["mean"] <= p["ci_high"] and p["n"] == 50 for p in c["points"])
    for r in report["results"].values():
        assert r["total"]["n"] == 50 and r["total"]["ci_low"] <= r["total"]["mean"] <= r["total"]["ci_high"]


def test_list_and_help_document_every_option(cli):
    code, out, _ = cli("list")
    assert code == 0 and "rl2" in out and "tabular-mdp" in out and "gittins" in out and "bandit" in out
    code, out, _ = cli("train", "--help")
    assert code == 0
    from dataclasses import fields
    from metarl.agents.rl2 import RL2Config
    from metarl.envs.bandits import BanditConfig
    for f in fields(RL2Config):
        assert f"agent.{f.name} =" in out
    for f in fields(BanditConfig):
        assert f"env.{f.name} =" in out


def test_every_config_option_is_a_scalar_that_set_and_toml_carry():
    """Options are int, float, bool or str (lists as comma-separated str): every registered config
    builds from its defaults, and a developer's tuple option fails at once, not at save time."""
    from dataclasses import dataclass

    from metarl.config import build, option
    from metarl.registry import AGENTS, ENVS, lookup
    for reg, kind in ((AGENTS, "agent"), (ENVS, "env")):
        for name in reg:
            build(lookup(kind, reg, name).config_cls, {}, kind)

    @dataclass
    class Bad:
        sizes: tuple = option((40, 40), "layer widths")
    with pytest.raises(TypeError, match="comma-separated str"):
        build(Bad, {}, "agent")


def test_train_help_narrows_to_the_named_agent_and_env(cli):
    """`train AGENT --env ENV --help` lists that agent's and env's options and no other's; a name
    that is not registered falls back to the full list."""
    code, out, _ = cli("train", "maml", "--env", "sinusoid", "--help")
    assert code == 0
    assert "\nagent maml:" in out and "\nenv sinusoid:" in out and "agent.inner_lr =" in out
    assert "\nagent rl2:" not in out and "\nenv bandit:" not in out and "metarl train --help" in out
    code, out, _ = cli("train", "--env=glyphs", "--help")
    assert code == 0 and "\nenv glyphs:" in out and "\nenv sinusoid:" not in out and "\nagent rl2:" in out
    code, out, _ = cli("train", "rl3", "--help")
    assert code == 0 and "\nagent rl2:" in out and "\nagent maml:" in out


@pytest.mark.slow
def test_bench_json_has_stable_keys(cli):
    import json
    code, out, err = cli("bench", "bandit", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["bench"] == "bandit" and r["device"] == "cpu"
    assert {"env_steps_per_s", "rollout_steps_per_s", "env_time_fraction"} <= set(r["figures"])
    assert 0 < r["figures"]["env_time_fraction"] < 1


def test_console_script_exit_code():
    p = subprocess.run([sys.executable, "-m", "metarl.app.cli", "train", "rl2", "--env", "nope"],
                       capture_output=True, text=True)
    _one_line_error(p.returncode, p.stderr, "unknown env 'nope'")


@pytest.mark.slow
def test_overwrite_starts_the_run_again(cli, tmp_path, tiny):
    run = tmp_path / "run"
    assert cli("train", "rl2", "--env", "bandit", "--set", "agent.total_steps=480", "--run-dir", run, *tiny)[0] == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    code, _, err = cli("train", "rl2", "--env", "bandit", "--set", "agent.total_steps=160", "--run-dir", run,
                       "--overwrite", *tiny)
    assert code == 0, err
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow
def test_demo_trains_then_compares_with_every_bandit_baseline(tmp_path):
    from metarl.app.demo import demo
    report = demo(device="cpu", quiet=True, runs_root=str(tmp_path), steps=100)
    assert report["tasks"] == 1000 and report["env_config"]["k"] == 5 and report["env_config"]["n"] == 10
    assert set(report["results"]) == {"rl2", "rl2 (deterministic)", "random", "greedy", "epsilon-greedy", "ucb1", "thompson", "gittins"}
    assert (tmp_path / report["run_dir"].split("/")[-1] / "eval.json").exists()


def test_metaworld_report_shows_success_per_class():
    """A Meta-World report ends with one row per class and one column per method; a class a
    method was not evaluated on shows a dash."""
    from metarl.app.report import per_class_table, report_table
    ci = {"ci_low": 0.0, "ci_high": 1.0, "std": 0.1, "n": 2}
    results = {"rl2": {"total": {"mean": 0.25, **ci},
                       "per_class": {"door-close-v3": {"mean": 0.5}, "shelf-place-v3": {"mean": 0.0}}},
               "random": {"total": {"mean": 0.0, **ci}, "per_class": {"door-close-v3": {"mean": 0.0}}}}
    lines = per_class_table(results).splitlines()
    assert lines[0].split() == ["class", "rl2", "random"]
    assert lines[1].split() == ["door-close-v3", "0.500", "0.000"] and lines[2].split() == ["shelf-place-v3", "0.000", "–"]
    report = {"env": "ml10", "env_config": {}, "tasks": 2, "seed": 0, "agent": "rl2", "env_steps": 10,
              "protocol": "metaworld", "metric": "success rate", "results": results}
    assert report_table(report).endswith("\n".join(lines))


def test_report_keeps_a_curve_in_step_order_and_ranks_methods():
    """A few-shot curve prints 0, 1, 5, 10 steps whatever the scores (MSE after step 0 is the
    worst, after 1 the best here); methods are ranked by their headline figure, lower MSE first."""
    from metarl.app.report import report_table
    ci = {"ci_low": 0.0, "ci_high": 1.0, "std": 0.1, "n": 2}
    points = [{"x": k, "mean": m, **ci} for k, m in ((0, 3.0), (1, 0.2), (5, 0.4), (10, 0.5))]
    results = {"maml": {"total": points[-1], "curve": {"x": "inner gradient steps", "y": "query MSE", "points": points}},
               "cnp": {"total": {"mean": 0.1, **ci},
                       "curve": {"x": "inner gradient steps", "y": "query MSE", "points": [{"x": 0, "mean": 0.1, **ci}]}}}
    report = {"env": "sinusoid", "env_config": {}, "tasks": 2, "seed": 0, "agent": "maml", "env_steps": 10,
              "protocol": "fewshot", "metric": "query MSE", "results": results}
    names = [line.split()[0] + (" " + line.split()[1] if "(" in line else "")
             for line in report_table(report).splitlines()[2:]]
    assert names == ["cnp", "maml (0", "maml (1", "maml (5", "maml (10"]
