"""metarl's RL² against sb3-contrib's RecurrentPPO on the same trial env, at equal env steps.

    python experiments/peer.py peer_bandit_k5_n100

experiments/configs/NAME.toml holds [experiment] (total_steps: the budget both get; eval_tasks),
[run] (env, seed), [env], and one table per agent, [rl2] and [recurrent-ppo], with its options.
Both are trained in runs/experiments/NAME/{rl2,recurrent-ppo} (resumed when started again),
evaluated on the same held-out tasks with the random baseline, compared by `metarl compare`
(report in experiments/results/NAME/), and experiments/results/NAME.json gets, from this one
run:
- score_ratio: RL²'s final score on the held-out tasks over RecurrentPPO's (for negative returns
  the inverse), so > 1 means RL² is better; gain_over_random: each one's score minus random's;
- time_ratio: RecurrentPPO's training wall-clock over the wall-clock RL² took to reach
  RecurrentPPO's final training score (training trial return, mean of the last 10% of
  iterations for RecurrentPPO, a moving average over the same share of RL²'s iterations).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from metarl.app.evaluate import evaluate_run
from metarl.app.train import train
from metarl.config import dump_toml, tomllib
from metarl.errors import UserError
from metarl.eval.compare import compare
from metarl.eval.result import read_eval
from metarl.rundir import read_jsonl

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
AGENTS = ("rl2", "recurrent-ppo")


def smoothed(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first entries average what there is)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def ratio(rl2: float, peer: float) -> float:
    """> 1 when RL² scores better: RL² / peer for rewards, peer / RL² for negative returns (costs)."""
    return rl2 / peer if peer > 0 else peer / rl2


def time_to_reach(metrics: list[dict], timing: list[dict], target: float, window: int) -> float | None:
    """Wall-clock seconds at which the smoothed training trial return first reaches target."""
    clock = {t["iteration"]: t["wall_clock_s"] for t in timing}
    rows = [m for m in metrics if "trial_return" in m and m["iteration"] in clock]
    for m, v in zip(rows, smoothed([m["trial_return"] for m in rows], window)):
        if v >= target:
            return clock[m["iteration"]]
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="experiment name: a file experiments/configs/NAME.toml")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    from run import commit  # experiments/run.py: the commit the results come from
    raw = tomllib.loads((HERE / "configs" / f"{args.name}.toml").read_text())
    meta, budget = raw["experiment"], raw["experiment"]["total_steps"]
    env, seed, tasks = raw["run"]["env"], raw["run"].get("seed", 0), meta.get("eval_tasks", 1000)
    root = ROOT / "runs" / "experiments" / args.name
    runs = {}
    for agent in AGENTS:
        cfg_file = root / f"{agent}.toml"
        cfg_file.parent.mkdir(parents=True, exist_ok=True)
        cfg_file.write_text(dump_toml({"run": {"agent": agent, "env": env, "seed": seed}, "env": raw.get("env", {}),
                                       "agent": {**raw.get(agent, {}), "total_steps": budget}}))
        run_dir = root / agent
        resume = (run_dir / "checkpoints" / "latest.pt").exists()
        train(agent, env, config_file=None if resume else str(cfg_file), run_dir=str(run_dir), resume=resume,
              quiet=args.quiet, sets=[f"agent.total_steps={budget}"] if resume else ())
        evaluate_run(str(run_dir), tasks=tasks, baselines="random")
        runs[agent] = run_dir
    out = HERE / "results"
    summary = compare([str(runs[a]) for a in AGENTS], str(out / args.name), overwrite=True)
    evals = {a: read_eval(runs[a] / "eval.json") for a in AGENTS}
    score = {a: evals[a]["results"][a]["total"] for a in AGENTS}
    random = evals["rl2"]["results"]["random"]["total"]["mean"]
    metrics = {a: read_jsonl(runs[a] / "metrics.jsonl") for a in AGENTS}
    timing = {a: read_jsonl(runs[a] / "timing.jsonl") for a in AGENTS}
    train_s = {a: timing[a][-1]["wall_clock_s"] for a in AGENTS}
    rp = [m["trial_return"] for m in metrics["recurrent-ppo"]]
    tail = max(1, len(rp) // 10)
    target = sum(rp[-tail:]) / tail
    reach = time_to_reach(metrics["rl2"], timing["rl2"], target, max(1, len(metrics["rl2"]) // 10))
    result = {
        "experiment": args.name,
        "command": f"python experiments/peer.py {args.name}",
        "commit": commit(),
        "device": f"cpu, {torch.get_num_threads()} threads",
        "wall_clock_s": sum(train_s.values()),
        "metrics": {
            "protocol": "peer", "env": env, "env_config": evals["rl2"]["env_config"], "held_out_tasks": tasks,
            "budget_env_steps": {a: evals[a]["env_steps"] for a in AGENTS},
            "score": score, "random": evals["rl2"]["results"]["random"]["total"],
            "score_ratio": ratio(score["rl2"]["mean"], score["recurrent-ppo"]["mean"]),
            "gain_over_random": {a: score[a]["mean"] - random for a in AGENTS},
            "p_rl2_better": summary["probability_of_improvement"]["rl2"]["recurrent-ppo"],
            "train_time_s": train_s,
            "recurrent_ppo_final_train_return": target,
            "rl2_seconds_to_reach_it": reach,
            "time_ratio": train_s["recurrent-ppo"] / reach if reach else None,
            "report": f"experiments/results/{args.name}/report.md",
            "description": meta.get("description", ""),
            "written": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    }
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["metrics"]
    print(f"RL² {score['rl2']['mean']:.3f} vs RecurrentPPO {score['recurrent-ppo']['mean']:.3f} (random {random:.3f}) "
          f"on {tasks} held-out tasks after {budget:,} env steps each: score ratio {m['score_ratio']:.2f}; "
          f"RecurrentPPO trained {train_s['recurrent-ppo'] / 60:.1f} min to {target:.3f}, RL² reached it in "
          + (f"{reach / 60:.1f} min: time ratio {m['time_ratio']:.2f}" if reach else "— never (time ratio undefined)"))
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.path.insert(0, str(HERE))
    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
