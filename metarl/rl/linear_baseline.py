"""The linear feature baseline of Duan et al. (2016), used by TRPO and MAML: per task, a ridge
regression of the return on [obs, obs^2, t, t^2, t^3, 1] (t = step / 100), fitted by
least squares on that task's own rollouts. Batched over tasks with one linalg.solve.
"""
from __future__ import annotations

import torch


def features(obs: torch.Tensor) -> torch.Tensor:
    """obs [N, T, R, D] (tasks, steps, rollouts, obs dim) -> features [N, T, R, 2D + 4]."""
    N, T, R, _ = obs.shape
    t = (torch.arange(T, device=obs.device, dtype=obs.dtype) / 100.0).view(1, T, 1, 1).expand(N, T, R, 1)
    o = obs.clamp(-10, 10)
    return torch.cat([o, o * o, t, t * t, t ** 3, torch.ones_like(t)], -1)


def fit_predict(obs: torch.Tensor, returns: torch.Tensor, reg: float = 1e-5) -> torch.Tensor:
    """Fit one linear baseline per task and predict its values.

    obs [N, T, R, D], returns [N, T, R] -> values [N, T, R]. The ridge term grows tenfold
    until the normal equations are well conditioned (as in rllab)."""
    X = features(obs)
    N, F = X.shape[0], X.shape[-1]
    Xf, y = X.reshape(N, -1, F), returns.reshape(N, -1, 1)
    XtX, Xty = Xf.transpose(1, 2) @ Xf, Xf.transpose(1, 2) @ y
    eye = torch.eye(F, device=obs.device, dtype=obs.dtype)
    for _ in range(8):
        w, info = torch.linalg.solve_ex(XtX + reg * eye, Xty)
        if bool((info == 0).all()) and torch.isfinite(w).all():
            break
        reg *= 10
    else:  # still singular (e.g. constant observations): predict each task's mean return
        return returns.mean((1, 2), keepdim=True).expand_as(returns).clone()
    return (Xf @ w).view_as(returns)
