"""`metarl compare RUN_DIR... --out DIR`: one fair report across agents and seeds.

Every run must have been evaluated (`metarl eval`) on the same held-out tasks (same env and env
options, evaluation seed, number of tasks and metric) and trained with the same budget (env
steps; meta-iterations for few-shot learners), else the comparison is refused with one line.

Methods: each run's agent (runs of one agent with one agent config are seeds of one method) and
the baselines its evaluation holds. Statistics on each method's score matrix [runs, tasks]:
the mean and the interquartile mean (IQM) with 95% stratified-bootstrap CIs from rliable, tasks
resampled as well as runs (held-out tasks are a sample of the task distribution), and the
probability of improvement P(X > Y) of every pair, paired by task (rliable's definition:
P(X_t > Y_t) + P(X_t = Y_t) / 2 over runs, averaged over tasks; CI by resampling tasks). With
several runs, also each run's overall score and the mean and IQM over runs (what Meta-World+
reports over seeds; on near-binary success per task the IQM over runs x tasks trims whole
classes away and says something else).

Writes report.md, summary.csv, summary.json, poi.csv, per_task.csv, adaptation.png, training_steps.png,
training_wallclock.png, and for tasks with names (Meta-World) per_task_success.csv and
per_task_heatmap.png; for Meta-World evaluations also Meta-World's own tally of the agent's forms
(tally_summary.csv, and a section of report.md with its per-class rates).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metarl.config import load_toml
from metarl.errors import UserError
from metarl.eval.plots import pyplot
from metarl.eval.result import curve_of, read_eval
from metarl.protocols import progress_unit
from metarl.rundir import open_existing, read_jsonl
from metarl.sim.options import SIMULATION_FIELDS

# env options that change how tasks are simulated (processes, timeouts), not which tasks
SIMULATION_ONLY = set(SIMULATION_FIELDS)
BUDGET_TOLERANCE = 0.05  # budgets within 5% count as equal (RL² rounds steps up to whole iterations)


@dataclass
class Run:
    path: Path
    agent: str
    seed: int
    config: dict          # the run's config.toml
    report: dict          # its eval.json
    metrics: list = field(default_factory=list)
    timing: list = field(default_factory=list)

    @property
    def result(self) -> dict:
        return self.report["results"][self.agent]

    @property
    def clock(self) -> dict[int, float]:
        """iteration -> training wall-clock seconds. Runs resumed before metarl counted the clock on
        across a resume restarted it at 0: each restart continues from the time before it."""
        out, offset, last = {}, 0.0, 0.0
        for t in self.timing:
            if t["wall_clock_s"] < last:
                offset += last
            last = t["wall_clock_s"]
            out[t["iteration"]] = offset + last
        return out

    @property
    def train_time_s(self) -> float | None:
        return max(self.clock.values()) if self.timing else None


def load_run(path: str | Path) -> Run:
    p = open_existing(path)
    ev = p / "eval.json"
    if not ev.exists():
        raise UserError(f"{p} has no eval.json (the latest checkpoint's evaluation, which compare reads); "
                        f"evaluate it first: metarl eval {p}")
    report = read_eval(ev)
    agent = report["agent"]
    if agent not in report["results"]:
        raise UserError(f"{ev} is not a metarl evaluation report; re-run: metarl eval {p}")
    if any("scores" not in r for r in report["results"].values()):
        raise UserError(f"{ev} has no per-task scores (written by an older metarl); re-run: metarl eval {p}")
    cfg = load_toml(p / "config.toml")
    return Run(p, agent, int(cfg["run"].get("seed", 0)), cfg, report, read_jsonl(p / "metrics.jsonl"),
               read_jsonl(p / "timing.jsonl"))


def task_key(r: Run) -> dict:
    """What fixes the held-out tasks and the score: the evaluation's env, options, seed, size, metric."""
    rep = r.report
    return {"env": rep["env"], "env options": {k: v for k, v in rep["env_config"].items() if k not in SIMULATION_ONLY},
            "eval seed": rep["seed"], "held-out tasks": rep["tasks"], "metric": rep.get("metric")}


def check_fair(runs: list[Run], allow_unequal_budgets: bool = False) -> None:
    """Refuse (UserError, one line) runs evaluated on different tasks or trained on different budgets."""
    ref = task_key(runs[0])
    for r in runs[1:]:
        key = task_key(r)
        for k, v in key.items():
            if v != ref[k]:
                raise UserError(f"{r.path} was evaluated with {k} {v!r} but {runs[0].path} with {ref[k]!r}: "
                                f"compare runs on the same held-out tasks (re-run metarl eval with the same --tasks "
                                f"and --seed) and the same env options")
    budgets = [r.report["env_steps"] for r in runs]
    if not allow_unequal_budgets and max(budgets) > (1 + BUDGET_TOLERANCE) * min(budgets):
        lo, hi = runs[budgets.index(min(budgets))], runs[budgets.index(max(budgets))]
        unit = progress_unit(lo.report)
        raise UserError(f"unequal budgets: {lo.path} was evaluated after {min(budgets):,} {unit}, {hi.path} after "
                        f"{max(budgets):,}; train to the same budget, or pass --allow-unequal-budgets to compare anyway "
                        f"(the report then lists each budget)")


def method_labels(runs: list[Run]) -> list[str]:
    """The agent name, or agent (run dir) where one agent appears with different agent configs."""
    configs: dict[str, list] = {}
    for r in runs:
        configs.setdefault(r.agent, [])
        if r.config.get("agent") not in configs[r.agent]:
            configs[r.agent].append(r.config.get("agent"))
    return [r.agent if len(configs[r.agent]) == 1 else f"{r.agent} ({r.path.name})" for r in runs]


def other_forms(r: Run) -> dict[str, dict]:
    """The run's other evaluated forms, keyed by their suffix: {" (zero-shot)": result} for the
    report's "multitask-ppo (zero-shot)" (AgentSpec.extra_eval)."""
    return {name[len(r.agent):]: res for name, res in r.report["results"].items() if name.startswith(r.agent + " (")}


def gather_scores(runs: list[Run], labels: list[str], baselines: bool = True) -> dict[str, np.ndarray]:
    """method -> score matrix [runs, tasks]. Baselines are taken once (every run was evaluated on
    the same tasks with the same seed, so their scores are identical across runs)."""
    rows: dict[str, list] = {}
    forms = set()
    for r, label in zip(runs, labels):
        rows.setdefault(label, []).append(r.result["scores"])
        for suffix, res in other_forms(r).items():
            forms.add(r.agent + suffix)
            rows.setdefault(label + suffix, []).append(res["scores"])
    if baselines:
        for name, res in runs[0].report["results"].items():
            if name != runs[0].agent and name not in rows and name not in forms:
                rows[name] = [res["scores"]]
    return {k: np.asarray(v, dtype=np.float64) for k, v in rows.items()}


def gather_tally_scores(runs: list[Run], labels: list[str]) -> dict[str, np.ndarray]:
    """Meta-World: method (the agent and its forms) -> Meta-World's own tally [runs, groups], each
    group a class in one evaluation round (metarl.eval.success.metaworld_tally); empty when the
    evaluations predate it or are not Meta-World's."""
    rows: dict[str, list] = {}
    expected: dict[str, int] = {}
    for r, label in zip(runs, labels):
        for suffix, res in {"": r.result, **other_forms(r)}.items():
            rows.setdefault(label + suffix, []).append(res.get("metaworld_tally", {}).get("scores"))
            expected[label + suffix] = labels.count(label)
    # only methods whose every run has a tally (evaluations from before it was recorded have none),
    # over the same groups
    return {k: np.asarray(v, dtype=np.float64) for k, v in rows.items()
            if len(v) == expected[k] and all(x is not None for x in v) and len({len(x) for x in v}) == 1}


# ---- statistics ---------------------------------------------------------------------------

def _finite(x: np.ndarray) -> np.ndarray:
    if not np.isfinite(x).all():
        raise UserError("some per-task scores are not finite (a diverged inner loop?); the report's statistics need "
                        "finite scores: evaluate with fewer inner steps or fix the run")
    return x


def interval_estimates(scores: dict[str, np.ndarray], reps: int = 2000, seed: int = 0) -> dict[str, dict]:
    """method -> {"mean": [point, lo, hi], "iqm": [point, lo, hi]}: rliable's stratified bootstrap
    over runs and tasks (task_bootstrap=True), 95% percentile intervals."""
    try:
        from rliable import library as rly
        from rliable import metrics as rm
    except ImportError:
        raise UserError('metarl compare needs rliable: pip install -e ".[compare]"') from None

    def agg(x):
        return np.array([rm.aggregate_mean(x), rm.aggregate_iqm(x)])
    state = np.random.get_state()
    np.random.seed(seed)  # rliable's StratifiedBootstrap draws from numpy's global RNG
    try:
        point, ci = rly.get_interval_estimates({k: _finite(v) for k, v in scores.items()}, agg, reps=reps,
                                               task_bootstrap=True)
    finally:
        np.random.set_state(state)
    return {k: {"mean": [float(point[k][0]), float(ci[k][0, 0]), float(ci[k][1, 0])],
                "iqm": [float(point[k][1]), float(ci[k][0, 1]), float(ci[k][1, 1])]} for k in scores}


def over_runs(scores: dict[str, np.ndarray], reps: int = 2000, seed: int = 0) -> dict[str, dict]:
    """method -> {"runs": [each run's mean over tasks], "mean": [...], "iqm": [...]}: the statistics
    over runs of each run's overall score (Meta-World+ reports the IQM over seeds of each seed's
    success rate), 95% CIs by resampling runs."""
    per_run = {m: v.mean(axis=1, keepdims=True) for m, v in scores.items()}  # [runs, 1]
    stats = interval_estimates(per_run, reps, seed)
    return {m: {"runs": [float(x) for x in per_run[m][:, 0]], **stats[m]} for m in scores}


def per_task_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X_t > Y_t) + P(X_t = Y_t) / 2 over all run pairs, for each task: x [n, T], y [m, T] -> [T]
    (the Mann-Whitney statistic rliable's probability_of_improvement averages)."""
    gt = (x[:, None, :] > y[None, :, :]).mean((0, 1))
    eq = (x[:, None, :] == y[None, :, :]).mean((0, 1))
    return gt + 0.5 * eq


def improvement_matrix(scores: dict[str, np.ndarray], reps: int = 2000, seed: int = 0,
                       lower_is_better: bool = False) -> dict[str, dict[str, list[float]]]:
    """x -> y -> [point, lo, hi]: P(X > Y) averaged over tasks (P(X < Y) when lower is better),
    for every ordered pair of methods; 95% CI by resampling tasks, the same resamples for every
    pair (bootstrap weights [reps, T] times per-task probabilities [T, pairs]: one matmul)."""
    sign = -1.0 if lower_is_better else 1.0
    pairs = [(a, b) for a in scores for b in scores if a != b]
    if not pairs:
        return {a: {} for a in scores}
    p = np.stack([per_task_improvement(sign * scores[a], sign * scores[b]) for a, b in pairs])  # [P, T]
    T = p.shape[1]
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(T, np.full(T, 1.0 / T), size=reps).astype(np.float32) / T  # [reps, T]
    boots = weights @ p.T.astype(np.float32)                                            # [reps, P]
    lo, hi = np.quantile(boots, [0.025, 0.975], axis=0)
    out: dict[str, dict[str, list[float]]] = {a: {} for a in scores}
    for i, (a, b) in enumerate(pairs):
        out[a][b] = [float(p[i].mean()), float(lo[i]), float(hi[i])]
    return out


def probability_of_improvement(x: np.ndarray, y: np.ndarray, reps: int = 2000, seed: int = 0,
                               lower_is_better: bool = False) -> list[float]:
    """[point, lo, hi] of P(X > Y) for one pair (see improvement_matrix)."""
    return improvement_matrix({"x": x, "y": y}, reps, seed, lower_is_better)["x"]["y"]


# ---- curves -------------------------------------------------------------------------------

def adaptation_of(res: dict) -> tuple[tuple[str, str], list, list] | None:
    """((x label, y label), xs, mean ys) of one evaluation result's curve: how it improves with
    adaptation (None without one)."""
    c = curve_of(res)
    if c is None:
        return None
    return (c.x, c.y), c.xs, c.means


def _band(ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs [R, X] with a normal 95% CI (no band for one run)."""
    m = ys.mean(0)
    if ys.shape[0] < 2:
        return m, m, m
    half = 1.96 * ys.std(0, ddof=1) / math.sqrt(ys.shape[0])
    return m, m - half, m + half


def adaptation_plot(runs: list[Run], labels: list[str], out: Path, metric: str, baselines: bool) -> Path:
    """One panel per kind of x axis (gradient steps, episodes, ...): each method's mean curve over
    runs, with a 95% CI band over runs when it has several."""
    curves: dict[str, dict[str, list]] = {}
    for r, label in zip(runs, labels):
        c = adaptation_of(r.result)
        if c:
            curves.setdefault(c[0], {}).setdefault(label, []).append((c[1], c[2]))
        for suffix, res in other_forms(r).items():
            c = adaptation_of(res)
            if c:
                curves.setdefault(c[0], {}).setdefault(label + suffix, []).append((c[1], c[2]))
    if baselines:
        for name, res in runs[0].report["results"].items():
            c = adaptation_of(res) if name != runs[0].agent else None
            if c and name not in labels and name[len(runs[0].agent):] not in other_forms(runs[0]):
                curves.setdefault(c[0], {})[name] = [(c[1], c[2])]
    plt = pyplot()
    kinds = list(curves) or [("(no adaptation curves)", metric)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for i, (label, items) in enumerate(curves.get(kind, {}).items()):
            n = min(len(xs) for xs, _ in items)
            xs = items[0][0][:n]
            m, lo, hi = _band(np.asarray([ys[:n] for _, ys in items], dtype=float))
            runs_txt = f"{len(items)} run{'s' if len(items) > 1 else ''}"
            ax.plot(xs, m, marker="o" if n <= 25 else None, ms=3, color=f"C{i}", label=f"{label} ({runs_txt})")
            ax.fill_between(xs, lo, hi, color=f"C{i}", alpha=0.2)
        ax.set_xlabel(kind[0])
        ax.set_ylabel(kind[1])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("adaptation on held-out tasks (mean over runs, 95% CI band over runs)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def training_key(r: Run) -> str | None:
    """The training metric to draw: the agent's selection metric, else its first curve metric."""
    from metarl.registry import AGENTS, load
    entry = AGENTS.get(r.agent)
    spec = load(entry.target) if entry else None
    keys = [spec.select_key] if spec is not None and spec.select_key else []
    keys += list(spec.curve_keys) if spec is not None else []
    return next((k for k in keys if any(k in m for m in r.metrics)), None)


def training_plots(runs: list[Run], labels: list[str], out_dir: Path) -> list[Path]:
    """Training curves against env steps and against wall-clock seconds, one line per run. Where
    runs logged a held-out sample while training (agent.eval_every: "heldout_success"), a second
    panel draws each run's training success beside it, so the generalisation gap of every seed
    shows. Runs of one method share a colour; seeds of a single method get one each."""
    plt = pyplot()
    outs = []
    gap = any("heldout_success" in m for r in runs for m in r.metrics)
    if len(set(labels)) == 1:
        colors = [f"C{i}" for i in range(len(runs))]
    else:
        by_label = {label: f"C{i}" for i, label in enumerate(dict.fromkeys(labels))}
        colors = [by_label[label] for label in labels]
    for name, xlabel in (("training_steps.png", "env steps (meta-iterations for few-shot learners)"),
                         ("training_wallclock.png", "wall-clock (minutes)")):
        fig, axes = plt.subplots(1, 2 if gap else 1, figsize=(15 if gap else 7, 4), squeeze=False)
        ax = axes[0, 0]
        for r, label, color in zip(runs, labels, colors):
            key = training_key(r)
            if key is None:
                continue
            xs, ys = _curve(r, key, by_clock=name == "training_wallclock.png")
            ax.plot(xs, ys, color=color, alpha=0.8, label=f"{label} seed {r.seed} ({key})")
        _finish(ax, xlabel, "training metric", "training curves")
        if gap:
            ax = axes[0, 1]
            for r, label, color in zip(runs, labels, colors):
                for key, what, style in (("success", "training", dict(lw=1, alpha=0.6)),
                                         ("heldout_success", "held-out sample",
                                          dict(ls="--", marker="o", ms=3, lw=1.5))):
                    xs, ys = _curve(r, key, by_clock=name == "training_wallclock.png")
                    if xs:
                        ax.plot(xs, ys, color=color, **style, label=f"{label} seed {r.seed}: {what}")
            _finish(ax, xlabel, "success rate (per task)", "training success and the held-out sample "
                    "(agent.eval_every)", loc="upper left", bbox_to_anchor=(1.01, 1))  # beside: hides no data
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        outs.append(out_dir / name)
    return outs


def _curve(r: Run, key: str, by_clock: bool) -> tuple[list[float], list[float]]:
    """(x, metric) of the iterations where the run logged `key`: x in env steps, or in minutes of
    training (Run.clock) for wall-clock plots."""
    rows = [m for m in r.metrics if key in m]
    if not by_clock:
        return [m["env_steps"] for m in rows], [m[key] for m in rows]
    clock = r.clock
    rows = [m for m in rows if m.get("iteration") in clock]
    return [clock[m["iteration"]] / 60 for m in rows], [m[key] for m in rows]


def _finish(ax, xlabel: str, ylabel: str, title: str, **legend) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, **legend)
    ax.set_title(title)


def per_task_success(runs: list[Run], scores: dict[str, np.ndarray]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Tasks with names (Meta-World: class and goal): task names and method -> mean success over
    runs per task [T]; empty when the tasks have no names."""
    if "per_task" not in runs[0].result:
        return [], {}
    names = [f"{t['class']} #{t['goal']}" for t in runs[0].result["per_task"]]
    return names, {k: v.mean(0) for k, v in scores.items()}


def heatmap(names: list[str], table: dict[str, np.ndarray], out: Path) -> Path:
    plt = pyplot()
    data = np.stack(list(table.values()))
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(names) + 2), 0.5 * len(table) + 2))
    im = ax.imshow(data, aspect="auto", vmin=0, vmax=1, cmap="viridis")
    ax.set_yticks(range(len(table)), list(table))
    step = max(1, len(names) // 40)
    ax.set_xticks(range(0, len(names), step), names[::step], rotation=90, fontsize=6)
    fig.colorbar(im, ax=ax, label="success rate (mean over runs)")
    ax.set_title("held-out tasks: success per task")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


# ---- report -------------------------------------------------------------------------------

def over_runs_table(stats: dict[str, dict], order: list[str], score: str) -> list[str]:
    """report.md lines: each run's score (`score` says what it is), and the mean and IQM over runs."""
    return ["", f"Over runs: each run's score ({score}), then the mean and IQM over runs, 95% CIs by "
            f"resampling runs (Meta-World+ reports the IQM over seeds; below 4 runs the IQM trims nothing and "
            f"equals the mean, and the interval spans the runs).", "",
            "| method | runs | each run | mean over runs [95% CI] | IQM over runs [95% CI] |", "|---|---|---|---|---|"] + [
        f"| {m} | {len(stats[m]['runs'])} | {', '.join(f'{x:.3f}' for x in stats[m]['runs'])} | "
        f"{_fmt(stats[m]['mean'])} | {_fmt(stats[m]['iqm'])} |" for m in order if m in stats]


def _fmt(v: list[float], spec: str = ".4g") -> str:
    return f"{v[0]:{spec}} [{v[1]:{spec}}, {v[2]:{spec}}]"


def write_summary(path: Path, scores: dict[str, np.ndarray], stats: dict[str, dict], unit: str) -> None:
    """One CSV row per method: runs, units scored (tasks or tally groups), mean and IQM with CIs."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "runs", unit, "mean", "mean_ci_low", "mean_ci_high", "iqm", "iqm_ci_low", "iqm_ci_high"])
        for m in scores:
            w.writerow([m, scores[m].shape[0], scores[m].shape[1], *stats[m]["mean"], *stats[m]["iqm"]])


def compare(run_dirs: list[str], out: str, *, reps: int = 2000, seed: int = 0, baselines: bool = True,
            allow_unequal_budgets: bool = False, overwrite: bool = False) -> dict:
    """Write the comparison report of `run_dirs` into `out`; returns the summary."""
    if not run_dirs:
        raise UserError("give at least one RUN_DIR to compare")
    if reps < 100:
        raise UserError(f"--reps must be >= 100 for a 95% interval, got {reps}")
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(f"{out_dir} exists and is not empty; choose another --out or pass --overwrite")
    paths = list(dict.fromkeys(str(Path(p)) for p in run_dirs))
    runs = [load_run(p) for p in paths]
    check_fair(runs, allow_unequal_budgets)
    labels = method_labels(runs)
    scores = gather_scores(runs, labels, baselines)
    metric = runs[0].report.get("metric", "score")
    lower = metric == "query MSE"
    stats = interval_estimates(scores, reps, seed)
    methods = list(scores)
    poi = improvement_matrix(scores, reps, seed, lower)
    out_dir.mkdir(parents=True, exist_ok=True)

    write_summary(out_dir / "summary.csv", scores, stats, "tasks")
    with open(out_dir / "poi.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x", "y", "p_x_better", "ci_low", "ci_high"])
        for a in methods:
            for b, v in poi[a].items():
                w.writerow([a, b, *v])
    names, success_table = per_task_success(runs, scores)
    with open(out_dir / "per_task.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "run", "task", "task_name", "score"])
        for m in methods:
            for i, row in enumerate(scores[m]):
                for t, v in enumerate(row):
                    w.writerow([m, i, t, names[t] if names else "", f"{v:.6g}"])
    adaptation_plot(runs, labels, out_dir / "adaptation.png", metric, baselines)
    training_plots(runs, labels, out_dir)
    if names:
        heatmap(names, success_table, out_dir / "per_task_heatmap.png")
        with open(out_dir / "per_task_success.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["task", *success_table])
            for t, n in enumerate(names):
                w.writerow([n, *(f"{success_table[m][t]:.3f}" for m in success_table)])

    key = task_key(runs[0])
    lines = ["# metarl compare", "",
             f"Held-out tasks: {key['held-out tasks']} of `{key['env']}` "
             f"({', '.join(f'{k}={v}' for k, v in key['env options'].items())}), evaluation seed {key['eval seed']}; "
             f"score per task: {metric}{' (lower is better)' if lower else ''}.", "",
             "## Runs", "", "| run | method | seed | budget | train time | checkpoint |", "|---|---|---|---|---|---|"]
    for r, label in zip(runs, labels):
        t = "–" if r.train_time_s is None else (f"{r.train_time_s / 60:.1f} min" if r.train_time_s >= 60
                                                 else f"{r.train_time_s:.0f} s")
        unit = progress_unit(r.report)
        lines.append(f"| {r.path} | {label} | {r.seed} | {r.report['env_steps']:,} {unit} | {t} | "
                     f"{r.report.get('checkpoint', 'latest')} (iteration {r.report.get('checkpoint_iteration')}) |")
    lines += ["", "## Aggregates", "",
              f"95% stratified-bootstrap CIs (rliable, {reps} resamples of runs and tasks).", "",
              "| method | runs | mean [95% CI] | IQM [95% CI] |", "|---|---|---|---|"]
    order = sorted(methods, key=lambda m: stats[m]["mean"][0], reverse=not lower)
    for m in order:
        lines.append(f"| {m} | {scores[m].shape[0]} | {_fmt(stats[m]['mean'])} | {_fmt(stats[m]['iqm'])} |")
    task_runs = over_runs(scores, reps, seed)
    if max(v.shape[0] for v in scores.values()) > 1:
        lines += over_runs_table(task_runs, order, "its mean over tasks")
    tally = gather_tally_scores(runs, labels)
    if tally:  # Meta-World: the published figures' count, beside ours
        t_stats = interval_estimates(tally, reps, seed)
        write_summary(out_dir / "tally_summary.csv", tally, t_stats, "groups")
        classes = next(res["metaworld_tally"]["group_classes"] for r in runs
                       for res in (r.result, *other_forms(r).values()) if "metaworld_tally" in res)
        lines += ["", "## Meta-World's own tally", "",
                  "What published figures count (metaworld.evaluation at meta-batch 20): per class, the first "
                  "evaluation episodes to end among its sub-envs; successes end early and fill the quota first. "
                  "Scores per group (a class in one evaluation round), same bootstrap.", "",
                  "| method | runs | mean [95% CI] | IQM [95% CI] | "
                  + " | ".join(dict.fromkeys(classes)) + " |", "|---" * (4 + len(set(classes))) + "|"]
        for m in sorted(tally, key=lambda m: -t_stats[m]["mean"][0]):
            per_class = [tally[m][:, [i for i, c in enumerate(classes) if c == name]].mean()
                         for name in dict.fromkeys(classes)]
            lines.append(f"| {m} | {tally[m].shape[0]} | {_fmt(t_stats[m]['mean'])} | {_fmt(t_stats[m]['iqm'])} | "
                         + " | ".join(f"{v:.2f}" for v in per_class) + " |")
        summary_tally = {m: {"runs": int(tally[m].shape[0]), **t_stats[m]} for m in tally}
        tally_runs = over_runs(tally, reps, seed)
        if max(v.shape[0] for v in tally.values()) > 1:
            lines += over_runs_table(tally_runs, sorted(tally, key=lambda m: -t_stats[m]["mean"][0]),
                                     "its tally over all groups, the success rate Meta-World reports")
    else:
        summary_tally, tally_runs = {}, {}
    lines += ["", "## Probability of improvement", "",
              f"P(row {'has lower score than' if lower else 'beats'} column on the same task), averaged over tasks, "
              "95% CI by resampling tasks.", "",
              "| | " + " | ".join(order) + " |", "|---" * (len(order) + 1) + "|"]
    for a in order:
        lines.append(f"| {a} | " + " | ".join("–" if a == b else _fmt(poi[a][b], ".2f") for b in order) + " |")
    lines += ["", "## Adaptation", "", "![adaptation](adaptation.png)", "",
              "## Training", "", "![training against env steps](training_steps.png)", "",
              "![training against wall-clock](training_wallclock.png)", ""]
    if names:
        lines += ["## Per task", "", "![per-task success](per_task_heatmap.png)", "",
                  "| task | " + " | ".join(success_table) + " |", "|---" * (len(success_table) + 1) + "|"]
        lines += [f"| {n} | " + " | ".join(f"{success_table[m][t]:.2f}" for m in success_table) + " |"
                  for t, n in enumerate(names)]
        lines.append("")
    lines.append("Files: summary.csv, summary.json (the aggregates and the runs compared), poi.csv, per_task.csv "
                 "(every run's score on every task).")
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    summary = {"runs": paths, "metric": metric, "env_steps": [r.report["env_steps"] for r in runs],
               "methods": {m: {"runs": int(scores[m].shape[0]), **stats[m]} for m in methods},
               "metaworld_tally": summary_tally, "probability_of_improvement": poi,
               "over_runs": {"per_task": task_runs, "metaworld_tally": tally_runs}}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return {**summary, "out": str(out_dir)}
