"""PNG figures written next to the data they show."""
from __future__ import annotations

from pathlib import Path

from metarl.eval.result import curve_of, shown
from metarl.tasks import CLASS_METRIC


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display on servers and CI); imported on
    first use, so that commands which draw nothing do not pay for matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _figure():
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    return plt, fig, ax


def _save(plt, fig, ax, out: Path, xlabel: str, ylabel: str, title: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(ax.get_legend_handles_labels()[0]) > 4:  # a long legend goes beside the axes, hiding no data
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
        w, h = fig.get_size_inches()
        fig.set_size_inches(w + 3.5, h)
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120, bbox_inches="tight")
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
                   references: dict[str, float] | None = None, xlabel: str = "env steps",
                   marks: dict[str, float] | None = None) -> Path:
    """Plot metrics[key] for each key against env steps, with optional horizontal reference lines
    and vertical marks (name -> x, e.g. the evaluated checkpoint)."""
    plt, fig, ax = _figure()
    keys = [k for k in keys if any(k in m for m in metrics)]
    for k in keys:
        xs, ys = [m["env_steps"] for m in metrics if k in m], [m[k] for m in metrics if k in m]
        ax.plot(xs, ys, marker="o" if len(xs) < len(metrics) else None, ms=3,  # sparse: every agent.eval_every
                label=CURVE_LABELS.get(k, (k,))[0])
    for i, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{i + len(keys)}", label=name)
    for name, x in (marks or {}).items():
        ax.axvline(x, ls=":", lw=1.5, color="black", label=name)
    ylabel = CURVE_LABELS.get(keys[0], (None, keys[0]))[1] if keys else ""
    return _save(plt, fig, ax, out, xlabel, ylabel, title)


def class_success_curve(metrics: list[dict], out: Path, title: str, window: int = 5) -> Path | None:
    """Training success of each task class (metrics "success/CLASS", Meta-World) against env
    steps, each a running mean over `window` iterations (a meta-batch holds only a few tasks
    of a class); None, and no file, where the metrics have no per-class success."""
    keys = list(dict.fromkeys(k for m in metrics for k in m if k.startswith(CLASS_METRIC)))
    if not keys:
        return None
    plt, fig, ax = _figure()
    fig.set_size_inches(8, 5)
    for i, k in enumerate(keys):
        rows = [m for m in metrics if k in m]
        ys = [m[k] for m in rows]
        smooth = [sum(ys[max(0, j - window + 1):j + 1]) / len(ys[max(0, j - window + 1):j + 1]) for j in range(len(ys))]
        ax.plot([m["env_steps"] for m in rows], smooth, color=plt.cm.tab20(i % 20), ls=("-", "--", ":")[i // 20 % 3],
                label=k[len(CLASS_METRIC):])
    ax.set_ylim(-0.02, 1.02)
    return _save(plt, fig, ax, out, "env steps", f"training success (mean of {window} iterations)", title)


def adaptation_curve(results: dict[str, dict], out: Path, title: str) -> Path:
    """How fast each method adapts: every result's curve (metarl.eval.result.Curve: return per episode
    or per step of the trial, return per gradient step, success per adaptation episode seen,
    few-shot metric per inner step) with its 95% CI band, on the x axis of the first method
    (the agent); a method whose curve counts something else, or that has a single point or
    none, is a horizontal line at its total."""
    plt, fig, ax = _figure()
    curves = {n: curve_of(r) for n, r in results.items()}
    axis = next((c for c in curves.values() if c is not None and len(c.points) > 1), None)
    for i, (name, r) in enumerate(results.items()):
        c = curves[name]
        if axis is not None and c is not None and c.x == axis.x and len(c.points) > 1:
            pts = [shown(p) for p in c.points]  # few-shot: without the tasks that diverged, said in the label
            label = name + (" (diverged tasks left out)" if any("kept" in p for p in c.points) else "")
            ax.plot(c.xs, [p["mean"] for p in pts], marker="o" if len(pts) <= 25 else None, ms=3, color=f"C{i}",
                    label=label)
            ax.fill_between(c.xs, [p["ci_low"] for p in pts], [p["ci_high"] for p in pts], color=f"C{i}", alpha=0.2)
        else:
            ax.axhline(shown(r["total"])["mean"], ls="--", lw=1, color=f"C{i}", label=name)
    x_label, y_label = (axis.x, axis.y) if axis is not None else ("", next(iter(results.values()))["metric"])
    if y_label == "query MSE":
        ax.set_yscale("log")
    if y_label == "success rate":
        ax.set_ylim(-0.02, 1.02)
    return _save(plt, fig, ax, out, x_label, y_label, title)
