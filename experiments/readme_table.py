"""Regenerate the README results table from experiments/results/*.json (never typed by hand).

    python experiments/readme_table.py
"""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def paper_refs(s: dict) -> dict:
    """Published figures: from the experiment's config (kept current), else from the results file."""
    from metarl.config import tomllib
    cfg = ROOT / "experiments" / "configs" / f"{s['experiment']}.toml"
    if cfg.exists():
        meta = tomllib.loads(cfg.read_text()).get("experiment", {})
        if meta.get("paper"):
            return meta["paper"]
    return s["metrics"].get("paper", {})


def fmt(r: dict) -> str:
    return f"{r['mean']:.2f} ± {r['mean'] - r['ci_low']:.2f}"


def row_tail(s: dict) -> str:
    """The paper, train time, commit and command cells every row ends with."""
    paper = "; ".join(f"{k} {v}" for k, v in paper_refs(s).items())
    return f" | {paper or '–'} | {s['wall_clock_s'] / 60:.1f} min | {s['commit']} | `{s['command']}` |"


def table() -> str:
    rows = ["| experiment | env | RL² | best classical baseline | Bayes-optimal-ish reference | paper | "
            "train time | commit | command |", "|---|---|---|---|---|---|---|---|---|"]
    steps_rows = []
    for f in sorted((ROOT / "experiments" / "results").glob("*.json")):
        s = json.loads(f.read_text())
        m = s["metrics"]
        if m.get("protocol") == "inner-steps":
            steps_rows.append(steps_row(s))
            continue
        res = m["results"]
        agent = res[m["agent"]]
        ref_name = next((n for n in ("gittins", "psrl") if n in res), None)
        others = {n: r for n, r in res.items() if n not in (m["agent"], "random", ref_name)}
        best = max(others, key=lambda n: others[n]["mean"]) if others else None
        envc = ", ".join(f"{k}={v}" for k, v in m["env_config"].items() if k != "sigma" or "gaussian" in m["env"])
        rows.append(
            f"| {s['experiment']} | {m['env']} ({envc}), {m['held_out_tasks']} held-out tasks | {fmt(agent)} | "
            + (f"{best} {fmt(others[best])}" if best else "–") + " | "
            + (f"{ref_name} {fmt(res[ref_name])}" if ref_name else "–") + row_tail(s))
    out = "\n".join(rows) + "\n\nMean total reward per trial ± half-width of the 95% CI. Curves: " \
        "`experiments/results/NAME_curve.png` (training) and `NAME_adaptation.png` (adaptation: reward per pull, or return per episode)."
    if steps_rows:
        out += ("\n\nMAML agents, the MAML paper's protocol: mean episode return on held-out tasks before adaptation "
                "and after 1, 2, 3 policy-gradient steps (fresh rollouts each step), ± half-width of the 95% CI.\n\n"
                "| experiment | env | agent | 0 steps | 1 step | 2 steps | 3 steps | random | paper | train time | "
                "commit | command |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(steps_rows))
    return out


def steps_row(s: dict) -> str:
    m = s["metrics"]
    res = m["results"]
    steps = res[m["agent"]]["per_step_return"]
    cells = [fmt(c) for c in steps[:4]] + ["–"] * (4 - len(steps[:4]))
    envc = ", ".join(f"{k}={v}" for k, v in m["env_config"].items())
    rnd = fmt(res["random"]) if "random" in res else "–"
    return (f"| {s['experiment']} | {m['env']} ({envc}), {m['held_out_tasks']} held-out tasks | {m['agent']} | "
            + " | ".join(cells) + f" | {rnd}" + row_tail(s))


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    new = re.sub(re.escape(START) + ".*?" + re.escape(END), START + "\n" + table() + "\n" + END, text, flags=re.S)
    readme.write_text(new)
    print(table())


if __name__ == "__main__":
    main()
