"""The README's results come from experiments/results/*.json, and each names its command."""
import pytest
import dataclasses
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_objectives_figure_draws_every_paired_objective_run(tmp_path):
    """The results page's forest plot has one row per few-shot run paired with a reference (searched
    cells have their own table), each row the difference its results file records."""
    rt = _load("readme_table")
    fams = rt.objective_differences()
    expected = {}
    for f in (ROOT / "experiments" / "results").glob("*.json"):
        m = json.loads(f.read_text()).get("metrics", {})
        if (m.get("protocol") == "fewshot" and m["agent"] != "fewshot-gen" and not m.get("arch_from")
                and m["agent"] in (m.get("paired_with") or {})):
            expected[m["paired_with"][m["agent"]]["mean"]] = f.stem
    drawn = sorted(d["mean"] for rows in fams.values() for _, d in rows)
    assert drawn == sorted(expected)
    assert rt.objectives_figure(tmp_path / "o.png") and (tmp_path / "o.png").stat().st_size > 10_000
    assert ("objectives.png" in rt.results_page()) == bool(fams)


def test_readme_results_table_is_generated_from_results_files():
    """The README's headline table and docs/results.md are what readme_table.py writes from the
    results files, and the full record shows every results file."""
    rt = _load("readme_table")
    table = rt.table()
    stale = "results are stale: run python experiments/readme_table.py"
    assert rt.headline() in (ROOT / "README.md").read_text(), "README " + stale
    assert (ROOT / "docs" / "results.md").read_text() == rt.results_page(), "docs/results.md " + stale
    for f in (ROOT / "experiments" / "results").glob("*.json"):
        s = json.loads(f.read_text())
        if "_timing" in f.stem:  # experiments/wall_clock.py: shown in the ML10 table (_timing_COMMIT: a before)
            name, kind = f.stem.rsplit("_timing", 1)
            assert s["command"].startswith(f"python experiments/wall_clock.py {name}")
            assert (ROOT / "experiments" / "configs" / f"{name}.toml").exists()
            assert s["command"] in table if kind in ("", "_cuda") else f.name in table
            continue
        if f.stem.startswith("gpu_check"):  # experiments/device_check.sh on a GPU machine
            assert s["command"].startswith("OUT=DIR bash experiments/device_check.sh") and f.name in table
            continue
        if f.stem == "demo_check":  # experiments/demo_check.py: metarl demo over seeds
            assert s["command"].startswith("python experiments/demo_check.py") and s["command"] in table
            continue
        if f.stem.endswith("_curvature"):  # experiments/curvature.py NAME, on NAME's run
            assert s["command"].startswith(f"python experiments/curvature.py {f.stem[:-len('_curvature')]}")
            assert s["command"] in table
            continue
        if f.stem.endswith("_behaviour"):  # experiments/mdp_behaviour.py NAME, on NAME's run
            assert s["command"].startswith(f"python experiments/mdp_behaviour.py {f.stem[:-len('_behaviour')]}")
            assert s["command"] in table
            continue
        if f.stem == "bench_cpu":  # experiments/bench.py: every benchmark names its command and commit
            for name, e in s["benches"].items():
                assert e["command"] == f"python experiments/bench.py {name}" and e["commit"] and e["command"] in table
            continue
        assert {"experiment", "command", "commit", "device", "wall_clock_s", "metrics"} <= set(s)
        script = "peer.py" if s["metrics"].get("protocol") == "peer" else "run.py"
        config = s.get("config", f.stem)  # NAME_seedN: run.py NAME --seed N
        assert s["command"].startswith(f"python experiments/{script} {config}")
        assert (ROOT / "experiments" / "configs" / f"{config}.toml").exists()
        assert f"| {f.stem} |" in table or f"| {f.stem}, best checkpoint of training (" in table


def test_experiment_runner_detects_a_changed_config(tmp_path):
    run = _load("run")
    (tmp_path / "config.toml").write_text('[run]\nseed = 0\n[env]\nk = 5\n[agent]\nlr = 0.0003\nnum_envs = 8\n')
    assert run.same_config(tmp_path, {"env": {"k": 5}, "agent": {"lr": 3e-4}})
    assert not run.same_config(tmp_path, {"env": {"k": 5}, "agent": {"lr": 1e-3}})
    assert not run.same_config(tmp_path, {"env": {"k": 10}})


def test_held_out_results_go_on_the_plot_whose_axis_they_share():
    """A success rate (Meta-World) is drawn on the training-success plot, the agent's own included;
    returns on the return curve, without the agent (its adaptation plot shows it) or random."""
    run = _load("run")
    res = {"rl2": {"total": {"mean": 0.06}}, "rl2 (deterministic)": {"total": {"mean": 0.09}},
           "random": {"total": {"mean": 0.0}}}
    ret, succ = run.reference_lines(res, "rl2", "success rate", {})
    assert ret == {} and succ == {"rl2 (held-out)": 0.06, "rl2 (deterministic) (held-out)": 0.09}
    ret, succ = run.reference_lines(res, "rl2", "total reward", {"Duan et al.": 1.5})
    assert ret == {"rl2 (deterministic) (held-out)": 0.09, "paper: Duan et al.": 1.5} and succ == {}


@pytest.mark.slow
def _tiny_ml1_experiment(tmp_path, monkeypatch, name: str, agent_extra: str, experiment_extra: str = ""):
    """experiments/run.py rooted at tmp_path with one tiny ML1 RL² config NAME ([agent] + agent_extra)."""
    run = _load("run")
    (tmp_path / "experiments" / "configs").mkdir(parents=True)
    (tmp_path / "experiments" / "configs" / f"{name}.toml").write_text(
        '[experiment]\nbaselines = "none"\n' + experiment_extra + '[run]\nagent = "rl2"\nenv = "ml1"\nseed = 0\n'
        '[env]\nhorizon = 10\nepisodes = 2\nworkers = 2\n'
        '[agent]\nnum_envs = 4\nhidden_size = 8\n' + agent_extra)
    monkeypatch.setattr(run, "HERE", tmp_path / "experiments")
    monkeypatch.setattr(run, "ROOT", tmp_path)
    return run


def test_metaworld_experiment_records_meta_train_success(tmp_path, monkeypatch):
    """experiments/run.py on a tiny ML1 RL² config: the results file holds meta-test and
    meta-train success (the protocol on the training goals, as many as [experiment]
    train_eval_tasks allows) and the success plot is drawn."""
    pytest.importorskip("metaworld")
    run = _tiny_ml1_experiment(tmp_path, monkeypatch, "tiny_ml1", "total_steps = 160\n", "train_eval_tasks = 1\n")
    assert run.main(["tiny_ml1", "--tasks", "2", "--quiet", "--device", "cpu", "--seed", "3"]) == 0
    out = tmp_path / "experiments" / "results"
    s = json.loads((out / "tiny_ml1_seed3.json").read_text())  # another seed: its own run and results file
    assert s["config"] == "tiny_ml1" and s["command"] == "python experiments/run.py tiny_ml1 --seed 3 --tasks 2"
    from metarl.config import tomllib
    saved = tomllib.loads((tmp_path / "runs" / "experiments" / "tiny_ml1_seed3" / "config.toml").read_text())
    assert saved["run"]["seed"] == 3
    m = s["metrics"]
    assert m["protocol"] == "metaworld" and set(m["results"]) == {"rl2", "rl2 (deterministic)", "rl2 (metaworld+)"}
    assert 0 <= m["results"]["rl2 (metaworld+)"]["metaworld_tally"]["total"]["mean"] <= 1
    mt = m["meta_train"]
    assert m["held_out_tasks"] == 2 and mt["tasks"] == 1 and set(mt["results"]) == {"rl2", "rl2 (deterministic)", "rl2 (metaworld+)"}
    assert 0 <= mt["results"]["rl2"]["mean"] <= 1 and set(mt["results"]["rl2"]["per_class"]) == {"reach-v3"}
    assert (out / "tiny_ml1_seed3_success.png").stat().st_size > 0
    assert (out / "tiny_ml1_seed3_curve.png").stat().st_size > 0


@pytest.mark.slow
def test_best_checkpoint_by_the_held_out_sample_is_evaluated_beside_the_latest(tmp_path, monkeypatch):
    """With agent.eval_every, training keeps the iteration with the best held-out sample;
    `--checkpoint best` evaluates it into NAME_best.json and its own record, leaving NAME's; the
    ML10 table shows both (a *_ml10 config name puts it there; ML1 keeps the test small)."""
    pytest.importorskip("metaworld")
    run = _tiny_ml1_experiment(tmp_path, monkeypatch, "tiny_ml10",
                               "total_steps = 240\neval_every = 1\neval_goals = 1\n")
    assert run.main(["tiny_ml10", "--tasks", "2", "--quiet", "--device", "cpu"]) == 0
    assert run.main(["tiny_ml10", "--tasks", "2", "--quiet", "--device", "cpu", "--checkpoint", "best"]) == 0
    out = tmp_path / "experiments" / "results"
    rows = [json.loads(line) for line in (tmp_path / "runs" / "experiments" / "tiny_ml10" / "metrics.jsonl").open()]
    first_best = max(range(len(rows)), key=lambda i: (rows[i]["heldout_success"], -i))
    latest, best = (json.loads((out / f"tiny_ml10{s}.json").read_text()) for s in ("", "_best"))
    assert latest["metrics"]["checkpoint"] == "latest" and latest["metrics"]["checkpoint_iteration"] == 3
    assert best["command"] == "python experiments/run.py tiny_ml10 --tasks 2 --checkpoint best"
    assert best["metrics"]["checkpoint"] == "best" and best["metrics"]["checkpoint_select"] == "heldout_success"
    assert best["metrics"]["checkpoint_iteration"] == first_best + 1  # the parameters after that iteration's update
    assert best["metrics"]["train_success"] == rows[first_best]["success_last"]  # that iteration's, not the last
    for stem, which in (("tiny_ml10", "latest"), ("tiny_ml10_best", "best")):
        for report in ("eval.json", "eval_train.json"):
            assert json.loads((out / "runs" / stem / report).read_text())["checkpoint"] == which
    rt = _load("readme_table")
    monkeypatch.setattr(rt, "ROOT", tmp_path)
    note = f"best checkpoint of training (after {first_best + 1} iterations, by the held-out sample while training)"
    assert note in rt.metaworld_row(rt.read_summary(out / "tiny_ml10_best.json"))
    row = rt.ml10_table().splitlines()[-1]
    assert f"; at the {note}: " in row and "--checkpoint best" in row
    # selected on held-out tasks: in the headline only beside the final checkpoint's, never alone
    row = next(r for r in rt.headline().splitlines() if "run.py tiny_ml10 --tasks 2" in r)
    if rt.headline_figure(best)[1] > rt.headline_figure(latest)[1]:
        assert "--checkpoint best" in row and note in row and "; final checkpoint " in row
    else:
        assert "--checkpoint best" not in row
    (out / "tiny_ml10.json").unlink()
    assert "tiny_ml10" not in rt.headline()


def test_seeds_headline_takes_the_iqm_over_seeds_of_the_best_form(tmp_path, monkeypatch):
    """Once a config has several seeds compared, the headline shows their IQM (by Meta-World's
    tally, the agent's best form), not one seed's best checkpoint; no over-runs figures, no cell."""
    rt = _load("readme_table")
    monkeypatch.setattr(rt, "ROOT", tmp_path)
    d = tmp_path / "experiments" / "results" / "x_seeds"
    d.mkdir(parents=True)
    assert rt.seeds_headline("x", "rl2") is None
    for record, seed in (("x", 1), ("x_seed2", 2)):
        (d.parent / "runs" / record).mkdir(parents=True)
        (d.parent / "runs" / record / "config.toml").write_text(f'[run]\nagent = "rl2"\nseed = {seed}\n')
    tally = {"rl2": {"runs": [0.1, 0.2], "iqm": [0.15, 0.1, 0.2]},
             "rl2 (metaworld+)": {"runs": [0.3, 0.4], "iqm": [0.35, 0.3, 0.4]},
             "random": {"runs": [0.9, 0.9], "iqm": [0.9, 0.9, 0.9]}}
    (d / "summary.json").write_text(json.dumps({"over_runs": {"metaworld_tally": tally},
                                                "runs": ["experiments/results/runs/x", "experiments/results/runs/x_seed2"]}))
    value, cell, records = rt.seeds_headline("x", "rl2")
    assert records == ["x", "x_seed2"]
    assert value == 0.35 and cell.startswith("IQM 35.0% [30.0, 40.0] over 2 seeds (rl2 (metaworld+), ")
    assert "seed 1 30.0%, seed 2 40.0%" in cell  # each value named by its record's training seed
    (d / "summary.json").write_text(json.dumps({"metaworld_tally": {}}))  # written before over_runs
    assert rt.seeds_headline("x", "rl2") is None


def test_headline_of_compared_seeds_is_their_iqm_in_one_row(tmp_path, monkeypatch):
    """A config kept at its best checkpoint with seeds compared: one headline row, the IQM over
    seeds beside the config's own seed's final checkpoint, naming every seed; no row per seed."""
    rt = _load("readme_table")
    monkeypatch.setattr(rt, "ROOT", tmp_path)
    res = tmp_path / "experiments" / "results"
    for record, seed in (("x", 1), ("x_seed2", 2)):
        (res / "runs" / record).mkdir(parents=True)
        (res / "runs" / record / "config.toml").write_text(f'[run]\nagent = "rl2"\nseed = {seed}\n')
    (res / "x_seeds").mkdir()

    def result(name, tally, which, commit="abc1234"):
        r = {"mean": tally, "ci_low": tally - 0.1, "ci_high": tally + 0.1}
        m = {"agent": "rl2", "env": "ml10", "env_config": {}, "protocol": "metaworld", "checkpoint": which,
             "checkpoint_iteration": 100, "results": {"rl2": {**r, "metaworld_tally": {"total": r}}}}
        if which == "best":
            m["checkpoint_select"] = "heldout_success"
        (res / f"{name}.json").write_text(json.dumps({"experiment": name, "config": "x", "commit": commit,
                                                      "command": f"python experiments/run.py x ({name})",
                                                      "metrics": m}))
    result("x", 0.4, "best")
    result("x_latest", 0.2, "latest")
    result("x_seed2", 0.9, "best", commit="def5678")
    result("x_seed2_latest", 0.1, "latest")
    rows = [r for r in rt.headline().splitlines() if "ML10" in r]
    assert len(rows) == 1 and "| 90.0% ± 10.0 " in rows[0]  # not compared yet: the best run, beside its final
    (res / "x_seeds" / "summary.json").write_text(json.dumps({
        "runs": ["experiments/results/runs/x", "experiments/results/runs/x_seed2"],
        "over_runs": {"metaworld_tally": {"rl2": {"runs": [0.4, 0.9], "iqm": [0.65, 0.4, 0.9]}}}}))
    rows = [r for r in rt.headline().splitlines() if "ML10" in r]
    assert len(rows) == 1
    assert "| IQM 65.0% [40.0, 90.0] over 2 seeds (rl2, " in rows[0]
    assert "seed 1's final checkpoint 20.0% ± 10.0" in rows[0] and "[--seed 2]` (abc1234, def5678)" in rows[0]  # every seed's commit


def test_other_checkpoint_pairs_a_run_s_best_and_final_evaluations(tmp_path):
    """NAME.json of the last iteration pairs with NAME_best.json; NAME.json of a config that
    reports its best checkpoint pairs with NAME_latest.json; a lone file has no pair."""
    rt = _load("readme_table")
    for stem, which in (("a", "latest"), ("a_best", "best"), ("b", "best"), ("b_latest", "latest"),
                        ("c", "best")):
        (tmp_path / f"{stem}.json").write_text(json.dumps({"metrics": {"checkpoint": which}}))
    pairs = {f: rt.other_checkpoint(tmp_path / f"{f}.json") for f in ("a", "a_best", "b", "b_latest", "c")}
    assert {k: v and v.stem for k, v in pairs.items()} == {"a": "a_best", "a_best": "a", "b": "b_latest",
                                                          "b_latest": "b", "c": None}


@pytest.mark.parametrize("cfg", sorted((ROOT / "experiments" / "configs").glob("*.toml")), ids=lambda p: p.stem)
def test_every_experiment_config_resolves(cfg):
    """Every key of every experiment config is a real option with a valid value."""
    from metarl.config import load_toml, tomllib
    from metarl.run_config import resolve_config
    raw = tomllib.loads(cfg.read_text())
    if "agent" in raw["run"]:
        from metarl.app.evaluate import choose_baselines
        baselines = raw.get("experiment", {}).get("baselines", "all")
        raw = load_toml(str(cfg))  # also refuses unknown sections
        resolved = resolve_config(raw["run"]["agent"], raw["run"]["env"], raw)
        choose_baselines(resolved["env_spec"], baselines)  # [experiment] baselines names real, applicable ones
        return
    peer = _load("peer")  # experiments/peer.py: one table of options per agent, one budget
    assert raw["experiment"]["total_steps"] > 0
    for agent in peer.AGENTS:
        resolve_config(agent, raw["run"]["env"], {"run": raw["run"], "env": raw.get("env", {}),
                                                  "agent": {**raw[agent], "total_steps": raw["experiment"]["total_steps"]}})


# RL² defaults that issue 24 changed to the RL² paper code's, with the values they had before
RL2_DEFAULTS_BEFORE_ISSUE_24 = {"separate_critic": False, "gae_lambda": 0.95}


@pytest.mark.parametrize("cfg", sorted(p for p in (ROOT / "experiments" / "configs").glob("*.toml")
                                       if 'agent = "rl2"' in p.read_text()), ids=lambda p: p.stem)
def test_rl2_experiment_configs_mean_what_they_meant_before_the_defaults_changed(cfg):
    """Every RL² experiment config resolves to the same network and update under today's
    defaults as under the defaults its results were recorded with, so its command reproduces."""
    from metarl.agents.rl2 import _separate_critic
    from metarl.config import load_toml
    from metarl.run_config import resolve_config
    raw = load_toml(str(cfg))
    now = resolve_config("rl2", raw["run"]["env"], raw)["agent"]
    before = resolve_config("rl2", raw["run"]["env"], {**raw, "agent": {**RL2_DEFAULTS_BEFORE_ISSUE_24,
                                                                      **raw.get("agent", {})}})["agent"]
    effective = lambda c: dataclasses.replace(c, separate_critic=_separate_critic(c))  # noqa: E731
    assert effective(now) == effective(before)


def test_device_summary_condenses_a_check_log(tmp_path):
    """device_summary.py keeps exit codes, seconds, bench figures and eval headlines, and splits a step
    whose output lacked a final newline (a pytest cut by its timeout) from the next one."""
    ds = _load("device_summary")
    report = {"metric": "mean total reward", "tasks": 3, "results": {
        "rl2": {"total": {"mean": 1.5, "ci_low": 1.0, "ci_high": 2.0}},
        "maml": {"per_step": {"0": {"mean": 3.0, "ci_low": 2.0, "ci_high": 4.0}}}}}
    log = ("=== bench_x_cuda: bench x\n" + json.dumps({"figures": {"steps_per_s": 10.0}}) + "\n"
           "=== ev_cuda: eval r\n" + json.dumps(report, indent=1) + "\n"
           "=== pytest: pytest\n....s.. [ 50%]\n...=== bench_y: bench y\nTraceback\nboom\n")
    steps = ds.parse_log(log)
    assert steps["bench_x_cuda"]["figures"] == {"steps_per_s": 10.0}
    assert steps["ev_cuda"]["figures"]["results"] == {"rl2": [1.5, 1.0, 2.0], "maml": {"0": [3.0, 2.0, 4.0]}}
    assert steps["pytest"]["output_tail"].endswith("...") and "boom" in steps["bench_y"]["output_tail"]
    ds.parse_summary('bench_x_cuda rc=0 1.5s\npytest rc=124 180.0s\nrun a: {"env_steps": 5}\n'
                     '  timing: {"steps_per_s": 7.0}\n', steps)
    assert steps["bench_x_cuda"]["rc"] == 0 and steps["pytest"] == {**steps["pytest"], "rc": 124, "seconds": 180.0}
    assert steps["runs"]["a"] == {"last_metrics": {"env_steps": 5}, "last_timing": {"steps_per_s": 7.0}}


@pytest.mark.slow
def test_bench_script_records_figures_command_and_commit(tmp_path):
    """experiments/bench.py keeps earlier benchmarks in its file and stamps each new one."""
    out = tmp_path / "bench.json"
    out.write_text(json.dumps({"benches": {"older": {"figures": {"x": 1}}}}))
    assert _load("bench").main(["compare", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["benches"]["older"] == {"figures": {"x": 1}}
    e = data["benches"]["compare"]
    assert e["command"] == "python experiments/bench.py compare" and e["commit"] and e["figures"]["runs"] == 10
    assert "cores" in data["machine"]


def test_paired_difference_and_best_baseline():
    """The README's 'RL² − best baseline' column: the best classical baseline skips random, the
    references and the agent's own forms; pairing by task cancels the shared task difficulty,
    so the paired CI is far narrower than either mean's."""
    import torch

    from metarl.eval.trials import best_baseline
    from metarl.eval.stats import mean_ci, paired_diff_ci
    res = {"rl2": {"mean": 70.0}, "rl2 (deterministic)": {"mean": 90.0}, "random": {"mean": 95.0},
           "gittins": {"mean": 99.0}, "greedy": {"total": {"mean": 79.0}}, "ucb1": {"mean": 60.0}}
    assert best_baseline(res, "rl2") == "greedy"
    assert best_baseline({"rl2": {"mean": 1.0}, "random": {"mean": 0.0}}, "rl2") is None
    g = torch.Generator().manual_seed(0)
    difficulty = 50 * torch.rand(4000, generator=g)  # shared by both methods on each task
    x = difficulty + 0.3 + torch.randn(4000, generator=g)
    y = difficulty + torch.randn(4000, generator=g)
    d = paired_diff_ci(x.tolist(), y.tolist())
    assert d["ci_low"] < 0.3 < d["ci_high"] and d["ci_low"] > 0
    assert (d["ci_high"] - d["ci_low"]) < 0.1 * (mean_ci(x)["ci_high"] - mean_ci(x)["ci_low"])
    with pytest.raises(ValueError, match="same tasks"):
        paired_diff_ci([1.0, 2.0], [1.0])


def test_agent_is_paired_by_task_with_the_reference(tmp_path, monkeypatch):
    """The RL² paper's claim 'RL² beats PSRL' is a paired difference against the reference: every
    form of the agent minus PSRL on the same tasks; the README row reads it from the results file,
    or from the run's committed record for files written before it."""
    from metarl.eval.trials import paired_vs, reference_of
    res = {"rl2": {"scores": [3.0, 5.0, 7.0, 9.0]}, "rl2 (deterministic)": {"scores": [2.0, 4.0, 6.0, 8.0]},
           "psrl": {"scores": [1.0, 4.0, 6.0, 7.0]}, "mdp-greedy": {"scores": [0.0, 0.0, 0.0, 0.0]}}
    assert reference_of(res) == "psrl" and reference_of({"rl2": {}}) is None
    pairs = paired_vs(res, "rl2", "psrl")
    assert pairs["baseline"] == "psrl" and set(pairs) == {"baseline", "rl2", "rl2 (deterministic)"}
    assert pairs["rl2"]["mean"] == pytest.approx(1.5) and pairs["rl2 (deterministic)"]["mean"] == pytest.approx(0.5)
    assert paired_vs(res, "rl2", None) is None and paired_vs({"rl2": {}, "psrl": {}}, "rl2", "psrl") is None
    rt = _load("readme_table")
    monkeypatch.setattr(rt, "ROOT", tmp_path)
    s = {"experiment": "x", "metrics": {"agent": "rl2"}}
    assert rt.reference_pairs(s) is None  # no record, nothing in the file
    (tmp_path / "experiments" / "results" / "runs" / "x").mkdir(parents=True)
    (tmp_path / "experiments" / "results" / "runs" / "x" / "eval.json").write_text(json.dumps({"results": res}))
    assert rt.reference_pairs(s)["rl2"]["mean"] == pytest.approx(1.5)
    assert rt.reference_pairs({**s, "metrics": {"agent": "rl2", "paired_vs_reference": {"baseline": "y"}}}) == {"baseline": "y"}


def test_parked_run_resumes_on_a_fresh_checkout(tmp_path, monkeypatch, capsys):
    """--park copies the run's checkpoint and logs to experiments/inflight/NAME; with runs/ gone
    (a new machine), the experiment resumes from that copy instead of training again, and the
    copy is removed once the results file is written."""
    run = _load("run")
    (tmp_path / "experiments" / "configs").mkdir(parents=True)
    (tmp_path / "experiments" / "configs" / "tiny.toml").write_text(
        '[experiment]\nbaselines = "none"\neval_tasks = 20\n[run]\nagent = "rl2"\nenv = "bandit"\nseed = 0\n'
        '[env]\nk = 3\nn = 5\n[agent]\nnum_envs = 16\nhidden_size = 8\ntotal_steps = 240\ncheckpoint_every = 1\n')
    monkeypatch.setattr(run, "HERE", tmp_path / "experiments")
    monkeypatch.setattr(run, "ROOT", tmp_path)
    assert run.main(["tiny", "--park", "--quiet"]) == 2  # nothing to park yet
    assert run.main(["tiny", "--quiet", "--device", "cpu"]) == 0
    run_dir, parked = tmp_path / "runs" / "experiments" / "tiny", tmp_path / "experiments" / "inflight" / "tiny"
    metrics = (run_dir / "metrics.jsonl").read_text()
    assert run.main(["tiny", "--park"]) == 0
    assert (parked / "checkpoints" / "latest.pt").exists() and (parked / "metrics.jsonl").read_text() == metrics
    import shutil
    shutil.rmtree(tmp_path / "runs")
    (tmp_path / "experiments" / "results" / "tiny.json").unlink()
    assert run.main(["tiny", "--quiet", "--device", "cpu"]) == 0
    assert "resuming from the parked run" in capsys.readouterr().err
    assert (run_dir / "metrics.jsonl").read_text() == metrics  # resumed at the end: nothing retrained
    assert (tmp_path / "experiments" / "results" / "tiny.json").exists() and not parked.exists()


def test_seed_records_of_a_config_and_checkpoint(tmp_path):
    """NAME and NAME_seedN by seed; with a tail, that checkpoint's records (NAME_latest,
    NAME_seedN_latest); other configs sharing the prefix are not seeds."""
    run = _load("run")
    for n in ("x", "x_seed2", "x_seed10", "x_latest", "x_seed2_latest", "x_big", "x_big_seed1", "x_seed2_best"):
        (tmp_path / n).mkdir()
    assert [p.name for p in run.seed_records(tmp_path, "x")] == ["x", "x_seed2", "x_seed10"]
    assert [p.name for p in run.seed_records(tmp_path, "x", "_latest")] == ["x_latest", "x_seed2_latest"]
    assert [p.name for p in run.seed_records(tmp_path, "x_big")] == ["x_big", "x_big_seed1"]


@pytest.mark.slow
def test_seeds_of_one_config_are_recorded_and_compared(tmp_path, monkeypatch):
    """Each finished seed keeps its record (what metarl compare reads) under
    experiments/results/runs/; from the second seed on, experiments/results/NAME_seeds/ holds their
    comparison, whose summary the README's ML10 table reads."""
    pytest.importorskip("rliable")
    run = _load("run")
    (tmp_path / "experiments" / "configs").mkdir(parents=True)
    (tmp_path / "experiments" / "configs" / "tiny.toml").write_text(
        '[experiment]\nbaselines = "none"\neval_tasks = 20\n[run]\nagent = "rl2"\nenv = "bandit"\nseed = 0\n'
        '[env]\nk = 3\nn = 5\n[agent]\nnum_envs = 16\nhidden_size = 8\ntotal_steps = 240\n')
    monkeypatch.setattr(run, "HERE", tmp_path / "experiments")
    monkeypatch.setattr(run, "ROOT", tmp_path)
    results = tmp_path / "experiments" / "results"
    assert run.main(["tiny", "--quiet", "--device", "cpu"]) == 0
    assert (results / "runs" / "tiny" / "eval.json").exists() and not (results / "runs" / "tiny" / "checkpoints").exists()
    assert not (results / "tiny_seeds").exists()  # one seed: nothing to compare yet
    assert run.main(["tiny", "--quiet", "--device", "cpu", "--seed", "1"]) == 0
    summary = json.loads((results / "tiny_seeds" / "summary.json").read_text())
    assert [Path(r).name for r in summary["runs"]] == ["tiny", "tiny_seed1"]
    assert summary["methods"]["rl2"]["runs"] == 2
    lo, point, hi = sorted(summary["methods"]["rl2"]["iqm"])
    assert summary["methods"]["rl2"]["iqm"][0] == point and lo <= point <= hi
    cell = _load("readme_table").seeds_cell(summary, "rl2")
    assert cell.startswith("sampled actions: IQM ") and "deterministic: IQM " in cell


def test_headline_shows_the_best_run_of_each_setting_beside_its_anchor(tmp_path, monkeypatch):
    rt = _load("readme_table")
    (tmp_path / "experiments" / "results").mkdir(parents=True)
    (tmp_path / "experiments" / "configs").mkdir()
    monkeypatch.setattr(rt, "ROOT", tmp_path)

    def result(name, mean, k=5):
        r = {"mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1}
        s = {"experiment": name, "command": f"python experiments/run.py {name}", "commit": "abc1234",
             "metrics": {"agent": "rl2", "env": "bandit", "env_config": {"k": k, "n": 10}, "protocol": "trial",
                         "results": {"rl2": r, "greedy": {**r, "mean": 6.0, "ci_low": 5.9}},
                         "paper": {"Gittins (RL² paper)": 6.61}}}
        (tmp_path / "experiments" / "results" / f"{name}.json").write_text(json.dumps(s))
    result("worse", 5.0)
    result("better", 6.5)
    result("other_k", 4.0, k=10)
    rows = rt.headline().splitlines()[2:]
    assert len(rows) == 2  # one row per setting
    assert rows[0].startswith("| bandit (k=10, n=10) total reward | rl2 | 4.00 ± 0.10 |")
    assert "| 6.50 ± 0.10 | Gittins (RL² paper) 6.61 | greedy 6.00 ± 0.10 | `python experiments/run.py better`" in rows[1]


def test_a_cell_search_and_generation_stay_out_of_the_headline(tmp_path, monkeypatch):
    """A DARTS search's mixed network is not MAML's result, and generation's recognised share is not
    a query MSE: neither takes a headline row. The search's row names it and the cell it chose."""
    rt = _load("readme_table")
    (tmp_path / "experiments" / "results").mkdir(parents=True)
    (tmp_path / "experiments" / "configs").mkdir()
    monkeypatch.setattr(rt, "ROOT", tmp_path)

    def result(name, mean, agent="maml", option=None, **extra):
        pt = {"mean": mean, "ci_low": mean - 0.01, "ci_high": mean + 0.01}
        r = {**pt, "metric": "query accuracy", "curve": {"x": "steps", "y": "accuracy", "points": [{"x": 1, **pt}]}}
        s = {"experiment": name, "command": f"python experiments/run.py {name}", "commit": "abc1234",
             "wall_clock_s": 60.0, "metrics": {"agent": agent, "env": "glyphs", "protocol": "fewshot",
                                               "held_out_tasks": 1000, "env_config": {"ways": 5, "shots": 1},
                                               "results": {agent: r}, **extra}}
        (tmp_path / "experiments" / "results" / f"{name}.json").write_text(json.dumps(s))
        (tmp_path / "experiments" / "configs" / f"{name}.toml").write_text(
            f'[agent]\nsearch = "{option}"\n' if option else "[agent]\n")
        return s
    result("plain", 0.5)
    darts = result("darts", 0.9, option="darts", search={"chosen": "conv3x3,skip,avg_pool3x3"})
    result("gen", 0.99, agent="fewshot-gen")
    rows = [r for r in rt.headline().splitlines()[2:] if "glyphs" in r]
    assert len(rows) == 1 and "| 50.0% " in rows[0] and "`python experiments/run.py plain`" in rows[0]
    row = rt.fewshot_row(darts)
    assert "| maml (darts search: the mixed network; chosen cell conv3x3,skip,avg_pool3x3) |" in row


def test_a_searched_cell_is_listed_with_its_weights_and_its_paired_difference(tmp_path, monkeypatch):
    """The arch_from run's row: the chosen cell, its weights against Conv4's, the search's time,
    the difference from the paired Conv4 run; it stays out of the meta-objectives table."""
    rt = _load("readme_table")
    results, configs = tmp_path / "experiments" / "results", tmp_path / "experiments" / "configs"
    results.mkdir(parents=True)
    configs.mkdir()
    monkeypatch.setattr(rt, "ROOT", tmp_path)
    pt = {"mean": 0.9, "ci_low": 0.89, "ci_high": 0.91}
    r = {**pt, "metric": "query accuracy", "curve": {"x": "steps", "y": "accuracy", "points": [{"x": 5, **pt}]}}
    base = {"commit": "abc1234", "metrics": {"agent": "maml", "env": "glyphs", "protocol": "fewshot",
                                             "held_out_tasks": 1000, "env_config": {"ways": 5, "shots": 1},
                                             "results": {"maml": r}}}
    search = {"chosen": "conv5x5,skip,skip", "chosen_params": 20000, "conv4_params": 28485}
    (results / "darts.json").write_text(json.dumps({**base, "experiment": "darts", "wall_clock_s": 600.0,
                                                    "command": "c", "metrics": {**base["metrics"], "search": search}}))
    (configs / "darts.toml").write_text('[agent]\nsearch = "darts"\n')
    paired = {"experiment": "conv4", "maml": {"mean": -0.05, "ci_low": -0.06, "ci_high": -0.04}}
    (results / "cell.json").write_text(json.dumps({**base, "experiment": "cell", "wall_clock_s": 300.0, "command": "c",
                                                   "metrics": {**base["metrics"], "paired_with": paired}}))
    (configs / "cell.toml").write_text('[experiment]\narch_from = "darts"\npaired_with = "conv4"\n[agent]\n')
    table = rt.arch_table()
    assert "| cell | glyphs 5-way 1-shot | conv5x5,skip,skip | 20,000 (Conv4 28,485) | 90.0% ± 1.0 |" in table
    assert "-0.050 [-0.060, -0.040] vs conv4 | darts, 10.0 min (abc1234) |" in table
    assert "| cell |" not in rt.objectives_table()


def test_two_stage_hypernet_runs_are_labelled_by_where_their_targets_come_from():
    """The objectives table tells the two-stage symmetry pair apart by target_init, not as plain MAML."""
    rt = _load("readme_table")
    label = lambda name: rt.objective_of({"experiment": name, "metrics": {"agent": "hypernet", "env_config": {}}})  # noqa: E731
    assert label("hypernet_sinusoid_2stage_shared") == "two-stage, targets fit from one shared init"
    assert label("hypernet_sinusoid_2stage_independent") == "two-stage, targets fit from independent inits"
    assert label("hypernet_sinusoid") == "maml"  # end-to-end: its meta-objective is the query loss


def test_rl_pairs_table_lists_every_paired_trial_run_with_what_it_changes():
    """Each RL trial results file with a paired_with gets a row naming the [agent] options that differ
    from its reference's config and the paired difference it records."""
    rt = _load("readme_table")
    assert rt.agent_changes({"experiment": "bandit_k5_n100_sep_hyper"}, "bandit_k5_n100_sep") == \
        "hyper_size=64, policy_head=hyper"
    assert rt.agent_changes({"experiment": "bandit_k5_n100_sep"}, "bandit_k5_n100_sep") == "–"
    text = rt.rl_pairs_table()
    for f in (ROOT / "experiments" / "results").glob("*.json"):
        m = json.loads(f.read_text()).get("metrics", {})
        if m.get("protocol") == "trial" and m.get("paired_with"):
            d = m["paired_with"][m["agent"]]
            assert f"| {f.stem} |" in text and f"{d['mean']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]" in text


def test_objective_experiment_is_paired_by_task_with_its_reference(tmp_path, monkeypatch):
    """[experiment] paired_with = "REF": the results file holds each result minus REF's same-named
    one on the same held-out tasks (the agent's and, with [experiment] attack, its robust accuracy),
    and the results page lists the run in the meta-objectives table."""
    run = _load("run")
    monkeypatch.setenv("METARL_CACHE", str(tmp_path / "cache"))
    configs = tmp_path / "experiments" / "configs"
    configs.mkdir(parents=True)
    body = ('[run]\nagent = "maml"\nenv = "glyphs"\nseed = 0\n[env]\nclasses = 40\nvariants = 20\nways = 4\n'
            'shots = 1\nquery = 2\neval_query = 2\n[agent]\niterations = 2\nmeta_batch = 2\nchannels = 4\n'
            'log_every = 1\neval_steps = 1\n')
    attack = 'attack = { kind = "fgsm", eps = 0.1 }\n'
    (configs / "ref.toml").write_text('[experiment]\neval_tasks = 12\n' + attack + body)
    (configs / "obj.toml").write_text('[experiment]\neval_tasks = 12\npaired_with = "ref"\n' + attack
                                      + body + 'meta_loss = "maml,l2:0.5"\n')
    monkeypatch.setattr(run, "HERE", tmp_path / "experiments")
    monkeypatch.setattr(run, "ROOT", tmp_path)
    assert run.main(["obj", "--quiet", "--device", "cpu"]) == 2  # no reference record yet
    assert run.main(["ref", "--quiet", "--device", "cpu"]) == 0
    assert run.main(["obj", "--quiet", "--device", "cpu"]) == 0
    results = tmp_path / "experiments" / "results"
    paired = json.loads((results / "obj.json").read_text())["metrics"]["paired_with"]
    ours = json.loads((results / "runs" / "obj" / "eval.json").read_text())["results"]
    ref = json.loads((results / "runs" / "ref" / "eval.json").read_text())["results"]
    assert paired["experiment"] == "ref" and set(paired) == {"experiment", "maml", "maml (fgsm eps=0.1)"}
    for name in ("maml", "maml (fgsm eps=0.1)"):
        diff = [a - b for a, b in zip(ours[name]["scores"], ref[name]["scores"])]
        assert paired[name]["mean"] == pytest.approx(sum(diff) / len(diff), abs=1e-6)
    table = _load("readme_table")
    monkeypatch.setattr(table, "ROOT", tmp_path)
    text = table.objectives_table()
    assert "| obj | glyphs 4-way 1-shot | maml: maml,l2:0.5 |" in text and "\n| ref |" not in text


def test_transfer_env_evaluates_the_learner_unchanged_on_another_family(tmp_path, monkeypatch):
    """[experiment] transfer_env: the results file and the record also hold the learner's
    evaluation on that family's tasks (as metarl eval --env), which the results page tabulates."""
    run = _load("run")
    configs = tmp_path / "experiments" / "configs"
    configs.mkdir(parents=True)
    (configs / "sin.toml").write_text(
        '[experiment]\neval_tasks = 12\ntransfer_env = "gp-regression"\n[run]\nagent = "maml"\nenv = "sinusoid"\n'
        'seed = 0\n[agent]\niterations = 2\nmeta_batch = 2\nhidden = 8\nlog_every = 1\neval_steps = 2\n')
    monkeypatch.setattr(run, "HERE", tmp_path / "experiments")
    monkeypatch.setattr(run, "ROOT", tmp_path)
    assert run.main(["sin", "--quiet", "--device", "cpu"]) == 0
    results = tmp_path / "experiments" / "results"
    m = json.loads((results / "sin.json").read_text())["metrics"]
    record = json.loads((results / "runs" / "sin" / "eval_gp-regression.json").read_text())
    assert m["env"] == "sinusoid" and m["transfer"]["env"] == record["env"] == "gp-regression"
    assert record["trained_on"] == "sinusoid" and m["transfer"]["held_out_tasks"] == 12
    assert m["transfer"]["results"]["maml"]["mean"] == record["results"]["maml"]["total"]["mean"]
    assert m["transfer"]["results"]["maml"]["mean"] != m["results"]["maml"]["mean"]  # other tasks
    table = _load("readme_table")
    monkeypatch.setattr(table, "ROOT", tmp_path)
    assert "| sin | sinusoid → gp-regression, 12 tasks | maml | " in table.transfer_table()


def test_arch_from_trains_the_cell_a_search_chose(tmp_path, monkeypatch, capsys):
    """[experiment] arch_from = "NAME": the run trains agent.arch = NAME's chosen cell at its width
    (its saved config says so, the results file records it); before NAME has results, one line, exit 2."""
    run = _load("run")
    configs = tmp_path / "experiments" / "configs"
    configs.mkdir(parents=True)
    (configs / "cell.toml").write_text(
        '[experiment]\neval_tasks = 4\narch_from = "search"\n[run]\nagent = "maml"\nenv = "glyphs"\nseed = 0\n'
        '[env]\nways = 2\nshots = 1\nquery = 2\n[agent]\niterations = 1\nmeta_batch = 1\nchannels = 4\n'
        'log_every = 1\neval_steps = 1\n')
    monkeypatch.setattr(run, "HERE", tmp_path / "experiments")
    monkeypatch.setattr(run, "ROOT", tmp_path)
    assert run.main(["cell", "--quiet", "--device", "cpu"]) == 2
    assert "run `python experiments/run.py search` first" in capsys.readouterr().err
    results = tmp_path / "experiments" / "results"
    results.mkdir()
    (results / "search.json").write_text(json.dumps({"metrics": {"search": {"chosen": "skip,max_pool3x3,conv5x5",
                                                                               "channels": 3}}}))
    assert run.main(["cell", "--quiet", "--device", "cpu"]) == 0
    saved = (tmp_path / "runs" / "experiments" / "cell" / "config.toml").read_text()
    assert 'arch = "skip,max_pool3x3,conv5x5"' in saved and "channels = 3" in saved
    m = json.loads((results / "cell.json").read_text())["metrics"]
    assert m["arch"] == "skip,max_pool3x3,conv5x5" and m["channels"] == 3 and m["arch_from"] == "search"


def test_a_parked_metaworld_evaluation_keeps_its_finished_parts(tmp_path):
    """Parking copies a finished eval.json and the finished methods of an evaluation in progress;
    a resumed experiment reuses an eval.json written for the same checkpoint and tasks (--tasks
    10000 plays 40 goals of each of 5 classes: 200), and evaluates again for another checkpoint or
    number of tasks."""
    import torch
    run = _load("run")
    src, dst = tmp_path / "run", tmp_path / "parked"
    (src / "checkpoints").mkdir(parents=True)
    torch.save({"iteration": 7}, src / "checkpoints" / "latest.pt")
    rep = {"protocol": "metaworld", "tasks": 200, "goals_per_class": 40, "env_config": {"goals_per_class": 40},
           "seed": 0, "checkpoint": "latest", "checkpoint_iteration": 7}
    (src / "eval.json").write_text(json.dumps(rep))
    (src / "eval_train_parts").mkdir()
    (src / "eval_train_parts" / "rl2.json").write_text("{}")
    run.copy_files(src, dst)
    assert (dst / "eval.json").exists() and (dst / "eval_train_parts" / "rl2.json").exists()
    assert run.finished_metaworld(dst, "eval", 200, "latest") == rep
    assert run.finished_metaworld(dst, "eval", 10000, "latest") == rep
    assert run.finished_metaworld(dst, "eval", 100, "latest") is None
    assert run.finished_metaworld(dst, "eval", 200, "best") is None
    assert run.finished_metaworld(dst, "eval_train", 200, "latest") is None
    torch.save({"iteration": 8}, dst / "checkpoints" / "latest.pt")
    assert run.finished_metaworld(dst, "eval", 200, "latest") is None
