"""Where MAML-TRPO's outer update spends its time, piece by piece, on one real meta-batch.

    python experiments/maml_update_profile.py maml_trpo_ml10 --hvp-tasks 1.0 0.25

Samples the first meta-batch of experiments/configs/NAME.toml, then runs the TRPO outer step from
the same initial parameters once per --hvp-tasks value, timing: the head outputs re-adapted
through the inner step (the closure, once with a graph and once per line-search step), the
Gauss-Newton curvature build, each Hessian-vector product of the conjugate gradient, and the
line search. Prints one JSON object; the outer gradient is the rest of the update.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    import torch

    import metarl.agents.maml as maml
    import metarl.rl.trpo as trpo
    from metarl.config import load_toml
    from metarl.run_config import resolve_config, setup_threads

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="a MAML-TRPO experiment: experiments/configs/NAME.toml")
    p.add_argument("--hvp-tasks", type=float, nargs="+", default=[1.0, 0.25])
    args = p.parse_args(argv)
    raw = load_toml(str(HERE / "configs" / f"{args.name}.toml"))
    cfg = resolve_config(raw["run"]["agent"], raw["run"]["env"], raw, device="cpu")
    setup_threads(torch.device("cpu"))
    tr = cfg["agent_spec"].trainer_cls(cfg["env_spec"], cfg["env"], cfg["agent"], cfg["run"]["seed"],
                                       torch.device("cpu"))
    t0 = time.perf_counter()
    _, pre, post = tr._sample()
    out = {"experiment": args.name, "threads": torch.get_num_threads(), "sample_s": time.perf_counter() - t0,
           "updates": {}}
    tr.env.close()
    start = copy.deepcopy(tr.net.state_dict())
    for frac in args.hvp_tasks:
        tr.net.load_state_dict(start)
        tr.cfg.hvp_tasks = frac
        pieces: dict[str, list] = {}

        def timed(name, fn):
            def wrapper(*a, **k):
                t = time.perf_counter()
                r = fn(*a, **k)
                pieces.setdefault(name, []).append(time.perf_counter() - t)
                return r
            return wrapper
        g = trpo.trpo_step.__globals__  # the names trpo_step and MAMLTrainer._trpo call
        saved = {k: g[k] for k in ("conjugate_gradient", "line_search")}
        saved_gn, saved_post = maml.gauss_newton_hvp, tr._post_outputs
        cg = g["conjugate_gradient"]
        g["conjugate_gradient"] = lambda Avp, b, iters=10, tol=1e-10: cg(timed("hvp", Avp), b, iters, tol)
        g["line_search"] = timed("line_search", g["line_search"])
        maml.gauss_newton_hvp = timed("curvature_build", saved_gn)
        tr._post_outputs = timed("head_outputs", saved_post)
        try:
            t = time.perf_counter()
            stats = tr._trpo(pre, post, 0)
            total = time.perf_counter() - t
        finally:
            g.update(saved)
            maml.gauss_newton_hvp, tr._post_outputs = saved_gn, saved_post
        out["updates"][str(frac)] = {
            "update_s": total, **{f"{k}_s": sum(v) for k, v in pieces.items()},
            **{f"{k}_calls": len(v) for k, v in pieces.items()}, "step_fraction": stats["step_fraction"],
            "ls_trials": stats["ls_trials"]}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
