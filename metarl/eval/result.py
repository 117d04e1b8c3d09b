"""One method's evaluation result: the contract of eval.json (docs/eval-json.md).

Every method result, whatever the protocol, has the same core:
- "metric": what "total" measures ("mean total reward", "success rate", "query MSE", ...);
- "total": the headline figure, a CI {"mean", "ci_low", "ci_high", "std", "n"} over held-out tasks;
- "curve": how the method improves with adaptation, {"x": what the x axis counts, "y": what
  the points measure, "points": [{"x": int, **CI}, ...]} in x order, or None where it has none;
- "scores": each held-out task's score, the same tasks for every method.
Protocol detail sits beside under its own keys (Meta-World's "per_class", "metaworld_tally",
"per_task", "return"; few-shot's "per_context").

Schema 1 files (no "curve"; per_step / per_step_return / per_episode / success_curve instead)
are read through `upgrade_result`, so readers only ever see the core above.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from metarl.errors import UserError
from metarl.eval.stats import mean_ci

EVAL_SCHEMA = 2  # eval.json's layout, documented in docs/eval-json.md; files without "schema" are 1

# x-axis labels: what one curve point's x counts
EPISODES_IN_TRIAL = "episode within the trial"
STEPS_IN_TRIAL = "step (pull) within the trial"
GRADIENT_STEPS = "gradient steps"
INNER_STEPS = "inner gradient steps"
EPISODES_SEEN = "adaptation episodes seen"


@dataclass(frozen=True)
class Curve:
    """A method's adaptation curve: y (mean with a 95% CI) at each x."""
    x: str                  # what x counts (EPISODES_IN_TRIAL, GRADIENT_STEPS, ...)
    y: str                  # what the points measure
    points: list[dict]      # [{"x": int, "mean", "ci_low", "ci_high", ...}] in x order

    @property
    def xs(self) -> list[int]:
        return [p["x"] for p in self.points]

    @property
    def means(self) -> list[float]:
        return [p["mean"] for p in self.points]

    def at(self, x: int) -> dict | None:
        """The point at x, None where the curve has none."""
        return next((p for p in self.points if p["x"] == x), None)

    def to_json(self) -> dict:
        return {"x": self.x, "y": self.y, "points": self.points}


def shown(ci: dict) -> dict:
    """What tables and plots show of a total or a curve point: its CI over all tasks, or, where
    some few-shot tasks' inner loops diverged, the CI over the others ("kept", written by
    metarl.fewshot.evaluation.step_summary beside the count "diverged")."""
    return ci.get("kept", ci)


def curve_of(result: dict) -> Curve | None:
    """The result's curve (None where it has none)."""
    c = result.get("curve")
    return None if c is None else Curve(c["x"], c["y"], c["points"])


def columns_curve(x_label: str, y_label: str, values: torch.Tensor, first_x: int = 1) -> dict:
    """A curve from per-task values [N, P] (point k at x = first_x + k): mean and CI per column."""
    return Curve(x_label, y_label, [{"x": first_x + k, **mean_ci(values[:, k])} for k in range(values.shape[1])]).to_json()


def result(metric: str, total: dict, curve: dict | None, scores: list[float], **detail) -> dict:
    """A method result in the shape every reader expects (see the module docstring)."""
    return {"metric": metric, "total": total, "curve": curve, "scores": scores, **detail}


# ---- schema 1 -> 2 ---------------------------------------------------------------------------

_FEWSHOT_METRIC = {"mse": "query MSE", "accuracy": "query accuracy"}


def _bare(xs, ys) -> list[dict]:
    """Points without a CI (schema 1 kept only the means of trial curves)."""
    return [{"x": x, "mean": y, "ci_low": y, "ci_high": y} for x, y in zip(xs, ys)]


def upgrade_result(res: dict, metric: str | None = None) -> dict:
    """A method result of any schema in schema-2 form; metric: the report's, for results that
    do not name their own. Works on eval.json results and on experiments/results summaries
    (whose results carry the total's fields at top level)."""
    if "curve" in res:
        return res
    res = dict(res)
    curve = None
    if "success_curve" in res:
        c = res.pop("success_curve")
        curve = {"x": EPISODES_SEEN, "y": "success rate",
                 "points": [{"x": x, **p} for x, p in zip(c["episodes"], c["success"])]}
    elif "per_step_return" in res:
        curve = {"x": GRADIENT_STEPS, "y": "mean episode return",
                 "points": [{"x": k, **p} for k, p in enumerate(res.pop("per_step_return"))]}
    elif isinstance(res.get("per_step"), dict):  # few-shot: {"0": CI, "1": CI, ...}
        steps = res.pop("per_step")
        res["metric"] = _FEWSHOT_METRIC.get(res.get("metric"), res.get("metric"))
        curve = {"x": INNER_STEPS, "y": res["metric"],
                 "points": [{"x": int(k), **steps[k]} for k in sorted(steps, key=int)]}
    elif len(res.get("per_episode", [])) > 1:
        ys = res["per_episode"]
        curve = {"x": EPISODES_IN_TRIAL, "y": "mean episode return", "points": _bare(range(1, len(ys) + 1), ys)}
    elif res.get("per_step"):
        ys = res["per_step"]
        curve = {"x": STEPS_IN_TRIAL, "y": "mean reward", "points": _bare(range(1, len(ys) + 1), ys)}
    res.pop("per_step", None)
    res.pop("per_episode", None)
    res.setdefault("metric", metric)
    res["curve"] = curve
    return res


def upgrade_report(report: dict) -> dict:
    """An eval.json report of any schema in schema-2 form."""
    metric = _FEWSHOT_METRIC.get(report.get("metric"), report.get("metric"))
    return {**report, "schema": EVAL_SCHEMA, "metric": metric,
            "results": {n: upgrade_result(r, metric) for n, r in report["results"].items()}}


def read_eval(path: str | Path) -> dict:
    """An eval.json (or eval_train.json) report, checked to be one this metarl can read, in the
    current schema."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
        schema = int(report.get("schema", 1))
        report["agent"], report["results"].items()
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{path} is not a metarl evaluation report; re-run: metarl eval {path.parent}") from None
    if schema > EVAL_SCHEMA:
        raise UserError(f"{path} was written by a newer metarl (eval.json schema {schema}; this one reads up to "
                        f"{EVAL_SCHEMA}): upgrade metarl")
    return upgrade_report(report)
