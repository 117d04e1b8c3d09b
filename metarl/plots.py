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


def learning_curve(metrics: list[dict], out: Path, title: str, key: str = "trial_return",
                   references: dict[str, float] | None = None) -> Path:
    """Plot metrics[key] against env steps, with optional horizontal reference lines."""
    plt, fig, ax = _figure()
    ax.plot([m["env_steps"] for m in metrics], [m[key] for m in metrics], label="training trials")
    for i, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{i + 1}", label=name)
    return _save(plt, fig, ax, out, "env steps", "mean total reward per trial", title)


def adaptation_curve(results: dict[str, dict], out: Path, title: str) -> Path:
    """How fast each method adapts: the mean return of each episode of the trial, or, when a
    trial is a single episode (bandits), the mean reward of each step."""
    plt, fig, ax = _figure()
    single = all(len(r["per_episode"]) == 1 for r in results.values())
    for name, r in results.items():
        ys = r["per_step"] if single else r["per_episode"]
        ax.plot(range(1, len(ys) + 1), ys, marker="o" if len(ys) <= 25 else None, ms=3, label=name)
    if single:
        return _save(plt, fig, ax, out, "step (pull) within the trial", "mean reward", title)
    return _save(plt, fig, ax, out, "episode within the trial", "mean episode return", title)
