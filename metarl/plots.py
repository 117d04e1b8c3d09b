"""PNG figures written next to the data they show."""
from __future__ import annotations

from pathlib import Path


def _figure():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    return plt, fig, ax


def _save(plt, fig, ax, out: Path, xlabel: str, ylabel: str, title: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


CURVE_LABELS = {"trial_return": ("training trials", "mean total reward per trial"),
                "pre_return": ("before adaptation", "mean episode return"),
                "post_return": ("after adaptation", "mean episode return"),
                "success": ("all episodes of the trial", "training success rate"),
                "success_last": ("last episode of the trial", "training success rate"),
                "pre_success": ("before adaptation", "training success rate"),
                "post_success": ("after adaptation", "training success rate"),
                "heldout_success": ("held-out sample, per task (agent.eval_every)", "training success rate"),
                "heldout_success_tally": ("held-out sample, Meta-World tally", "training success rate"),
                "loss": ("meta-training loss", "loss"),
                "accuracy": ("query accuracy (training tasks)", "loss / accuracy")}
SUCCESS_KEYS = ("success", "success_last", "pre_success", "post_success", "heldout_success",
                "heldout_success_tally")


def learning_curve(metrics: list[dict], out: Path, title: str, keys: tuple[str, ...] = ("trial_return",),
                   references: dict[str, float] | None = None, xlabel: str = "env steps") -> Path:
    """Plot metrics[key] for each key against env steps, with optional horizontal reference lines."""
    plt, fig, ax = _figure()
    keys = [k for k in keys if any(k in m for m in metrics)]
    for k in keys:
        xs, ys = [m["env_steps"] for m in metrics if k in m], [m[k] for m in metrics if k in m]
        ax.plot(xs, ys, marker="o" if len(xs) < len(metrics) else None, ms=3,  # sparse: every agent.eval_every
                label=CURVE_LABELS.get(k, (k,))[0])
    for i, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{i + len(keys)}", label=name)
    ylabel = CURVE_LABELS.get(keys[0], (None, keys[0]))[1] if keys else ""
    return _save(plt, fig, ax, out, xlabel, ylabel, title)


def adaptation_steps_curve(results: dict[str, dict], out: Path, title: str) -> Path:
    """Mean episode return (95% CI band) against the number of gradient steps of adaptation;
    methods without steps (baselines) are drawn as horizontal lines."""
    plt, fig, ax = _figure()
    for i, (name, r) in enumerate(results.items()):
        if "per_step_return" in r:
            xs = list(range(len(r["per_step_return"])))
            ys = [c["mean"] for c in r["per_step_return"]]
            ax.plot(xs, ys, marker="o", color=f"C{i}", label=name)
            ax.fill_between(xs, [c["ci_low"] for c in r["per_step_return"]],
                            [c["ci_high"] for c in r["per_step_return"]], color=f"C{i}", alpha=0.2)
        else:
            ax.axhline(r["total"]["mean"], ls="--", lw=1, color=f"C{i}", label=name)
    ax.set_xticks(range(max((len(r.get("per_step_return", [])) for r in results.values()), default=1)))
    return _save(plt, fig, ax, out, "gradient steps of adaptation", "mean episode return", title)


def success_curve(results: dict[str, dict], out: Path, title: str) -> Path:
    """Meta-World: success rate (95% CI band) against the adaptation episodes seen."""
    plt, fig, ax = _figure()
    for i, (name, r) in enumerate(results.items()):
        c = r["success_curve"]
        xs, ys = c["episodes"], [p["mean"] for p in c["success"]]
        ax.plot(xs, ys, marker="o", ms=3, color=f"C{i}", label=name)
        ax.fill_between(xs, [p["ci_low"] for p in c["success"]], [p["ci_high"] for p in c["success"]],
                        color=f"C{i}", alpha=0.2)
    ax.set_ylim(-0.02, 1.02)
    return _save(plt, fig, ax, out, "adaptation episodes seen", "success rate", title)


def adaptation_curve(results: dict[str, dict], out: Path, title: str) -> Path:
    """How fast each method adapts: the mean return of each episode of the trial, or, when a
    trial is a single episode (bandits), the mean reward of each step; for results of the
    inner-steps protocol (MAML), the return against gradient steps; for Meta-World, success
    against adaptation episodes."""
    if any("success_curve" in r for r in results.values()):
        return success_curve(results, out, title)
    if any("per_step_return" in r for r in results.values()):
        return adaptation_steps_curve(results, out, title)
    plt, fig, ax = _figure()
    single = all(len(r["per_episode"]) == 1 for r in results.values())
    for name, r in results.items():
        ys = r["per_step"] if single else r["per_episode"]
        ax.plot(range(1, len(ys) + 1), ys, marker="o" if len(ys) <= 25 else None, ms=3, label=name)
    if single:
        return _save(plt, fig, ax, out, "step (pull) within the trial", "mean reward", title)
    return _save(plt, fig, ax, out, "episode within the trial", "mean episode return", title)
