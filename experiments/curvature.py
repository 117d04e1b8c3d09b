"""Why a MAML-family regression init diverges with more inner steps than it was trained with.

For each held-out task: the top eigenvalue of the support loss's Hessian at the meta-learned
init (power iteration on Hessian-vector products), against 2 / inner lr, the largest curvature
plain SGD at that step size is stable on, and the support loss after each of `--steps` SGD
steps; the task whose loss ends highest is replayed in float64 (is it precision?).

    python experiments/run.py maml_sinusoid            # trains runs/experiments/maml_sinusoid
    python experiments/curvature.py maml_sinusoid      # -> experiments/results/maml_sinusoid_curvature.json

--run-dir reads another run directory of the same config (e.g. one `metarl train` made).
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

from metarl.fewshot.core import task_generator, task_loss
from metarl.functional import params_of
from metarl.run_config import load_run

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def top_eigenvalue(model, params: dict, x, y, iters: int = 30) -> torch.Tensor:
    """Largest Hessian eigenvalue [N] of each task's support loss at per-task params {k: [N, ...]}."""
    v = {k: torch.randn_like(p) for k, p in params.items()}
    lam = None
    for _ in range(iters):
        norm = torch.sqrt(sum((t.flatten(1) ** 2).sum(1) for t in v.values()))
        v = {k: t / norm.view(-1, *[1] * (t.dim() - 1)) for k, t in v.items()}
        g = torch.autograd.grad(task_loss("regression", model.forward_with(params, x), y).sum(),
                                list(params.values()), create_graph=True)
        hv = torch.autograd.grad(sum((gi * v[k]).sum() for gi, k in zip(g, params)), list(params.values()))
        hv = dict(zip(params, hv))
        lam = sum((hv[k] * v[k]).flatten(1).sum(1) for k in params)               # Rayleigh quotient
        v = {k: t.detach() for k, t in hv.items()}
    return lam.detach()


def sgd_trajectory(model, theta: dict, x, y, lr: float, steps: int, dtype=torch.float32) -> torch.Tensor:
    """Support loss [N, steps + 1] along plain SGD from theta, per task."""
    n = x.shape[0]
    p = {k: v.detach().to(dtype).unsqueeze(0).expand(n, *v.shape).clone().requires_grad_() for k, v in theta.items()}
    x, y, out = x.to(dtype), y.to(dtype), []
    for s in range(steps + 1):
        loss = task_loss("regression", model.to(dtype).forward_with(p, x), y)
        out.append(loss.detach())
        if s < steps:
            g = torch.autograd.grad(loss.sum(), list(p.values()))
            p = {k: (t - lr * gi).detach().requires_grad_() for (k, t), gi in zip(p.items(), g)}
    model.to(torch.float32)
    return torch.stack(out, 1)


def quantiles(t: torch.Tensor) -> dict:
    t = t[torch.isfinite(t)]
    return {q: t.quantile(v).item() for q, v in (("median", 0.5), ("p90", 0.9), ("p99", 0.99))} | {"max": t.max().item()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="experiment config name (its run directory runs/experiments/NAME)")
    p.add_argument("--run-dir", help="read this run directory instead")
    p.add_argument("--tasks", type=int, default=10_000, help="held-out tasks (default 10000, as the evaluation)")
    p.add_argument("--steps", type=int, default=10, help="SGD steps per task (default 10)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    run = load_run(args.run_dir or ROOT / "runs" / "experiments" / args.name, device="cpu")
    learner = run.eval_policy(0)
    dist = run.cfg["env_spec"].make_distribution(run.cfg["env"])
    if dist.kind != "regression" or not hasattr(learner, "cfg") or not hasattr(learner.cfg, "inner_lr"):
        print("error: curvature.py reads MAML-family runs on regression families", file=sys.stderr)
        return 2
    model, lr = learner.model, learner.cfg.inner_lr
    theta = params_of(model)
    gen = task_generator(0, "test", torch.device("cpu"))  # the evaluation's held-out tasks
    lams, trajs, amps, xs_all, ys_all = [], [], [], [], []
    for start in range(0, args.tasks, 100):
        b = dist.sample(min(100, args.tasks - start), gen, "test", query=getattr(dist, "eval_query", None))
        per_task = {k: v.detach().unsqueeze(0).expand(b["xs"].shape[0], *v.shape).clone().requires_grad_()
                    for k, v in theta.items()}
        lams.append(top_eigenvalue(model, per_task, b["xs"], b["ys"]))
        trajs.append(sgd_trajectory(model, theta, b["xs"], b["ys"], lr, args.steps))
        amps.append(b["amplitude"])
        xs_all.append(b["xs"])
        ys_all.append(b["ys"])
    lam, traj, amp = torch.cat(lams), torch.cat(trajs), torch.cat(amps)
    xs, ys = torch.cat(xs_all), torch.cat(ys_all)
    end = torch.nan_to_num(traj[:, -1], nan=float("inf"))
    worst = int(end.argmax())
    f64 = sgd_trajectory(model, theta, xs[worst:worst + 1], ys[worst:worst + 1], lr, args.steps, torch.float64)[0]
    limit = 2 / lr
    summary = {
        "experiment": f"{args.name}_curvature", "command": shlex.join(["python", "experiments/curvature.py", *sys.argv[1:]]),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip(),
        "run_iteration": run.checkpoint["iteration"], "tasks": args.tasks, "inner_lr": lr, "stability_limit": limit,
        "top_eigenvalue": quantiles(lam), "share_above_limit": (lam > limit).float().mean().item(),
        "support_loss_grew": int((traj[:, -1] > traj[:, 0]).sum()),
        "not_finite_at_end": int((~torch.isfinite(traj[:, -1])).sum()),
        "support_loss_end": quantiles(traj[:, -1]),
        "worst_task": {"index": worst, "amplitude": amp[worst].item(), "top_eigenvalue": lam[worst].item(),
                       "support_loss": traj[worst].tolist(), "support_loss_float64": f64.tolist()},
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = HERE / "results" / f"{args.name}_curvature.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{args.name}: inner lr {lr:g}, 2 / lr = {limit:g}; top eigenvalue median "
          f"{summary['top_eigenvalue']['median']:.0f}, above 2 / lr on {100 * summary['share_above_limit']:.0f}% of "
          f"{args.tasks} tasks; worst task's support loss after {args.steps} steps "
          f"{traj[worst, -1].item():.3g} (float64 {f64[-1].item():.3g}); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
