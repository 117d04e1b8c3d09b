"""Measure how long one step of each Meta-World v3 task class takes on this CPU inside a worker's
loop, and write envs/metaworld_step_costs.py, the relative costs ParallelEnv balances its workers
by (metarl.envs.metaworld_tasks.step_cost).

    python experiments/metaworld_step_costs.py

A simulation worker steps its sub-envs round-robin (every sub-env one step, then the next step),
so each env's state leaves the cache between its steps, which costs a class 30 to 135 us a step
on top of its cost stepped alone. So the classes are timed the same way: in groups of GROUP
(alphabetical), every env of the group one step at a time, one 500-step episode after a reset
(random actions), best of 3. Costs measured alone (the table before) left ML10's two workers
12% apart. Only the ratios between classes matter, and those carry over between machines
well enough.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import commit  # noqa: E402

GROUP = 10  # envs a worker cycles through: ML10's 20-task meta-batch on 2 cores


def main() -> int:
    from metarl.envs.metaworld_tasks import MetaWorldSubEnv, goal_lists
    lists = goal_lists("ML45", "reach-v3", 0)  # train + test: all 50 v3 classes
    classes = sorted({name: goals[0] for split in lists.values() for name, goals in split.items()}.items())
    acts = np.random.default_rng(0).uniform(-1, 1, (500, 4))
    us = {}
    for g in range(0, len(classes), GROUP):
        group = classes[g:g + GROUP]
        envs = []
        for _, task in group:
            e = MetaWorldSubEnv("v2")
            e.set_task(task)
            envs.append(e)
        best = np.full(len(envs), np.inf)
        for rep in range(3):
            for e in envs:
                e.reset(rep)
            spent = np.zeros(len(envs))
            for a in acts:
                for i, e in enumerate(envs):
                    t0 = time.perf_counter()
                    e.step(a)
                    spent[i] += time.perf_counter() - t0
            best = np.minimum(best, spent / len(acts))
        for (name, _), e, s in zip(group, envs, best):
            e.close()
            us[name] = round(1e6 * float(s), 1)
            print(f"{name:32s} {us[name]:7.1f} us", flush=True)
    lines = ['"""Microseconds per step of each Meta-World v3 task class stepped round-robin in groups of',
             f'{GROUP} (random actions), as a simulation worker steps them, written by',
             f'`python experiments/metaworld_step_costs.py` at commit {commit()}; ParallelEnv balances',
             'its workers by their ratios."""', "", "STEP_US = {"]
    lines += [f"    {name!r}: {v}," for name, v in sorted(us.items())] + ["}", ""]
    out = HERE.parent / "envs" / "metaworld_step_costs.py"
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
