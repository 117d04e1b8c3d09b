"""Measure the per-iteration cost of an experiment config and project the wall-clock of the full
run: writes experiments/results/NAME_timing.json (read by readme_table.py).

    python experiments/wall_clock.py rl2_ml10 --iterations 2

Trains `--iterations` iterations of experiments/configs/NAME.toml in a scratch run directory and
splits each iteration into simulation (`sample_s`, policy in the loop) and learner update
(`update_s`). The projection for a machine with N simulation cores scales the simulation time by
(cores here / N) and keeps the update time measured here on the CPU: an upper bound for a
GPU learner (the learner runs on the GPU when there is one; none was measured unless
`--device cuda` ran here). With `--device cuda` it writes NAME_timing_cuda.json instead: the
measured cost with the learner on that GPU and the simulation on this machine's cores.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DEFAULT_CORES = [8, 16, 32]


def main(argv=None) -> int:
    from run import commit  # experiments/run.py

    from metarl.config import tomllib
    from metarl.rundir import read_jsonl
    from metarl.app.train import train

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="experiment name: experiments/configs/NAME.toml")
    p.add_argument("--iterations", type=int, default=2, help="iterations to time (the first includes warm-up)")
    p.add_argument("--cores", type=int, nargs="*", default=DEFAULT_CORES, help="simulation cores to project for")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    cfg_file = HERE / "configs" / f"{args.name}.toml"
    raw = tomllib.loads(cfg_file.read_text())
    agent, env = raw["run"]["agent"], raw["run"]["env"]
    budget_key = "total_steps" if "total_steps" in raw["agent"] else "iterations"
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        sets = ([f"agent.iterations={args.iterations}"] if budget_key == "iterations" else
                [f"agent.total_steps={args.iterations * steps_per_iteration(raw)}"])
        t0 = time.perf_counter()
        path = train(agent, env, config_file=str(cfg_file), sets=sets, run_dir=str(run_dir), device=args.device,
                     quiet=True)
        wall = time.perf_counter() - t0
        timing = read_jsonl(path / "timing.jsonl")
        metrics = read_jsonl(path / "metrics.jsonl")
    last = timing[-1]  # past warm-up
    steps_it = metrics[-1]["env_steps"] // (metrics[-1]["iteration"] + 1)
    full_its = (raw["agent"]["iterations"] if budget_key == "iterations"
                else -(-raw["agent"]["total_steps"] // steps_it))
    cores_here = os.cpu_count() or 1
    import torch
    from metarl.device import resolve_device
    dev = resolve_device(args.device)
    proj = {}
    for n in args.cores:
        per_it = last["sample_s"] * cores_here / n + last["update_s"]
        proj[str(n)] = {"iteration_s": per_it, "total_h": per_it * full_its / 3600}
    command = f"python experiments/wall_clock.py {args.name} --iterations {args.iterations}"
    command += (f" --device {args.device}" if args.device != "auto" else "") + (
        f" --cores {' '.join(map(str, args.cores))}" if args.cores != DEFAULT_CORES else "")
    out = {"experiment": args.name, "command": command, "commit": commit(), "cores_here": cores_here,
           "device": dev.type, "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
           "iterations_timed": len(timing),
           "sample_s": last["sample_s"], "update_s": last["update_s"], "iteration_s": last["iteration_s"],
           "steps_per_iteration": steps_it, "full_iterations": full_its,
           "full_run_here_h": last["iteration_s"] * full_its / 3600, "projection_by_cores": proj,
           "measure_wall_s": wall, "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    # the learner on a GPU is its own measurement, kept beside the CPU one
    dest = HERE / "results" / f"{args.name}_timing{'_cuda' if dev.type == 'cuda' else ''}.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


def steps_per_iteration(raw: dict) -> int:
    """RL²: trials per iteration x trial length (num_envs x episodes x horizon)."""
    a, e = raw["agent"], raw.get("env", {})
    return int(a["num_envs"]) * int(e.get("episodes", 10)) * int(e.get("horizon", 500))


if __name__ == "__main__":
    sys.exit(main())
