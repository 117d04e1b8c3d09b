"""Reports of an evaluation as text: the results table (one row per method, or per gradient
step), Meta-World's two tallies and its per-class table."""
from __future__ import annotations

from metarl.eval.result import GRADIENT_STEPS, INNER_STEPS, curve_of, shown
from metarl.eval.trials import format_table
from metarl.fewshot.evaluation import DIVERGED_RULE
from metarl.protocols import METAWORLD, progress_unit


def which_tasks(report: dict) -> str:
    """'training' for a --split train report, else 'held-out'."""
    return "training" if report.get("split") == "train" else "held-out"



def table_rows(report: dict) -> dict[str, dict]:
    """One row per method, methods ranked best first by their headline figure; a method whose
    curve counts gradient steps (MAML's return, a few-shot metric) gets one row per point, in
    step order, named like the MAML paper's table ("maml-trpo (1 step)")."""
    sign = 1 if report.get("metric") == "query MSE" else -1
    rows = {}
    for name, r in sorted(report["results"].items(), key=lambda kv: sign * shown(kv[1]["total"])["mean"]):
        c = curve_of(r)
        if c is not None and c.x in (GRADIENT_STEPS, INNER_STEPS) and len(c.points) > 1:
            for p in c.points:
                rows[f"{name} ({p['x']} step{'' if p['x'] == 1 else 's'})"] = {"total": p}
        else:
            rows[name] = {"total": r["total"]}
    return rows


def report_table(report: dict) -> str:
    rows = table_rows(report)
    text = format_table(rows, eval_title(report), report.get("metric", "mean total reward"))
    for name, r in rows.items():  # few-shot: tasks whose inner loop blew up would swamp the mean
        t = r["total"]
        if t.get("diverged") and "kept" not in t:
            text += f"\n* {name}: all {t['n']} tasks diverged ({DIVERGED_RULE})"
        elif t.get("diverged"):
            text += (f"\n* {name}: {t['diverged']} of {t['n']} tasks diverged ({DIVERGED_RULE}); the mean and CI "
                     f"are over the other {t['n'] - t['diverged']}, median {t['median']:.3f}")
    if report.get("protocol") == METAWORLD.name:
        text += "".join("\n\n" + t for t in (tally_table(report["results"]), per_class_table(report["results"])) if t)
    return text


def tally_table(results: dict) -> str:
    """Meta-World: each method's success by both tallies of the same episodes (metarl.eval.success):
    per task (every episode counts) and Meta-World's own (the first episodes to end per class
    among a meta-batch of 20, what published figures use)."""
    rows = [(n, r) for n, r in results.items() if "metaworld_tally" in r]
    if not rows:
        return ""
    width = max(len("method"), *(len(n) for n, _ in rows)) + 2
    group = rows[0][1]["metaworld_tally"]["group_size"]
    lines = [f"success by tally ({group} goals of a class per Meta-World group)",
             f"{'method':<{width}}{'per task':>22}  {'Meta-World tally':>24}"]
    for n, r in rows:
        cells = [f"{t['mean']:.3f} [{t['ci_low']:.3f}, {t['ci_high']:.3f}]"
                 for t in (r["total"], r["metaworld_tally"]["total"])]
        lines.append(f"{n:<{width}}{cells[0]:>22}  {cells[1]:>24}")
    return "\n".join(lines)


def per_class_table(results: dict) -> str:
    """Meta-World: success rate of each class (rows) for each method (columns), mean over its goals."""
    classes = list(dict.fromkeys(c for r in results.values() for c in r.get("per_class", {})))
    width = max([len("class")] + [len(c) for c in classes])
    cols = [max(len(n), 7) for n in results]
    lines = [f"{'class':<{width}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(results, cols))]
    for c in classes:
        cells = [f"{r['per_class'][c]['mean']:>{w}.3f}" if c in r.get("per_class", {}) else f"{'–':>{w}}"
                 for r, w in zip(results.values(), cols)]
        lines.append(f"{c:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def eval_title(report: dict) -> str:
    envc = ", ".join(f"{k}={v}" for k, v in report["env_config"].items())
    return (f"{report['env']} ({envc}): {report['tasks']} {which_tasks(report)} tasks, seed {report['seed']}, "
            f"{report['agent']} after {report['env_steps']:,} "
            f"{progress_unit(report)}")

