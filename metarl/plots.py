"""PNG figures written next to the data they show."""
from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def learning_curve(metrics: list[dict], out: Path, title: str, key: str = "trial_return",
                   references: dict[str, float] | None = None) -> Path:
    """Plot metrics[key] against env steps, with optional horizontal reference lines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([m["env_steps"] for m in metrics], [m[key] for m in metrics], label="RL² (training trials)")
    for i, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{i + 1}", label=name)
    ax.set_xlabel("env steps")
    ax.set_ylabel("mean total reward per trial")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def episode_curve(results: dict[str, dict], out: Path, title: str) -> Path:
    """Mean return of each episode of the trial, per method: how fast each one adapts."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        ys = r["per_episode"]
        ax.plot(range(1, len(ys) + 1), ys, marker="o" if len(ys) < 30 else None, label=name)
    ax.set_xlabel("episode within the trial")
    ax.set_ylabel("mean episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
