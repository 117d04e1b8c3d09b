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


def episode_curve(results: dict[str, dict], out: Path, title: str) -> Path:
    """Mean return of each episode of the trial, per method: how fast each one adapts."""
    plt, fig, ax = _figure()
    for name, r in results.items():
        ys = r["per_episode"]
        ax.plot(range(1, len(ys) + 1), ys, marker="o" if len(ys) < 30 else None, label=name)
    return _save(plt, fig, ax, out, "episode within the trial", "mean episode return", title)
