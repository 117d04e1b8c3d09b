"""eval.json's method-result contract (metarl.eval.result): one curve per result, schema-1 files
read in the current form."""
import json
from pathlib import Path

import pytest
import torch

from metarl.eval.result import (EPISODES_IN_TRIAL, EPISODES_SEEN, EVAL_SCHEMA, GRADIENT_STEPS, INNER_STEPS,
                                STEPS_IN_TRIAL, curve_of, read_eval, upgrade_report)
from metarl.eval.trials import Evaluation, summarize, summarize_steps

ROOT = Path(__file__).resolve().parent.parent
CI = {"ci_low": 0.0, "ci_high": 1.0, "std": 0.5, "n": 4}


def _v1(protocol: str, metric: str, results: dict) -> dict:
    return {"env": "x", "env_config": {}, "agent": next(iter(results)), "tasks": 4, "seed": 0, "protocol": protocol,
            "metric": metric, "results": results}


def test_schema_1_results_become_one_curve_each(tmp_path):
    report = _v1("inner-steps", "mean episode return", {
        "maml-trpo": {"total": {"mean": 2.0, **CI}, "per_step_return": [{"mean": 1.0, **CI}, {"mean": 2.0, **CI}]},
        "random": {"total": {"mean": 0.5, **CI}, "per_episode": [0.2, 0.8]},
        "bandit-like": {"total": {"mean": 3.0, **CI}, "per_episode": [3.0], "per_step": [1.0, 0.5, 1.5]},
        "one-episode": {"total": {"mean": 1.0, **CI}, "per_episode": [1.0]}})
    (tmp_path / "eval.json").write_text(json.dumps(report))
    up = read_eval(tmp_path / "eval.json")
    assert up["schema"] == EVAL_SCHEMA
    maml, rnd, bandit = (curve_of(up["results"][n]) for n in ("maml-trpo", "random", "bandit-like"))
    assert (maml.x, maml.xs, maml.means) == (GRADIENT_STEPS, [0, 1], [1.0, 2.0])
    assert (rnd.x, rnd.xs, rnd.means) == (EPISODES_IN_TRIAL, [1, 2], [0.2, 0.8])
    assert (bandit.x, bandit.xs, bandit.means) == (STEPS_IN_TRIAL, [1, 2, 3], [1.0, 0.5, 1.5])
    assert curve_of(up["results"]["one-episode"]) is None
    for r in up["results"].values():  # nothing of schema 1 is left for a reader to sniff
        assert not {"per_step", "per_step_return", "per_episode", "success_curve"} & set(r)
        assert r["metric"] == "mean episode return"


def test_schema_1_fewshot_names_its_metric_as_the_report_does():
    report = _v1("fewshot", "query MSE", {"maml": {"metric": "mse", "total": {"mean": 0.3, **CI},
                                                   "per_step": {"10": {"mean": 0.3, **CI}, "0": {"mean": 3.0, **CI},
                                                                "1": {"mean": 0.5, **CI}}}})
    r = upgrade_report(report)["results"]["maml"]
    c = curve_of(r)
    assert r["metric"] == c.y == "query MSE" and c.x == INNER_STEPS and c.xs == [0, 1, 10]
    assert c.at(1)["mean"] == 0.5 and c.at(2) is None


def test_a_committed_schema_1_metaworld_report_reads_as_schema_2():
    """The MAML-TRPO ML10 record in experiments/results/ carries its eval report (schema 1) as `metrics`."""
    old = json.loads((ROOT / "experiments" / "results" / "maml_trpo_ml10.json").read_text())["metrics"]
    if old.get("schema", 1) != 1:
        pytest.skip("the committed report was rewritten in a later schema")
    assert any("success_curve" in r for r in old["results"].values())
    up = upgrade_report(old)
    for name, r in old["results"].items():
        if "success_curve" not in r:
            continue
        c = curve_of(up["results"][name])
        assert c.x == EPISODES_SEEN and c.xs == r["success_curve"]["episodes"]
        assert c.means == [p["mean"] for p in r["success_curve"]["success"]]
        assert up["results"][name]["per_class"] == r["per_class"]


def test_current_results_pass_through_unchanged():
    ev = Evaluation(torch.tensor([[1.0, 2.0], [3.0, 5.0]]), torch.zeros(2, 20))
    steps = summarize_steps(torch.tensor([[0.0, 1.0], [2.0, 5.0]]))
    report = _v1("trial", "mean total reward", {"rl2": summarize(ev), "maml": steps})
    assert upgrade_report(report) == {**report, "schema": EVAL_SCHEMA}
    c = curve_of(report["results"]["rl2"])
    assert c.x == EPISODES_IN_TRIAL and c.means == [2.0, 3.5] and c.points[1]["ci_low"] < 3.5 < c.points[1]["ci_high"]
    assert report["results"]["rl2"]["total"]["mean"] == 5.5
    assert curve_of(steps).means == [1.0, 3.0] and steps["total"]["mean"] == 3.0


def test_a_stopped_evaluation_resumes_at_the_next_method(tmp_path):
    """Each finished method is kept in RUN/STEM_parts until the report is written: a second
    evaluation of the same checkpoint and options reuses it, another checkpoint recomputes it."""
    from types import SimpleNamespace

    from metarl.app.evaluate import _MethodParts
    run = SimpleNamespace(path=tmp_path, which="latest", checkpoint={"iteration": 5}, device="cpu")
    calls = []
    first = _MethodParts(run, "eval", {"goals": 2}).get("rl2", lambda: calls.append(1) or {"mean": 0.5})
    again = _MethodParts(run, "eval", {"goals": 2}).get("rl2", lambda: calls.append(1) or {"mean": 0.9})
    assert first == again == {"mean": 0.5} and len(calls) == 1
    assert _MethodParts(run, "eval", {"goals": 3}).get("rl2", lambda: {"mean": 0.8}) == {"mean": 0.8}
    later = SimpleNamespace(path=tmp_path, which="latest", checkpoint={"iteration": 6}, device="cpu")
    parts = _MethodParts(later, "eval", {"goals": 3})
    assert parts.get("rl2", lambda: {"mean": 0.7}) == {"mean": 0.7}
    parts.clear()
    assert not (tmp_path / "eval_parts").exists()
