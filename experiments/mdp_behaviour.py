"""What RL² does in each episode of a tabular-MDP trial, against PSRL, the certainty-equivalent
planner and random: per-episode return, regret against the true MDP's optimal policy, share of
optimal actions, new state-action pairs tried, and agreement with the certainty-equivalent
planner's choice (metarl.eval.mdp_behaviour says what each means).

    python experiments/run.py mdp_n10            # trains runs/experiments/mdp_n10
    python experiments/mdp_behaviour.py mdp_n10  # -> experiments/results/mdp_n10_behaviour.{json,png}

--run-dir reads another run directory of a tabular-mdp RL² config (e.g. one `metarl train` made).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from metarl.eval.mdp_behaviour import METRICS, behaviour
from metarl.registry import BASELINES, lookup
from metarl.run_config import load_run

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BASELINE_NAMES = ("psrl", "mdp-greedy", "random")
LABELS = {"return": "episode return", "regret": "regret vs the true MDP", "optimal": "optimal actions",
          "new_pairs": "new state-action pairs", "agrees_with_ce": "agrees with certainty equivalence"}


def table(results: dict, metric: str) -> str:
    names = list(results)
    lines = [f"{LABELS[metric]} per episode", "episode " + "".join(f"{n:>14}" for n in names)]
    for e in range(len(results[names[0]][metric])):
        lines.append(f"{e + 1:>7} " + "".join(f"{results[n][metric][e]['mean']:>14.3f}" for n in names))
    return "\n".join(lines)


def plot(results: dict, oracle: float, out: Path, title: str) -> None:
    from metarl.eval.plots import pyplot
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, metric in zip(axes.flat, ("return", "optimal", "new_pairs", "agrees_with_ce")):
        for i, (name, r) in enumerate(results.items()):
            xs = range(1, len(r[metric]) + 1)
            ax.plot(xs, [p["mean"] for p in r[metric]], marker="o", ms=3, color=f"C{i}", label=name)
            ax.fill_between(xs, [p["ci_low"] for p in r[metric]], [p["ci_high"] for p in r[metric]],
                            color=f"C{i}", alpha=0.2)
        if metric == "return":
            ax.axhline(oracle, ls="--", lw=1, color="k", label="oracle (knows the MDP)")
        ax.set_xlabel("episode of the trial")
        ax.set_ylabel(LABELS[metric])
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="experiment config name (its run directory runs/experiments/NAME)")
    p.add_argument("--run-dir", help="read this run directory instead")
    p.add_argument("--tasks", type=int, default=10_000, help="held-out tasks (default 10000, the evaluation's: "
                                                             "then the returns equal its per-task scores)")
    p.add_argument("--checkpoint", default="latest", help="latest (default) or best")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    run = load_run(args.run_dir or ROOT / "runs" / "experiments" / args.name, checkpoint=args.checkpoint, device="cpu")
    spec, env_cfg, agent = run.cfg["env_spec"], run.cfg["env"], run.saved["run"]["agent"]
    if spec.name != "tabular-mdp":
        print(f"error: mdp_behaviour.py reads runs on tabular-mdp, not {spec.name}", file=sys.stderr)
        return 2
    makers = {agent: lambda env: run.eval_policy(0)}
    for name in BASELINE_NAMES:
        makers[name] = (lambda cls: lambda env: cls(env, env_cfg, 0))(lookup("baseline", BASELINES, name))
    results, oracle = {}, None
    for name, make in makers.items():
        b = behaviour(make, spec, env_cfg, args.tasks, 0, "cpu")
        oracle = b.pop("oracle")
        results[name] = b
    out = HERE / "results" / f"{args.name}_behaviour"
    summary = {"experiment": f"{args.name}_behaviour",
               "command": shlex.join(["python", "experiments/mdp_behaviour.py", *sys.argv[1:]]),
               "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True).stdout.strip(),
               "run_iteration": run.checkpoint["iteration"], "tasks": args.tasks, "oracle": oracle,
               "results": results, "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(results, oracle["mean"], out.with_suffix(".png"), f"{args.name}: behaviour per episode ({args.tasks} tasks)")
    print(f"oracle V*(s0) per episode: {oracle['mean']:.3f}")
    print("\n\n".join(table(results, m) for m in METRICS))
    print(f"wrote {out}.json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
