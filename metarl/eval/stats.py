"""Interval statistics for evaluation tables."""
from __future__ import annotations

import math
from statistics import NormalDist

import torch


def mean_ci(x: torch.Tensor, level: float = 0.95) -> dict[str, float]:
    """Mean of x [N] with a normal-approximation confidence interval (N >= 30 advised).

    Returns {"mean", "ci_low", "ci_high", "std", "n"}."""
    x = x.detach().double().flatten().cpu()
    n = x.numel()
    mean = x.mean().item()
    std = x.std().item() if n > 1 else 0.0
    half = NormalDist().inv_cdf(0.5 + level / 2) * std / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "std": std, "n": n}


def paired_diff_ci(x, y, level: float = 0.95) -> dict[str, float]:
    """Mean of x - y with its CI, x and y [N] scores of two methods on the same N tasks, paired
    by task: the task-to-task spread (how good the best arm is) cancels. The interval is narrower
    than the two means' CIs by as much as that spread dominates each method's own noise."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired scores need the same tasks: {tuple(x.shape)} vs {tuple(y.shape)}")
    return mean_ci(x - y, level)
