"""metarl compare: statistics against rliable and hand-computed cases, report files, fairness refusals."""
import csv
import json

import numpy as np
import pytest

from metarl.eval.compare import Run, interval_estimates, over_runs, per_task_improvement, probability_of_improvement

rliable_metrics = pytest.importorskip("rliable.metrics")


def test_probability_of_improvement_by_hand_and_against_rliable():
    # task 0: x {1, 3} vs y {2}: one win of two -> 0.5; task 1: x {2, 2} vs y {2}: ties -> 0.5;
    # task 2: x {5, 4} vs y {0}: 1.0  => mean 2/3
    x = np.array([[1.0, 2.0, 5.0], [3.0, 2.0, 4.0]])
    y = np.array([[2.0, 2.0, 0.0]])
    assert per_task_improvement(x, y).tolist() == [0.5, 0.5, 1.0]
    assert probability_of_improvement(x, y)[0] == pytest.approx(2 / 3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.integers(0, 4, size=(3, 20)).astype(float)  # small integers: many ties
        b = rng.integers(0, 4, size=(4, 20)).astype(float)
        assert probability_of_improvement(a, b)[0] == pytest.approx(rliable_metrics.probability_of_improvement(a, b))
    # lower is better flips the question: P(X < Y)
    assert probability_of_improvement(x, y, lower_is_better=True)[0] == pytest.approx(1 / 3)


def test_interval_estimates_match_rliable_point_estimates_and_are_seeded():
    rng = np.random.default_rng(1)
    scores = {"a": rng.normal(1.0, 1.0, size=(3, 50)), "b": rng.normal(0.0, 1.0, size=(2, 50))}
    est = interval_estimates(scores, reps=300, seed=3)
    for k, v in scores.items():
        assert est[k]["mean"][0] == pytest.approx(v.mean())
        assert est[k]["iqm"][0] == pytest.approx(rliable_metrics.aggregate_iqm(v))
        for point, lo, hi in (est[k]["mean"], est[k]["iqm"]):
            assert lo < point < hi
    assert est == interval_estimates(scores, reps=300, seed=3)
    # one run per method: resampling tasks still gives an interval (held-out tasks are a sample)
    one = interval_estimates({"a": scores["a"][:1]}, reps=300)
    assert one["a"]["mean"][1] < one["a"]["mean"][2]


def test_over_runs_scores_each_run_then_aggregates_runs():
    """Meta-World+'s statistic: each seed's overall success, then the IQM over seeds; on
    near-binary per-task success the IQM over runs x tasks says something else entirely."""
    scores = {"a": np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0],
                             [1.0, 1.0, 1.0, 1.0]])}
    est = over_runs(scores, reps=300)["a"]
    assert est["runs"] == [0.25, 0.5, 1.0, 1.0]
    assert est["mean"][0] == pytest.approx(0.6875)
    assert est["iqm"][0] == pytest.approx(0.75)  # the middle two runs: 0.5, 1.0
    assert est["iqm"][1] <= est["iqm"][0] <= est["iqm"][2]
    pooled = interval_estimates(scores, reps=300)["a"]["iqm"][0]  # the middle 8 of 16 scores: 1 zero, 7 ones
    assert pooled == pytest.approx(rliable_metrics.aggregate_iqm(scores["a"])) and pooled == pytest.approx(0.875)


def test_train_time_stitches_a_clock_restarted_on_resume(tmp_path):
    """Runs resumed before the clock counted on across resumes logged wall_clock_s from 0 again."""
    timing = [{"iteration": i, "wall_clock_s": w} for i, w in enumerate([10.0, 20.0, 5.0, 15.0, 25.0, 4.0])]
    r = Run(tmp_path, "rl2", 0, {}, {}, [], timing)
    assert r.clock == {0: 10.0, 1: 20.0, 2: 25.0, 3: 35.0, 4: 45.0, 5: 49.0}
    assert r.train_time_s == 49.0
    assert Run(tmp_path, "rl2", 0, {}, {}, [], []).train_time_s is None


def _png_size(path):
    head = path.read_bytes()[16:24]
    return int.from_bytes(head[:4], "big"), int.from_bytes(head[4:], "big")


def test_training_plots_add_the_held_out_panel_where_runs_logged_one(tmp_path):
    """Runs that logged a held-out sample while training (agent.eval_every) get a second panel,
    training success beside held-out success; the wall-clock axis follows the stitched clock."""
    from metarl.eval.compare import _curve, training_plots
    metrics = [{"iteration": i, "env_steps": 100 * (i + 1), "trial_return": float(i), "success": 0.1 * i}
               for i in range(4)]
    timing = [{"iteration": i, "wall_clock_s": w} for i, w in enumerate([60.0, 120.0, 30.0, 90.0])]
    plain = [Run(tmp_path, "rl2", s, {}, {}, metrics, timing) for s in (0, 1)]
    (tmp_path / "plain").mkdir()
    training_plots(plain, ["rl2", "rl2"], tmp_path / "plain")
    sampled = [dict(m, heldout_success=0.05 * m["iteration"]) if m["iteration"] % 2 else m for m in metrics]
    gap = [Run(tmp_path, "rl2", s, {}, {}, sampled, timing) for s in (0, 1)]
    (tmp_path / "gap").mkdir()
    training_plots(gap, ["rl2", "rl2"], tmp_path / "gap")
    for name in ("training_steps.png", "training_wallclock.png"):
        assert _png_size(tmp_path / "gap" / name)[0] > 1.5 * _png_size(tmp_path / "plain" / name)[0]
    xs, ys = _curve(gap[0], "heldout_success", by_clock=False)
    assert xs == [200, 400] and ys == pytest.approx([0.05, 0.15])
    xs, ys = _curve(gap[0], "heldout_success", by_clock=True)  # minutes: 2, then 2 + 0.5 + 1 after a restart
    assert xs == pytest.approx([2.0, 3.5]) and ys == pytest.approx([0.05, 0.15])


def _train_eval(cli, tiny, run, steps=320, tasks=40, seed=0):
    code, _, err = cli("train", "rl2", "--env", "bandit", "--set", f"agent.total_steps={steps}", "--seed", seed,
                       "--run-dir", run, *tiny)
    assert code == 0, err
    code, _, err = cli("eval", run, "--tasks", tasks)
    assert code == 0, err


@pytest.mark.slow
def test_report_over_seeds_writes_every_file(cli, tiny, tmp_path):
    runs = [tmp_path / f"s{i}" for i in range(2)]
    for i, r in enumerate(runs):
        _train_eval(cli, tiny, r, seed=i)
    out = tmp_path / "report"
    code, stdout, err = cli("compare", *runs, "--out", out, "--reps", 200)
    assert code == 0, err
    for name in ("report.md", "summary.csv", "poi.csv", "per_task.csv", "adaptation.png", "training_steps.png",
                 "training_wallclock.png"):
        assert (out / name).stat().st_size > 100, name
    rows = {r["method"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["rl2"]["runs"] == "2" and rows["rl2"]["tasks"] == "40"
    assert {"gittins", "greedy", "random"} <= set(rows)  # baselines from the evaluations, once each
    assert rows["gittins"]["runs"] == "1"
    mean = np.mean([json.loads((r / "eval.json").read_text())["results"]["rl2"]["total"]["mean"] for r in runs])
    assert float(rows["rl2"]["mean"]) == pytest.approx(mean, rel=1e-4)
    per_task = list(csv.DictReader(open(out / "per_task.csv")))
    assert sum(r["method"] == "rl2" for r in per_task) == 80
    assert "| rl2 | 2 |" in (out / "report.md").read_text() and "# metarl compare" in stdout
    # writing into a non-empty folder is refused; --overwrite allows it
    code, _, err = cli("compare", *runs, "--out", out)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert cli("compare", *runs, "--out", out, "--reps", 200, "--overwrite", "--no-baselines")[0] == 0
    # the run's own other form stays (RL² evaluated deterministically too); baselines go
    assert {r["method"] for r in csv.DictReader(open(out / "summary.csv"))} == {"rl2", "rl2 (deterministic)"}


@pytest.mark.slow
def test_metaworld_style_per_task_table_and_heatmap(cli, tiny, tmp_path):
    """A success-protocol evaluation (named tasks) gets a per-task table and heatmap. The
    evaluation file is rewritten in that format from a real run, as a Meta-World eval would be."""
    run = tmp_path / "run"
    _train_eval(cli, tiny, run, tasks=6)
    ev = json.loads((run / "eval.json").read_text())
    for name, res in ev["results"].items():
        succ = [float(i % 2) for i in range(6)] if name == "rl2" else [0.0] * 6
        res["scores"] = succ
        res["per_task"] = [{"class": "reach-v3", "goal": i, "success": s} for i, s in enumerate(succ)]
        res["curve"] = {"x": "adaptation episodes seen", "y": "success rate",
                        "points": [{"x": k, "mean": 0.1 * k, "ci_low": 0.0, "ci_high": 0.3} for k in range(3)]}
        if name.startswith("rl2"):  # Meta-World's own tally: two groups of three goals
            res["metaworld_tally"] = {"scores": [1.0, 2 / 3] if name == "rl2" else [0.0, 1 / 3],
                                      "group_classes": ["reach-v3", "reach-v3"]}
    ev["metric"] = "success rate"
    (run / "eval.json").write_text(json.dumps(ev))
    out = tmp_path / "out"
    code, _, err = cli("compare", run, "--out", out, "--reps", 200)
    assert code == 0, err
    assert (out / "per_task_heatmap.png").stat().st_size > 1000
    table = list(csv.DictReader(open(out / "per_task_success.csv")))
    assert [r["task"] for r in table][:2] == ["reach-v3 #0", "reach-v3 #1"] and table[1]["rl2"] == "1.000"
    assert "| reach-v3 #1 | 1.00 |" in (out / "report.md").read_text()
    tally = {r["method"]: r for r in csv.DictReader(open(out / "tally_summary.csv"))}
    assert float(tally["rl2"]["mean"]) == pytest.approx(5 / 6) and tally["rl2"]["groups"] == "2"
    assert float(tally["rl2 (deterministic)"]["mean"]) == pytest.approx(1 / 6)
    assert "## Meta-World's own tally" in (out / "report.md").read_text()


@pytest.mark.slow
def test_mismatched_tasks_or_budgets_are_refused(cli, tiny, tmp_path):
    a, b, c, d = (tmp_path / n for n in "abcd")
    _train_eval(cli, tiny, a)
    _train_eval(cli, tiny, b, tasks=30)
    _train_eval(cli, tiny, c, steps=3200)
    code, _, err = cli("compare", a, b, "--out", tmp_path / "o1")
    assert code == 2 and "held-out tasks" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("compare", a, c, "--out", tmp_path / "o2")
    assert code == 2 and "unequal budgets" in err and "--allow-unequal-budgets" in err
    assert not (tmp_path / "o2").exists()  # nothing written for a refused comparison
    assert cli("compare", a, c, "--out", tmp_path / "o3", "--reps", 200, "--allow-unequal-budgets")[0] == 0
    # a run never evaluated
    assert cli("train", "rl2", "--env", "bandit", "--set", "agent.total_steps=320", "--run-dir", d, *tiny)[0] == 0
    code, _, err = cli("compare", a, d, "--out", tmp_path / "o4")
    assert code == 2 and "metarl eval" in err
    # a different task distribution (k) is refused too
    e = tmp_path / "e"
    assert cli("train", "rl2", "--env", "bandit", "--set", "env.k=3", "--set", "agent.total_steps=320",
               "--run-dir", e, *tiny)[0] == 0
    assert cli("eval", e, "--tasks", 40)[0] == 0
    code, _, err = cli("compare", a, e, "--out", tmp_path / "o5")
    assert code == 2 and "env options" in err


def test_a_runs_other_forms_are_methods_of_their_own_over_all_its_seeds(tmp_path):
    """multitask-ppo reports "multitask-ppo (zero-shot)" beside itself: every seed's zero-shot scores
    form one method, not a baseline taken from the first run only."""
    from metarl.eval.compare import Run, gather_scores

    def run(agent, seed, extra):
        res = {agent: {"scores": [seed, seed + 1.0]}, "random": {"scores": [0.0, 0.5]}}
        res.update({f"{agent} (zero-shot)": {"scores": [v, v]} for v in extra})
        return Run(tmp_path, agent, seed, {}, {"results": res})
    runs = [run("rl2", 0, []), run("multitask-ppo", 1, [7.0]), run("multitask-ppo", 2, [9.0])]
    scores = gather_scores(runs, ["rl2", "multitask-ppo", "multitask-ppo"])
    assert set(scores) == {"rl2", "multitask-ppo", "multitask-ppo (zero-shot)", "random"}
    assert scores["multitask-ppo (zero-shot)"].tolist() == [[7.0, 7.0], [9.0, 9.0]]
    assert scores["multitask-ppo"].shape == (2, 2) and scores["random"].shape == (1, 2)


def test_an_eval_json_from_a_newer_metarl_is_refused_in_one_line(cli, tmp_path):
    from metarl.eval.result import EVAL_SCHEMA
    runs = []
    for n in ("a", "b"):
        run = tmp_path / n
        run.mkdir()
        (run / "config.toml").write_text('[run]\nagent = "rl2"\nenv = "bandit"\nseed = 0\n')
        (run / "eval.json").write_text(json.dumps({"schema": EVAL_SCHEMA + 1, "agent": "rl2",
                                                   "results": {"rl2": {"scores": [1.0]}}}))
        runs.append(run)
    code, _, err = cli("compare", *runs, "--out", tmp_path / "out")
    assert code == 2 and "newer metarl" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
