"""Measure how long one step of each Meta-World v3 task class takes on this CPU (random actions,
one episode of 500 steps after a reset, best of 3) and write envs/metaworld_step_costs.py, the
relative costs ParallelEnv balances its workers by (metarl.envs.metaworld_tasks.step_cost).

    python experiments/metaworld_step_costs.py

Only the ratios between classes matter, and those carry over between machines well enough.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import commit  # noqa: E402


def main() -> int:
    from metarl.envs.metaworld_tasks import MetaWorldSubEnv, goal_lists
    lists = goal_lists("ML45", "reach-v3", 0)  # train + test: all 50 v3 classes
    classes = {name: goals[0] for split in lists.values() for name, goals in split.items()}
    acts = np.random.default_rng(0).uniform(-1, 1, (500, 4))
    us = {}
    for name, task in sorted(classes.items()):
        e = MetaWorldSubEnv("v2")
        e.set_task(task)
        best = float("inf")
        for rep in range(3):
            e.reset(rep)
            t0 = time.perf_counter()
            for a in acts:
                e.step(a)
            best = min(best, (time.perf_counter() - t0) / len(acts))
        e.close()
        us[name] = round(1e6 * best, 1)
        print(f"{name:32s} {us[name]:7.1f} us", flush=True)
    lines = ['"""Microseconds per step of each Meta-World v3 task class (random actions), written by',
             f'`python experiments/metaworld_step_costs.py` at commit {commit()}; ParallelEnv balances',
             'its workers by their ratios."""', "", "STEP_US = {"]
    lines += [f"    {name!r}: {v}," for name, v in us.items()] + ["}", ""]
    out = HERE.parent / "envs" / "metaworld_step_costs.py"
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
