"""Run benchmarks on this machine's CPU and write experiments/results/bench_cpu.json (figures of
each, the command, the commit, the machine), which experiments/readme_table.py renders.

    python experiments/bench.py                      # mujoco mujoco-paper metaworld metaworld-maml metaworld-ray
                                                     # metaworld-rl2-eval inner-loop bandit
    python experiments/bench.py mujoco metaworld     # just these (others in the file are kept)

Run it on a quiet machine: benchmarks beside other work measure the contention.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import commit  # noqa: E402  (the same commit stamp as experiment results)

DEFAULT = ("mujoco", "mujoco-paper", "metaworld", "metaworld-maml", "metaworld-ray", "metaworld-rl2-eval", "inner-loop",
           "bandit")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", default=list(DEFAULT), help=f"benchmarks (default: {' '.join(DEFAULT)})")
    p.add_argument("--out", default=str(HERE / "results" / "bench_cpu.json"))
    args = p.parse_args(argv)
    from metarl.registry import BENCHES, lookup
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.exists() else {"benches": {}}
    for name in args.names:
        fn = lookup("benchmark", BENCHES, name)
        t0 = time.perf_counter()
        result = fn(torch.device("cpu"))
        data["benches"][name] = {"figures": result["figures"], "seconds": time.perf_counter() - t0,
                                 "command": f"python experiments/bench.py {name}", "commit": commit(),
                                 "written": time.strftime("%Y-%m-%d %H:%M:%S")}
        print(name, json.dumps(result["figures"]), flush=True)
    data["machine"] = f"cpu, {os.cpu_count()} cores, torch {torch.__version__}"
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
