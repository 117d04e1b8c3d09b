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
