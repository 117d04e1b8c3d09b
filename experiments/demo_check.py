"""Does `metarl demo` show RL² winning? Runs the demo with several training seeds and records,
for each, its wall-clock time and RL²'s total reward against greedy's, paired by task (the demo
evaluates every method on the same 1,000 held-out tasks).

    python experiments/demo_check.py --seeds 0 1 2   # -> experiments/results/demo_check.json

Issue 24's target: RL² at least greedy's level (paired CI reaching 0 or above) in at most
5 minutes on 2 cores, in each of three seeds.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from metarl.app.demo import DEMO_SETS, DEMO_STEPS, demo
from metarl.eval.stats import paired_diff_ci

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument("--steps", type=int, default=DEMO_STEPS, help=f"training steps (default the demo's, {DEMO_STEPS:,})")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="agent.KEY=VALUE",
                   help="an RL² option on top of the demo's (repeatable), to try other settings")
    p.add_argument("--out", type=Path, default=HERE / "results" / "demo_check.json",
                   help="where the record goes (default experiments/results/demo_check.json, the README's)")
    args = p.parse_args(argv)
    sets = (*DEMO_SETS, *args.sets)
    runs = []
    with tempfile.TemporaryDirectory() as root:
        for seed in args.seeds:
            start = time.perf_counter()
            report = demo(device="cpu", quiet=True, runs_root=root, seed=seed, steps=args.steps, sets=sets)
            wall = time.perf_counter() - start
            res = report["results"]
            diff = paired_diff_ci(res["rl2"]["scores"], res["greedy"]["scores"])
            runs.append({"seed": seed, "wall_clock_s": wall, "rl2": res["rl2"]["total"],
                         "greedy": res["greedy"]["total"], "gittins": res["gittins"]["total"],
                         "rl2_minus_greedy": diff})
            print(f"seed {seed}: {wall / 60:.1f} min, RL² {res['rl2']['total']['mean']:.3f}, greedy "
                  f"{res['greedy']['total']['mean']:.3f}, RL² - greedy {diff['mean']:+.3f} "
                  f"[{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}]")
    summary = {"experiment": "demo_check", "command": "python experiments/demo_check.py " + " ".join(sys.argv[1:]),
               "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True).stdout.strip(),
               "demo": {"steps": args.steps, "sets": list(sets)}, "runs": runs,
               "target_met": all(r["wall_clock_s"] <= 300 and r["rl2_minus_greedy"]["ci_high"] >= 0 for r in runs),
               "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
