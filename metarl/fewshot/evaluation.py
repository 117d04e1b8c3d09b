"""Evaluation of few-shot learners on held-out (test-split) tasks, and its plots.

Regression: query MSE after 0, 1, 5 and 10 inner steps (those <= eval_steps, and eval_steps);
classification: query accuracy at the same steps. Learners that adapt in closed form
(ProtoNets, CNP, ...) have one figure. Every learner evaluated with the same seed sees the same
tasks (the test stream of metarl.fewshot.core.task_generator, drawn in the same batch sizes).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from metarl.eval.plots import pyplot
from metarl.eval.result import INNER_STEPS, Curve, result
from metarl.eval.stats import mean_ci
from metarl.eval.trials import task_scores
from metarl.fewshot.core import FewShotDistribution, FewShotLearner, task_generator, task_score
from metarl.protocols import fewshot_metric

REPORT_STEPS = (0, 1, 5, 10)


def report_steps(eval_steps: int) -> list[int]:
    return sorted({s for s in REPORT_STEPS if s <= eval_steps} | {eval_steps})


def evaluate_fewshot(learner: FewShotLearner, dist: FewShotDistribution, num_tasks: int, seed: int,
                     eval_steps: int, device, batch_tasks: int = 100, attack=None,
                     split: str = "test") -> dict[int, torch.Tensor]:
    """Per-task score [num_tasks] after each reported number of inner steps -> {steps: scores}.
    Closed-form learners give {0: scores} (steps do not apply). With `attack`
    (metarl.fewshot.attacks.Attack) the query images are perturbed against the model adapted by
    all eval_steps: robust accuracy on the same tasks, {eval_steps: scores} (each attack step is a
    backward pass through the adapted model, so the earlier steps are not attacked). `split`
    "val" scores validation tasks (model selection)."""
    device = torch.device(device)
    gen = task_generator(seed, split, device)
    attack_gen = torch.Generator(device=device).manual_seed(seed)
    steps = report_steps(eval_steps) if learner.gradient_steps else [0]
    if attack is not None:
        steps = steps[-1:]
    out: dict[int, list] = {s: [] for s in steps}
    learner.eval()
    for start in range(0, num_tasks, batch_tasks):
        b = min(batch_tasks, num_tasks - start)
        batch = dist.sample(b, gen, split, query=getattr(dist, "eval_query", None))
        for s in steps:
            with torch.no_grad():
                state = learner.adapt(batch["xs"], batch["ys"], s)
                xq = batch["xq"] if attack is None else attack.perturb(learner, state, batch["xq"], batch["yq"],
                                                                       attack_gen)
                pred = learner.predict(state, xq)
            out[s].append(task_score(dist.kind, pred, batch["yq"]).cpu())
    return {s: torch.cat(v) for s, v in out.items()}


DIVERGED_FACTOR = 10.0  # regression: an inner loop that ends 10x worse than it started blew up
DIVERGED_RULE = (f"score not finite, or an MSE over {DIVERGED_FACTOR:g}x its value at step 0 "
                 f"and over {DIVERGED_FACTOR:g}x the median task's")


def diverged_tasks(v: torch.Tensor, before: torch.Tensor | None = None) -> torch.Tensor:
    """Which tasks' inner loops blew up [N] bool: the score is not finite, or (regression, with
    the MSEs at step 0 `before` [N]: before any inner step; for a hypernetwork or LEO, of the
    generated weights) the MSE is over DIVERGED_FACTOR times the larger of the task's own MSE at
    step 0 and the median task's. Steps past the size a task's curvature
    allows grow its error without bound; the median floor keeps a task that started almost fitted
    (MSE 0.02 -> 0.4) from counting: its error rose, but it does not swamp the mean."""
    out = ~torch.isfinite(v)
    if before is not None:
        out |= v > DIVERGED_FACTOR * torch.maximum(before, before.median())
    return out


def step_summary(v: torch.Tensor, before: torch.Tensor | None = None) -> dict:
    """mean_ci of per-task scores [N], the median over the tasks that did not diverge and the
    number that did (diverged_tasks). When some diverged the mean over all tasks is dominated by
    them (nan, inf or huge), so "kept" holds mean_ci over the others: what tables print (absent
    when every task diverged: tables then print the all-task mean, marked by the count)."""
    bad = diverged_tasks(v, before)
    ok = v[~bad]
    out = {**mean_ci(v), "median": ok.median().item() if ok.numel() else float("nan"), "diverged": int(bad.sum())}
    if out["diverged"] and ok.numel():
        out["kept"] = mean_ci(ok)
    return out


def summarize_fewshot(scores: dict[int, torch.Tensor], kind: str) -> dict:
    """The metric after each number of inner steps as the curve; "total" after the most steps.
    Regression counts a task as diverged against its own MSE before adaptation (step 0)."""
    metric, last = fewshot_metric(kind), max(scores)
    before = scores.get(0) if kind == "regression" else None
    summary = {s: step_summary(scores[s], before) for s in sorted(scores)}
    curve = Curve(INNER_STEPS, metric, [{"x": s, **summary[s]} for s in sorted(scores)]).to_json()
    return result(metric, summary[last], curve, task_scores(scores[last]))


def gaussian_loglik(mean: torch.Tensor, std: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-task mean log-likelihood of targets y [N, Q, d] under N(mean, std^2) -> [N]."""
    return gaussian_logpdf(mean, std, y).mean((-2, -1))


def gaussian_logpdf(mean: torch.Tensor, std: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(y; mean, std^2)."""
    return -0.5 * ((y - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)


def evaluate_context_sizes(learner, dist: FewShotDistribution, num_tasks: int, seed: int, contexts: list[int],
                           device, batch_tasks: int = 100) -> dict:
    """Probabilistic regressors (CNP, NP: learner.loglik): test log-likelihood per target point and
    MSE of the query points against the number of context points -> {contexts: [...], "loglik":
    [ci...], "mse": [ci...]}."""
    device = torch.device(device)
    res = {"contexts": list(contexts), "loglik": [], "mse": []}
    learner.eval()
    for c in contexts:
        gen = task_generator(seed, "test", device)  # the same functions for every context size
        ll, mse = [], []
        for start in range(0, num_tasks, batch_tasks):
            b = min(batch_tasks, num_tasks - start)
            batch = dist.sample(b, gen, "test", shots=c, query=getattr(dist, "eval_query", None))
            with torch.no_grad():
                state = learner.adapt(batch["xs"], batch["ys"])
                ll.append(learner.loglik(state, batch["xq"], batch["yq"]).cpu())
                mse.append(((learner.predict(state, batch["xq"]) - batch["yq"]) ** 2).mean((-2, -1)).cpu())
        res["loglik"].append(mean_ci(torch.cat(ll)))
        res["mse"].append(mean_ci(torch.cat(mse)))
    return res


def fits_plot(learner, dist: FewShotDistribution, out: Path, title: str, seed: int, steps: list[int],
              device, tasks: int = 4, samples: int = 8) -> Path:
    """Regression: the true function, the K support points and the learner's prediction (after
    each of `steps` inner steps, or its mean +- 2 std for CNP, or for a latent NP its mean and
    `samples` sampled functions) on a dense grid, for a few test tasks."""
    plt = pyplot()
    gen = task_generator(seed, "test", device)
    batch = dist.sample(tasks, gen, "test", query=200, grid=True)
    fig, axes = plt.subplots(1, tasks, figsize=(3.2 * tasks, 3), sharey=True)
    x = batch["xq"][0, :, 0].cpu()
    with torch.no_grad():
        preds = {}
        draws = None
        if hasattr(learner, "predict_dist"):
            mean, std = learner.predict_dist(learner.adapt(batch["xs"], batch["ys"]), batch["xq"])
            preds["prediction"] = (mean, std)
        elif hasattr(learner, "sample_functions"):
            state = learner.adapt(batch["xs"], batch["ys"])
            preds["prediction (mean)"] = (learner.predict(state, batch["xq"]), None)
            draws = learner.sample_functions(state, batch["xq"], samples)
        else:
            for s in (steps if learner.gradient_steps else [0]):
                name = f"{s} step{'' if s == 1 else 's'}" if learner.gradient_steps else "prediction"
                preds[name] = (learner.predict(learner.adapt(batch["xs"], batch["ys"], s), batch["xq"]), None)
    for t, ax in enumerate(axes):
        ax.plot(x, batch["yq"][t, :, 0].cpu(), color="k", lw=2, label="true")
        for d in range(0 if draws is None else draws.shape[0]):
            ax.plot(x, draws[d, t, :, 0].cpu(), color="C1", lw=0.7, alpha=0.6, label="sampled functions" if d == 0 else None)
        for i, (name, (m, sd)) in enumerate(preds.items()):
            ax.plot(x, m[t, :, 0].cpu(), color=f"C{i}", label=name)
            if sd is not None:
                ax.fill_between(x, (m - 2 * sd)[t, :, 0].cpu(), (m + 2 * sd)[t, :, 0].cpu(), color=f"C{i}", alpha=0.2)
        ax.scatter(batch["xs"][t, :, 0].cpu(), batch["ys"][t, :, 0].cpu(), color="r", zorder=5, s=15, label="support")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def context_plot(res: dict, out: Path, title: str) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, label in ((axes[0], "loglik", "test log-likelihood"), (axes[1], "mse", "test MSE")):
        cis = res[key]
        ax.plot(res["contexts"], [c["mean"] for c in cis], marker="o")
        ax.fill_between(res["contexts"], [c["ci_low"] for c in cis], [c["ci_high"] for c in cis], alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("context points")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
